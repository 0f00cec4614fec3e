"""A fixed number of slots: the baseline most fleets run."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import ControllerSettings
from ..signals import Signals
from .base import Decision, PolicyState, decided, starting_at


@dataclass(frozen=True)
class StaticPolicy:
    """A fixed number of slots: what most people run."""

    settings: ControllerSettings
    slots: int

    @property
    def name(self) -> str:
        """The ``--policy`` name."""
        return f"static:{self.slots}"

    @property
    def interval_s(self) -> float:
        """Irrelevant; it never changes."""
        return 60.0

    def initial_state(self) -> PolicyState:
        """The fixed size from the start."""
        return starting_at(self.slots, self.settings)

    def decide(self, signals: Signals, state: PolicyState) -> tuple[Decision, PolicyState]:
        """Always the same."""
        return decided(self.name, self.settings, signals, state, self.slots, "static", "fixed size")
