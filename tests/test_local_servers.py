"""The throwaway servers the demo, the lab and the tests start: a ``with`` block leaves no process and no
directory behind whatever it raised, and the question "which node is primary" skips Sentinels that cannot answer."""

from __future__ import annotations

from functools import partial

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from captcha_fleet.local_servers.redis_server import RedisServer, free_port
from captcha_fleet.local_servers.sentinel_server import ask_for_primary


def test_a_with_block_that_raises_still_stops_the_server() -> None:
    server = RedisServer()
    with pytest.raises(RuntimeError, match="the block failed"), server:
        assert server.client().ping()
        process = server.process
        raise RuntimeError("the block failed")
    assert process is not None and process.poll() is not None, "the redis-server process is gone"
    assert server.process is None and not server.dir.exists()


def test_no_answer_from_any_sentinel_is_none_not_an_error() -> None:
    """A closed port (a Sentinel down) and a data node (no SENTINEL command) are both skipped."""
    with RedisServer() as not_a_sentinel:
        closed = partial(redis.Redis, "127.0.0.1", free_port(), retry=Retry(NoBackoff(), 0))  # refused at once
        assert ask_for_primary([closed, not_a_sentinel.client], "fleet") is None
