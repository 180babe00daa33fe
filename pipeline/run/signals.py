"""Stop signals: SIGTERM, SIGINT, SIGUSR1 (and any the caller adds) ask the running stage to
checkpoint and stop at its next step boundary."""
from __future__ import annotations

import signal
from typing import Iterable

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """Install handlers that record a stop request; restore the old handlers on exit.

    A second SIGINT while a stop is pending (whatever signal asked for it) raises
    KeyboardInterrupt at once.
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._sigint_seen = False
        self._old: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested else ""

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested is not None and self._sigint_seen:
            raise KeyboardInterrupt
        self._sigint_seen = self._sigint_seen or signum == signal.SIGINT
        if self.requested is None:  # the first signal is the reason that gets reported
            self.requested = signum

    def __enter__(self) -> "StopSignals":
        for s in self.signals:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
