#!/bin/sh
# Install a single-node Slurm (slurm-wlm) and munge for the batch tests, if missing.
#
# Idempotent, and never fails CI: where apt is unavailable or the install fails, it says so and
# exits 0; the Slurm tests (pytest -m slurm) then skip with the reason printed.
# The cluster itself is configured and started by the test fixture (tests/slurm/), not here.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if have slurmctld && have slurmd && have munged && have sbatch; then
    echo "install-slurm: slurm-wlm and munge already installed"
    exit 0
fi
if ! have apt-get; then
    echo "install-slurm: apt-get not found; Slurm tests will be skipped"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if have sudo; then SUDO="sudo -n"; else
        echo "install-slurm: not root and no sudo; Slurm tests will be skipped"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q >/dev/null 2>&1; then
    echo "install-slurm: apt-get update failed; trying the install anyway"
fi
# --no-install-recommends keeps it small; policy-rc.d stops dpkg from starting the daemons.
POLICY=/usr/sbin/policy-rc.d
ADDED=0
if [ ! -e "$POLICY" ] && [ "$(id -u)" = "0" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod +x "$POLICY" && ADDED=1
fi
if $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >/tmp/install-slurm.log 2>&1; then
    echo "install-slurm: installed slurm-wlm and munge"
else
    echo "install-slurm: apt-get install slurm-wlm munge failed (log: /tmp/install-slurm.log); Slurm tests will be skipped"
    tail -n 5 /tmp/install-slurm.log 2>/dev/null
fi
[ "$ADDED" = "1" ] && rm -f "$POLICY"
exit 0
