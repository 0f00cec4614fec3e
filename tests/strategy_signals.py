"""Signals and states for the strategies' unit tests: a fresh snapshot with only what a rule reads set."""

from __future__ import annotations

from typing import Any

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals, fresh_ages
from captcha_fleet.controller.strategies.base import PolicyState

SETTINGS = ControllerSettings()


def sig(now: float = 0.0, pending: int = 0, busy: int = 0, slots: int = 10, **kw: Any) -> Signals:
    """Fresh signals (every source just read) with this queue and these busy slots."""
    return Signals(now=now, pending=pending, in_flight=busy, slots=slots, busy=busy, ages=fresh_ages(), **kw)


def st(desired: int, **kw: Any) -> PolicyState:
    """A policy state that last asked for ``desired`` slots."""
    return PolicyState(desired=desired, **kw)
