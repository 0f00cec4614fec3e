"""Policies by name, for ``--policy`` and the controller's ``policy`` setting."""

from __future__ import annotations

from captcha_fleet.controller.baselines import KedaPolicy, SeedProcessPolicy, SeedThreadPolicy, StaticPolicy
from captcha_fleet.controller.decision import Policy
from captcha_fleet.controller.policy import QueueModelPolicy
from captcha_fleet.controller.settings import ControllerSettings

POLICY_NAMES = ("queue-model", "seed", "seed:MAX", "seed-process", "keda", "keda:L", "static:N")


class UnknownPolicyError(ValueError):
    """The name does not select a policy; the message lists the valid ones."""


def make_policy(name: str, settings: ControllerSettings) -> Policy:
    """The policy called ``name`` (``static:N`` takes a slot count)."""
    if name == "queue-model":
        return QueueModelPolicy(settings)
    if name == "seed":
        return SeedThreadPolicy(settings)
    if name.startswith("seed:"):
        value = name.partition(":")[2]
        if not value.isdigit() or int(value) < 2:
            raise UnknownPolicyError(f"{name}: seed:MAX needs a maximum of at least 2 threads, e.g. seed:100")
        return SeedThreadPolicy(settings, max_slots=int(value))
    if name == "seed-process":
        return SeedProcessPolicy(settings)
    if name == "keda":
        return KedaPolicy(settings)
    if name.startswith("keda:"):
        value = name.partition(":")[2]
        try:
            target = float(value)
        except ValueError:
            target = 0.0
        if not target > 0:
            raise UnknownPolicyError(f"{name}: keda:L needs a positive listLength target, e.g. keda:2")
        return KedaPolicy(settings, target_per_replica=target)
    if name.startswith("static:"):
        value = name.partition(":")[2]
        if not value.isdigit() or int(value) < 1:
            raise UnknownPolicyError(f"{name}: static:N needs a positive slot count, e.g. static:30")
        return StaticPolicy(settings, int(value))
    raise UnknownPolicyError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
