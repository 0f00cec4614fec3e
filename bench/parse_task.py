"""Benchmark: what validating a payload at the edge costs per task (``captcha_fleet.contract.tasks.parse_task``).

Parses a typical token task and a 200 kB image task many times and prints microseconds per parse (the best of
three runs). The checks it measures: UTF-8 encodability of every string, nesting depth, integer length, the
method's characters and look-alike ``key`` parameters.

Usage: ``.venv/bin/python bench/parse_task.py``
"""

from __future__ import annotations

import json
import timeit
from functools import partial

from captcha_fleet.contract.tasks import parse_task

TOKEN_TASK = json.dumps(
    {
        "id": "t-123456",
        "method": "userrecaptcha",
        "params": {"googlekey": "6Le" + "x" * 37, "pageurl": "https://example.test/login?next=/a"},
        "enqueued_at": 1796157099.6343877,
    }
).encode()
IMAGE_TASK = json.dumps({"id": "img", "method": "base64", "params": {"body": "A" * 200_000}}).encode()


def main() -> None:
    """Print the cost per parse of each payload."""
    for name, payload, number in (("token task", TOKEN_TASK, 50_000), ("image task", IMAGE_TASK, 500)):
        best = min(timeit.repeat(partial(parse_task, payload, 1_000_000), number=number, repeat=3)) / number
        print(f"{name} ({len(payload):,} B): {best * 1e6:.1f} us per parse")


if __name__ == "__main__":
    main()
