"""The Khronos glTF-Validator (npm package ``gltf-validator``, run by node) for the export tests.

Installed once into a cache folder (``$GENEMAN_GLTF_VALIDATOR_DIR``, else
``$XDG_CACHE_HOME/geneman/gltf-validator``, else ``~/.cache/geneman/gltf-validator``) with
``npm install --prefix DIR``. Where node or npm is missing, or the install fails (no registry), the
tests that need it are skipped with a reason that says which.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

VERSION = "2.0.0-dev.3.10"
"""The validator release the tests pin."""

SCRIPT = """
const validator = require(process.argv[2] + '/node_modules/gltf-validator');
const bytes = new Uint8Array(require('fs').readFileSync(process.argv[3]));
validator.validateBytes(bytes, {maxIssues: 100})
  .then((report) => console.log(JSON.stringify(report.issues)))
  .catch((error) => { console.error(String(error)); process.exit(3); });
"""


def cache_dir() -> Path:
    """Where the validator is installed."""
    if os.environ.get("GENEMAN_GLTF_VALIDATOR_DIR"):
        return Path(os.environ["GENEMAN_GLTF_VALIDATOR_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geneman" / "gltf-validator"


def _npm_error(stderr: str) -> str:
    """The first line of npm's output that names an error (or its last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERR" in line or "error" in line.lower()]
    return (errors or lines or ["no output"])[0][:300]


def install() -> Path:
    """The validator's folder, installed there first if needed; ``pytest.skip`` where it cannot be had."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"the glTF validator needs node and npm, and {'node' if node is None else 'npm'} is not on PATH")
    folder = cache_dir()
    package = folder / "node_modules" / "gltf-validator" / "package.json"
    if package.is_file() and json.loads(package.read_text()).get("version") == VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                               f"gltf-validator@{VERSION}"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install gltf-validator@{VERSION} took over 300 s (no registry?)")
    if proc.returncode != 0 or not package.is_file():
        pytest.skip(f"npm install gltf-validator@{VERSION} failed: {_npm_error(proc.stderr + proc.stdout)}")
    return folder


def validate(folder: Path, path: Path) -> dict:
    """The validator's ``issues`` of the file at ``path``: ``numErrors``, ``numWarnings``, ``messages``..."""
    script = folder / "validate.js"
    script.write_text(SCRIPT)
    proc = subprocess.run(["node", str(script), str(folder), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the validator did not run: {proc.stderr.strip()}"
    return json.loads(proc.stdout)
