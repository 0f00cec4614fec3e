"""The registry: a ``--policy`` name selects its strategy, wrapped in the bounds; a bad name says what is valid."""

from __future__ import annotations

import pytest

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.strategies.bounds import BoundedPolicy
from captcha_fleet.controller.strategies.queue_model import QueueModelPolicy
from captcha_fleet.controller.strategies.registry import UnknownPolicyError, make_policy

SETTINGS = ControllerSettings()


def test_registry() -> None:
    bounded = make_policy("queue-model", SETTINGS)
    assert isinstance(bounded, BoundedPolicy) and isinstance(bounded.inner, QueueModelPolicy)
    assert make_policy("static:12", SETTINGS).name == "static:12"
    for name in ("seed", "seed-process", "keda"):
        assert make_policy(name, SETTINGS).name == name
    with pytest.raises(UnknownPolicyError, match="known: queue-model"):
        make_policy("hpa", SETTINGS)
    with pytest.raises(UnknownPolicyError, match="positive slot count"):
        make_policy("static:x", SETTINGS)
    assert make_policy("keda:2", SETTINGS).name == "keda:2"
    assert make_policy("seed:100", SETTINGS).name == "seed:100"
    with pytest.raises(UnknownPolicyError, match="at least 2"):
        make_policy("seed:1", SETTINGS)
    with pytest.raises(UnknownPolicyError, match="listLength"):
        make_policy("keda:0", SETTINGS)
