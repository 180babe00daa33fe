"""The module ``test_batch_boot`` runs through ``python -m pipeline.batch.boot -m ...``, in place of submitit's.

Argv: ``READY_FILE``. It writes READY_FILE (the test then signals it), waits up to 20 s for the
signal to have been noted, and prints its argv[0], its arguments and the noted signal as JSON.
"""
import json
import os
import sys
import time
from pathlib import Path

from pipeline.batch.boot import EARLY_SIGNAL, take_early_signal

Path(sys.argv[1]).write_text(str(os.getpid()))
deadline = time.monotonic() + 20
while EARLY_SIGNAL not in os.environ and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"argv0": sys.argv[0], "args": sys.argv[1:], "signal": take_early_signal(),
                  "left": os.environ.get(EARLY_SIGNAL)}))
