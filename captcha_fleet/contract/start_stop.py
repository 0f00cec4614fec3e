"""Started on entering ``with`` and stopped on leaving it: the one shape of every throwaway server, relay and
test rig, so a ``with`` block never leaves a process or a socket behind whatever the block raised."""

from __future__ import annotations

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
