"""The named provider profiles: the providers the fleet must keep its promise on, in one table.

``sandbox`` is the project's own sandbox as it always was (the default everywhere). The others each turn one
knob real providers turn, so a figure that holds on ``sandbox`` but not on them is calibration, not design:
``heavy-tail`` (sigma 0.4, like the independent double of issue 24), ``mixed-methods`` (images in ~5 s,
tokens 15-60 s, in a task mix), ``far-away`` (100-300 ms HTTP round trips), ``congested`` (solves slow down
as the provider fills, some polls stall or fail). ``captcha-fleet sim|replay|sandbox --provider NAME``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from captcha_fleet.contract.config import ConfigError
from captcha_fleet.contract.provider_model import ProviderModel, SolveMixture, SolveTime, table_solve_times

DEFAULT_PROFILE = "sandbox"
TOKEN_MIX: Mapping[str, float] = {"userrecaptcha": 1.0}


class UnknownProviderError(ConfigError):
    """A profile name not in the table; the message lists the known ones."""


@dataclass(frozen=True)
class ProviderProfile:
    """A provider model with a name, and the mix of methods its customers send (what sim and replay feed)."""

    name: str
    summary: str
    model: ProviderModel
    task_mix: Mapping[str, float] = field(default_factory=lambda: dict(TOKEN_MIX))

    def methods(self, count: int, seed: int) -> list[str]:
        """The method of each of ``count`` tasks, seeded (one method: no draws at all)."""
        names = list(self.task_mix)
        if len(names) == 1:
            return names * count
        rng = random.Random(f"methods:{seed}")
        return rng.choices(names, weights=[self.task_mix[n] for n in names], k=count)


# Tokens: most solve in ~15 s, a third of them are the hard kind (~30 s), one in ten the very hard one (~60 s).
_TOKENS_15_TO_60 = SolveMixture(((0.6, SolveTime(15.0, 0.3)), (0.3, SolveTime(30.0, 0.3)), (0.1, SolveTime(60.0, 0.3))))

DEFAULT = ProviderModel()
PROFILES: dict[str, ProviderProfile] = {
    p.name: p
    for p in (
        ProviderProfile("sandbox", "the project's sandbox: lognormal 15 s tokens, 5 s images, sigma 0.3", DEFAULT),
        ProviderProfile(
            "heavy-tail",
            "a heavier tail: sigma 0.4 (the independent double of issue 24)",
            ProviderModel(solve_time=table_solve_times(sigma=0.4)),
        ),
        ProviderProfile(
            "mixed-methods",
            "40 % images (~5 s), 60 % tokens from a 15/30/60 s mixture",
            ProviderModel(solve_time={**table_solve_times(), "default": _TOKENS_15_TO_60}),
            task_mix={"base64": 0.4, "userrecaptcha": 0.6},
        ),
        ProviderProfile(
            "far-away",
            "the sandbox 100-300 ms away: every HTTP round trip 0.1 s plus up to 0.2 s of jitter",
            ProviderModel(http_latency_s=0.1, http_jitter_s=0.2),
        ),
        ProviderProfile(
            "congested",
            "solves 1.6x as long with the plan full, sigma 0.35; 2 % of polls stall 4 s, 2 % answer 5xx",
            ProviderModel(
                solve_time=table_solve_times(sigma=0.35),
                load_slowdown=0.6,
                slow_poll_rate=0.02,
                slow_poll_s=4.0,
                failed_poll_rate=0.02,
            ),
        ),
    )
}


def provider_profile(name: str) -> ProviderProfile:
    """The profile called ``name``, or a clear error naming every known one."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProviderError(f"unknown provider profile {name!r} (known: {', '.join(PROFILES)})") from None
