#!/bin/sh
# Install Debian's headless Chromium for the report's browser tests (tests/pipeline/test_report.py), if missing.
# CI sets GENEMAN_REQUIRE_BROWSER=1 after this, so those tests fail rather than skip when it is not there.
set -u
for b in chromium-headless-shell chromium; do
    if command -v "$b" >/dev/null 2>&1; then echo "install-chromium: $b already installed"; exit 0; fi
done
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null 2>&1 || echo "install-chromium: apt-get update failed; trying the install anyway"
apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null 2>&1 \
    && echo "install-chromium: chromium-headless-shell installed" \
    || { echo "install-chromium: could not install chromium-headless-shell"; exit 1; }
