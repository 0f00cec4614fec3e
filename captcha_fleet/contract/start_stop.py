"""Started on entering ``with`` and stopped on leaving it: the one shape of every throwaway server, relay and
test rig, so a ``with`` block never leaves a process or a socket behind whatever the block raised."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class StartStop:
    """A mixin for a class with ``start() -> self`` and ``stop()``: ``with X() as x`` starts it and stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class DaemonLoop(StartStop):
    """One daemon thread running :meth:`run` until :meth:`stop`.

    Samplers, relays and re-readers each own such a thread; they stop it the same way (set ``stopping``, wake the
    loop from whatever it waits on, join with a bound), so a loop stuck in a slow call never hangs its caller and a
    daemon thread never keeps the process alive.
    """

    join_timeout_s = 30.0

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def run(self) -> None:
        """The loop; it returns once ``stopping`` is set."""
        raise NotImplementedError

    def wake(self) -> None:
        """Interrupt what :meth:`run` waits on, when that is not ``stopping`` itself (a socket, another event)."""

    def stop(self) -> None:
        self.stopping.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout_s)
