"""Policies by name, for ``--policy`` and the controller's ``policy`` setting."""

from __future__ import annotations

from controller.baselines import KedaPolicy, SeedProcessPolicy, SeedThreadPolicy, StaticPolicy
from controller.decision import Policy
from controller.policy import QueueModelPolicy
from controller.settings import ControllerSettings

POLICY_NAMES = ("queue-model", "seed", "seed-process", "keda", "static:N")


class UnknownPolicyError(ValueError):
    """The name does not select a policy; the message lists the valid ones."""


def make_policy(name: str, settings: ControllerSettings) -> Policy:
    """The policy called ``name`` (``static:N`` takes a slot count)."""
    if name == "queue-model":
        return QueueModelPolicy(settings)
    if name == "seed":
        return SeedThreadPolicy(settings)
    if name == "seed-process":
        return SeedProcessPolicy(settings)
    if name == "keda":
        return KedaPolicy(settings)
    if name.startswith("static:"):
        value = name.partition(":")[2]
        if not value.isdigit() or int(value) < 1:
            raise UnknownPolicyError(f"{name}: static:N needs a positive slot count, e.g. static:30")
        return StaticPolicy(settings, int(value))
    raise UnknownPolicyError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
