"""The Lua scripts of ``worker/lua/``, loaded once and bound to a Redis client."""

from __future__ import annotations

from importlib import resources

import redis
from redis.commands.core import Script


def _source(name: str) -> str:
    return resources.files("captcha_fleet.worker").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Each script as a callable ``Script`` (EVALSHA with automatic reload after a Redis restart)."""

    def __init__(self, client: redis.Redis) -> None:
        self.claim_many: Script = client.register_script(_source("claim_many"))
        self.finish: Script = client.register_script(_source("finish"))
        self.deadletter: Script = client.register_script(_source("deadletter"))
        self.requeue: Script = client.register_script(_source("requeue"))
        self.release_one: Script = client.register_script(_source("release_one"))
        self.count_polls: Script = client.register_script(_source("count_polls"))
        self.hold: Script = client.register_script(_source("hold"))
