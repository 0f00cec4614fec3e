"""Result retention: delete results past their retention, in bounded batches.

In the contract layer because two services run it: the controller's leader, whose Redis user holds HDEL on the
results hash, and a worker's reaper where its user may (a fleet without per-role users, or without a controller).
One Lua script, so a result and its expiry entry always leave together.
"""

from __future__ import annotations

from importlib import resources

import redis

from captcha_fleet.contract.keys import Keys

# What Redis 7 answers when a script's command is refused by the caller's ACL user: a plain error, not NOPERM.
_SCRIPT_ACL_REFUSALS = ("can't access at least one of the keys", "can't run this command")

_SOURCE = resources.files("captcha_fleet.contract").joinpath("lua", "expire_results.lua").read_text(encoding="utf-8")


def expire_results(client: redis.Redis, keys: Keys, now: float, batch: int = 500, max_batches: int = 20) -> int:
    """Delete the results whose retention ended before ``now`` (unix s): at most ``batch * max_batches`` a call.

    Raises ``redis.exceptions.NoPermissionError`` when the client's user may not run it (nothing is deleted then).
    """
    script = client.register_script(_SOURCE)  # hashes the source only; EVALSHA loads it on first use
    deleted = 0
    for _ in range(max_batches):
        try:
            n = int(script(keys=[keys.results, keys.results_expiry], args=[now, batch]))
        except redis.exceptions.NoPermissionError:
            raise
        except redis.exceptions.ResponseError as exc:
            if any(text in str(exc) for text in _SCRIPT_ACL_REFUSALS):
                raise redis.exceptions.NoPermissionError(str(exc)) from exc
            raise
        deleted += n
        if n < batch:
            break
    return deleted
