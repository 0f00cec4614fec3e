"""Policies by name, for ``--policy`` and the controller's ``policy`` setting.

Every policy comes wrapped in :class:`captcha_fleet.controller.strategies.bounds.BoundedPolicy`: the operator's bounds
(max_slots, the plan, max_services, the balance floor) hold whichever policy decides.
"""

from __future__ import annotations

from collections.abc import Callable

from ..settings import ControllerSettings
from .base import Policy
from .bounds import BoundedPolicy
from .keda import KedaPolicy
from .queue_model import QueueModelPolicy
from .seed import SeedProcessPolicy, SeedThreadPolicy
from .static import StaticPolicy

POLICY_NAMES = ("queue-model", "seed", "seed:MAX", "seed-process", "keda", "keda:L", "static:N")


class UnknownPolicyError(ValueError):
    """The name does not select a policy; the message lists the valid ones."""


def make_policy(name: str, settings: ControllerSettings) -> Policy:
    """The policy called ``name`` (``static:N`` takes a slot count), within the bounds."""
    return BoundedPolicy(_unbounded(name, settings), settings)


def _unbounded(name: str, settings: ControllerSettings) -> Policy:
    """The policy called ``name`` as its rule is written."""
    plain = _PLAIN.get(name)
    if plain is not None:
        return plain(settings)
    prefix, colon, value = name.partition(":")
    parametrised = _PARAMETRISED.get(prefix) if colon else None
    if parametrised is not None:
        return parametrised(name, value, settings)
    raise UnknownPolicyError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")


def _seed_max(name: str, value: str, settings: ControllerSettings) -> Policy:
    """``seed:MAX``: the seed policy capped at MAX threads."""
    if not value.isdigit() or int(value) < 2:
        raise UnknownPolicyError(f"{name}: seed:MAX needs a maximum of at least 2 threads, e.g. seed:100")
    return SeedThreadPolicy(settings, max_slots=int(value))


def _keda_target(name: str, value: str, settings: ControllerSettings) -> Policy:
    """``keda:L``: KEDA with a listLength target of L per replica."""
    try:
        target = float(value)
    except ValueError:
        target = 0.0
    if not target > 0:
        raise UnknownPolicyError(f"{name}: keda:L needs a positive listLength target, e.g. keda:2")
    return KedaPolicy(settings, target_per_replica=target)


def _static(name: str, value: str, settings: ControllerSettings) -> Policy:
    """``static:N``: a fixed N slots."""
    if not value.isdigit() or int(value) < 1:
        raise UnknownPolicyError(f"{name}: static:N needs a positive slot count, e.g. static:30")
    return StaticPolicy(settings, int(value))


# Names that take no parameter, and ``PREFIX:VALUE`` names by prefix.
_PLAIN: dict[str, Callable[[ControllerSettings], Policy]] = {
    "queue-model": QueueModelPolicy,
    "seed": SeedThreadPolicy,
    "seed-process": SeedProcessPolicy,
    "keda": KedaPolicy,
}
_PARAMETRISED: dict[str, Callable[[str, str, ControllerSettings], Policy]] = {
    "seed": _seed_max,
    "keda": _keda_target,
    "static": _static,
}
