"""DaemonLoop: the background thread of the inventory re-reader, the cuttable link and the RSS sampler ends when
its ``with`` block ends, whatever the block raised, and a loop waiting on its own event is woken to stop."""

from __future__ import annotations

import threading

import pytest

from captcha_fleet.contract.start_stop import DaemonLoop


class Ticker(DaemonLoop):
    """Counts ticks until stopped, waiting on an event of its own (as the inventory re-reader does)."""

    join_timeout_s = 5.0

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.ticks = 0
        self.started = threading.Event()
        self._poke = threading.Event()
        super().__init__("ticker")

    def run(self) -> None:
        self.started.set()
        while not self.stopping.is_set():
            self._poke.wait(self.tick_s)
            self.ticks += 1

    def wake(self) -> None:
        self._poke.set()


def test_leaving_the_block_ends_the_thread_even_when_the_loop_waits_long() -> None:
    with Ticker(tick_s=3600) as ticker:
        assert ticker.started.wait(5)
        thread = ticker._thread
        assert thread.daemon and thread.is_alive()
    assert not thread.is_alive(), "wake() must cut the hour-long wait short"


def test_a_block_that_raises_still_stops_the_thread() -> None:
    ticker = Ticker(tick_s=3600)
    with pytest.raises(RuntimeError), ticker:
        assert ticker.started.wait(5)
        raise RuntimeError("boom")
    assert not ticker._thread.is_alive()


def test_stopping_a_loop_that_never_started_is_harmless() -> None:
    ticker = Ticker(tick_s=0.01)
    ticker.stop()
    assert ticker.ticks == 0 and not ticker._thread.is_alive()
