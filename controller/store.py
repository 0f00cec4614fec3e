"""What the controller keeps in Redis: its state (survives restarts and failovers) and the decision log."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from captcha_fleet.contract.keys import Keys

from .strategies.base import Decision, PolicyState

log = logging.getLogger("controller.decisions")


@dataclass
class ControllerState:
    """The policy's memory plus the services the controller manages and the ones it is draining."""

    policy: PolicyState
    managed: dict[str, list[str]] = field(default_factory=dict)  # host -> instances the controller wants up
    draining: dict[str, float] = field(default_factory=dict)  # worker id -> when its drain began
    started: dict[str, float] = field(default_factory=dict)  # worker id -> when it was asked to start
    next_instance: int = 1  # instance names are never reused, so a worker id never comes back

    def to_fields(self) -> dict[str, str]:
        """Hash fields, one JSON value each."""
        return {
            "policy": json.dumps(self.policy.to_dict()),
            "managed": json.dumps(self.managed),
            "draining": json.dumps(self.draining),
            "started": json.dumps(self.started),
            "next_instance": str(self.next_instance),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str], default_policy: PolicyState) -> ControllerState:
        """Parse what :meth:`to_fields` wrote; anything unreadable falls back to the default."""
        try:
            policy = PolicyState.from_dict(json.loads(fields["policy"])) if "policy" in fields else default_policy
        except (ValueError, TypeError, KeyError):
            log.warning("controller state: unreadable policy state, starting fresh")
            policy = default_policy

        def load(name: str, default: Any) -> Any:
            try:
                value = json.loads(fields[name]) if name in fields else default
            except ValueError:
                return default
            return value if isinstance(value, type(default)) else default

        return cls(
            policy=policy,
            managed={str(h): [str(i) for i in v] for h, v in load("managed", {}).items()},
            draining={str(k): float(v) for k, v in load("draining", {}).items()},
            started={str(k): float(v) for k, v in load("started", {}).items()},
            next_instance=int(fields.get("next_instance", "1") or 1),
        )


class StateStore:
    """``{p}:controller:state`` (hash) and ``{p}:controller:decisions`` (bounded list, newest first)."""

    def __init__(self, client: redis.Redis, keys: Keys, decisions_max: int) -> None:
        self.client = client
        self.keys = keys
        self.decisions_max = decisions_max
        self._last_rule: str | None = None  # the rule of the decision recorded last

    def load(self, default_policy: PolicyState) -> ControllerState:
        """The saved state, or a fresh one."""
        raw = self.client.hgetall(self.keys.controller_state)
        fields = {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]
        return ControllerState.from_fields(fields, default_policy)

    def save(self, state: ControllerState, pipe: Pipeline | None = None) -> None:
        """Write the whole state (one HSET), on ``pipe`` (the leader's fenced transaction) when given."""
        target = pipe if pipe is not None else self.client
        target.hset(self.keys.controller_state, mapping=state.to_fields())  # type: ignore[arg-type]

    def record(
        self, decision: Decision, leader: str, extra: dict[str, Any] | None = None, pipe: Pipeline | None = None
    ) -> dict[str, Any]:
        """Append to the bounded decision log and print it as one structured log line."""
        entry = decision.to_dict()
        entry["leader"] = leader
        if extra:
            entry.update(extra)
        line = json.dumps(entry, sort_keys=True)
        if pipe is not None:
            pipe.lpush(self.keys.decisions, line)
            pipe.ltrim(self.keys.decisions, 0, self.decisions_max - 1)
        else:
            own = self.client.pipeline(transaction=True)
            own.lpush(self.keys.decisions, line)
            own.ltrim(self.keys.decisions, 0, self.decisions_max - 1)
            own.execute()
        # An unchanged decision is DEBUG, but not the first one a guard holds: a scale-up frozen by a guard (e.g. a
        # provider's 5xx counted as capacity errors, issue 24) was silent in the log at INFO.
        guard_begins = decision.rule.startswith("guard:") and decision.rule != self._last_rule
        self._last_rule = decision.rule
        level = logging.INFO if decision.changed or decision.alerts or guard_begins else logging.DEBUG
        log.log(level, "%s", json.dumps({"event": "decision", **entry}, sort_keys=True))
        return entry

    def decisions(self, count: int = 20) -> list[dict[str, Any]]:
        """The newest ``count`` decisions."""
        raw = self.client.lrange(self.keys.decisions, 0, max(0, count - 1))
        return [json.loads(r) for r in raw]
