"""A network to be loaded on first use, so that a run never loads (or needs the weights of) a
prior whose loss is weighted 0 throughout."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Deferred(Generic[T]):
    """Wraps a zero-argument loader; :func:`resolve` runs it once, on first use.

    Example:
        >>> calls = []
        >>> d = Deferred(lambda: calls.append(1) or "net")
        >>> calls
        []
        >>> resolve(d), resolve(d), calls  # loaded once
        ('net', 'net', [1])
        >>> resolve("already loaded")
        'already loaded'
    """

    def __init__(self, load: Callable[[], T]):
        self._load, self._value, self._done = load, None, False

    def get(self) -> T:
        """The loaded value (loading it now if this is the first call)."""
        if not self._done:
            self._value, self._done = self._load(), True
        return self._value


def resolve(value: "T | Deferred[T]") -> T:
    """``value`` itself, or what a :class:`Deferred` loads."""
    return value.get() if isinstance(value, Deferred) else value
