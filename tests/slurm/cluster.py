"""A throwaway single-node Slurm cluster on loopback, for the batch tests.

Configuration lives beside this file (``slurm.conf.in``, ``cgroup.conf``); :class:`SlurmCluster`
fills in ports, paths and this machine's size, then starts munged (own key and socket),
slurmctld and slurmd as root, all state in one temporary folder, and stops them at the end.
Commands reach it through ``SLURM_CONF``, which the fixture exports for the test process and,
through sbatch, for the jobs. Install the packages with ``.ci/install-slurm.sh``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")


def unavailable_reason() -> str:
    """Why no test cluster can start here ('' when it can)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing); run .ci/install-slurm.sh "
                "(apt-get install slurm-wlm munge) to run these tests")
    if os.geteuid() != 0:
        return "the test Slurm cluster starts its daemons as root; run the tests as root"
    return ""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    """Half of this machine's memory, in MiB (what the node offers to jobs)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 // 2
    return 2048


class SlurmCluster:
    """munged + slurmctld + slurmd for one test session; ``start()`` then ``stop()``."""

    def __init__(self):
        self.state = Path(tempfile.mkdtemp(prefix="geneman-slurm-"))
        self.state.chmod(0o755)
        self.conf = self.state / "slurm.conf"
        self.munge_socket = self.state / "munge" / "munge.sock"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        """Fill ``slurm.conf.in`` for this machine; copy ``cgroup.conf`` beside it."""
        for sub in ("ctld", "slurmd", "munge"):
            (self.state / sub).mkdir(mode=0o755, exist_ok=True)
        values = {"HOST": socket.gethostname(), "CTLD_PORT": free_port(), "SLURMD_PORT": free_port(),
                  "MUNGE_SOCKET": self.munge_socket, "STATE": self.state, "CPUS": os.cpu_count() or 1,
                  "MEM_MB": memory_mb()}
        text = (HERE / "slurm.conf.in").read_text()
        for key, value in values.items():
            text = text.replace(f"@{key}@", str(value))
        self.conf.write_text(text)
        shutil.copy(HERE / "cgroup.conf", self.state / "cgroup.conf")
        key = self.state / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemons and wait until the node is idle.

        Raises:
            RuntimeError: a daemon did not start or the node did not come up (with its log's tail).
        """
        self.write_config()
        m = self.state / "munge"
        self._daemon(["munged", "--force", f"--key-file={m / 'munge.key'}", f"--socket={self.munge_socket}",
                      f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'seed'}"],
                     m / "munged.log")
        self._daemon(["slurmctld", "-i", "-f", str(self.conf)], self.state / "slurmctld.log")
        self._daemon(["slurmd", "-f", str(self.conf)], self.state / "slurmd.log")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            r = self.run("sinfo", "-h", "-o", "%t", check=False)
            if r.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test Slurm node did not come up: sinfo says {r.stdout.strip()!r} {r.stderr.strip()}\n"
                           + self.log_tail())

    def _daemon(self, cmd: list[str], log: Path) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}\n"
                               + (log.read_text()[-2000:] if log.is_file() else ""))

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm command against this cluster."""
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def log_tail(self, chars: int = 3000) -> str:
        """The ends of slurmctld's and slurmd's logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.state / name
            if path.is_file():
                parts.append(f"--- {name}\n" + path.read_text()[-chars:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started, delete the state folder."""
        self.run("scancel", "--user", "root", check=False)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20 and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            _stop_pid(self.state / pid_file)
        shutil.rmtree(self.state, ignore_errors=True)


def _stop_pid(pid_file: Path, wait: float = 15.0) -> None:
    """SIGTERM the process named in ``pid_file``; SIGKILL it when it outlives ``wait`` seconds."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
