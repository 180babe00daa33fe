"""Shared test set-up: offline hub, deterministic CPU threads, the ``requires_cuda`` marker."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# pytest-xdist workers share the cores: each worker (and the geneman subprocesses it starts) gets its share
# of threads, not torch's default of one per core. Oversubscribed, OpenMP's spinning threads made tests that take
# 9-10 s alone take 178-225 s in the CI run of 2026-12-07 (test_train [3d], test_geometry's loss walk at the
# release preset). A test that needs a thread count sets it itself (test_stage_resume: 2).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Skip ``requires_cuda`` tests, with the reason, where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)
