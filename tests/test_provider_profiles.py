"""Provider profiles (issue 24): the sandbox acts out each profile's model and the simulator replays the same one.

Solve times are read from the real sandbox model on a clock the test moves (a geometric grid, 1 % resolution);
HTTP round trips over the real sandbox server on loopback. Tolerances are loose: these are properties of the
distributions, not figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pytest
import requests

from captcha_fleet.apps.cli import main
from captcha_fleet.apps.replay.cli import PARAMS_BY_METHOD
from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer, parse_sandbox_config
from captcha_fleet.apps.sandbox.model import NOT_READY, Sandbox, check_params
from captcha_fleet.contract.config import ApiConfig, ConfigError
from captcha_fleet.contract.provider_model import SolveMixture, SolveTime
from captcha_fleet.contract.provider_profiles import PROFILES, provider_profile
from captcha_fleet.contract.windows import percentile
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sim.detection import seen_after
from captcha_fleet.controller.sim.engine import SimConfig, draw_tasks, simulate
from captcha_fleet.controller.sim.traces import Trace

KEY = "test-key"
SAMPLES = 300
QUANTILES = (0.1, 0.5, 0.9)
TOLERANCE = 0.15  # relative, per quantile: 300 draws put a P90 within a few % of the model's


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def submit_params(method: str) -> dict[str, str]:
    return {"key": KEY, "method": method, **PARAMS_BY_METHOD[method]}


def ready_times(sandbox: Sandbox, clock: FakeClock, ids: Sequence[str]) -> list[float]:
    """When each captcha (in the order of ``ids``) first answers other than NOT_READY, on a grid 1 % apart."""
    start, t = clock.now, 0.05
    ready: dict[str, float] = {}
    while len(ready) < len(ids) and t < 2000.0:
        clock.now = start + t
        waiting = [i for i in ids if i not in ready]
        for i, answer in zip(waiting, sandbox.get_many(waiting).request.split("|"), strict=True):
            if answer != NOT_READY:
                ready[i] = t
        t *= 1.01
    assert len(ready) == len(ids), f"{len(ids) - len(ready)} captchas never became ready"
    return [ready[i] for i in ids]


def measured(profile: str, method: str, seed: int = 3, **fields: object) -> list[float]:
    """Idle solve times of ``SAMPLES`` captchas of ``method`` on the sandbox acting out ``profile``."""
    clock = FakeClock()
    config = SandboxConfig.from_profile(profile, seed=seed, max_polls_per_captcha=None, **fields)
    sandbox = Sandbox(config, clock=clock)
    return ready_times(sandbox, clock, [sandbox.submit(submit_params(method)).request for _ in range(SAMPLES)])


def assert_quantiles_close(got: Sequence[float], model: SolveTime | SolveMixture) -> None:
    for q in QUANTILES:
        assert percentile(list(got), q) == pytest.approx(model.quantile(q), rel=TOLERANCE), f"P{q * 100:.0f}"


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_sandbox_and_the_simulator_solve_as_the_profile_says(name: str) -> None:
    """One definition: per method, the sandbox's measured solve times and the simulator's draws (same seed) both
    have the model's quantiles, and the simulator's task mix is the profile's."""
    profile = provider_profile(name)
    tasks, methods = draw_tasks(Trace("flat", (SAMPLES * 2,)), SimConfig(seed=3, provider=profile))
    for method, share in profile.task_mix.items():
        model = profile.model.solve_time_for(method)
        assert_quantiles_close(measured(name, method), model)
        simulated = [solve for (_, solve), m in zip(tasks, methods, strict=True) if m == method]
        assert len(simulated) / len(tasks) == pytest.approx(share / sum(profile.task_mix.values()), abs=0.06)
        assert_quantiles_close(simulated, model)


def test_a_method_mixture_is_not_one_lognormal() -> None:
    """mixed-methods: tokens spread from ~15 s to ~60 s, images stay near 5 s."""
    tokens = measured("mixed-methods", "userrecaptcha")
    images = measured("mixed-methods", "base64")
    assert percentile(images, 0.9) < 10.0 < percentile(tokens, 0.1)
    assert percentile(tokens, 0.95) > 2.5 * percentile(tokens, 0.5)  # a lognormal of sigma 0.3: 1.6x


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_sandbox_config_acts_out_every_knob_of_the_profile(name: str) -> None:
    """The sandbox's config, read back as a provider model, is the profile's model (stalls scaled and back)."""
    config = SandboxConfig.from_profile(name, time_scale=0.05)
    assert config.provider_model() == provider_profile(name).model
    assert parse_sandbox_config(config.to_dict()).provider_model() == config.provider_model()  # through JSON


def first_and_last_quarter(profile: str, threads: int) -> tuple[float, float]:
    """Median solve of the first and the last quarter of ``threads`` submits in a row (the i-th found i in flight)."""
    clock = FakeClock()
    config = SandboxConfig.from_profile(profile, threads=threads, seed=5, max_polls_per_captcha=None)
    sandbox = Sandbox(config, clock=clock)
    ids = [sandbox.submit(submit_params("userrecaptcha")).request for _ in range(threads)]
    times = ready_times(sandbox, clock, ids)
    return percentile(times[: threads // 4], 0.5), percentile(times[-threads // 4 :], 0.5)


def test_congested_solves_take_longer_as_the_provider_fills() -> None:
    threads = SAMPLES
    model = provider_profile("congested").model
    slowdown = model.load_factor(threads * 7 // 8, threads) / model.load_factor(threads // 8, threads)
    assert slowdown > 1.3
    first, last = first_and_last_quarter("congested", threads)
    assert last / first == pytest.approx(slowdown, rel=0.2)
    first, last = first_and_last_quarter("sandbox", threads)  # the loopback sandbox does not slow down
    assert last / first == pytest.approx(1.0, rel=0.2)


def test_a_far_away_provider_answers_after_its_round_trip() -> None:
    """Every API request waits at least the profile's shortest round trip (scaled); admin requests do not."""
    scale = 0.2  # 100-300 ms trace round trips: 20-60 ms here
    config = SandboxConfig.from_profile("far-away", time_scale=scale, seed=1)
    shortest = provider_profile("far-away").model.http_latency_s * scale
    with SandboxServer(config) as server, requests.Session() as http:
        took = []
        for _ in range(15):
            begin = time.monotonic()
            reply = http.get(f"{server.url}/res.php", params={"key": KEY, "action": "getbalance"}, timeout=10)
            took.append(time.monotonic() - begin)
            assert reply.status_code == 200
        assert min(took) >= shortest
        assert server.stats()["requests_total"] == 15


def test_poll_faults_of_a_congested_provider_hit_polls_only() -> None:
    config = SandboxConfig.from_profile("congested", time_scale=0.05)
    assert config.fault_endpoints == ("res.php",)
    assert config.slow_delay_s == pytest.approx(provider_profile("congested").model.slow_poll_s * 0.05)
    assert config.fault_rate("http_500") > 0 and config.fault_rate("slow") > 0


def test_every_method_replay_sends_is_one_the_sandbox_accepts() -> None:
    for profile in PROFILES.values():
        for method in profile.task_mix:
            assert check_params(method, PARAMS_BY_METHOD[method], {}) is None, (profile.name, method)


def test_a_mixture_reads_from_the_config_and_bad_ones_are_named() -> None:
    config = parse_sandbox_config(
        {"solve_time": {"hcaptcha": {"mixture": [{"weight": 3, "median_s": 10}, {"weight": 1, "median_s": 40}]}}}
    )
    mixture = config.solve_time_for("hcaptcha")
    assert isinstance(mixture, SolveMixture) and mixture.parts[1] == (1.0, SolveTime(40.0, 0.3))
    assert parse_sandbox_config(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"sandbox\.solve_time\.hcaptcha\.mixture\[0\]\.weight"):
        parse_sandbox_config({"solve_time": {"hcaptcha": {"mixture": [{"weight": 0, "median_s": 10}]}}})
    with pytest.raises(ConfigError, match=r"sandbox\.solve_time\.hcaptcha\.mixture"):
        parse_sandbox_config({"solve_time": {"hcaptcha": {"mixture": []}}})


def test_an_unknown_profile_is_a_clear_error_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    known = ", ".join(PROFILES)
    with pytest.raises(ConfigError, match=f"unknown provider profile 'nope' \\(known: {known}\\)"):
        SandboxConfig.from_profile("nope")
    for argv in (["sim", "--provider", "nope"], ["replay", "--provider", "nope"], ["sandbox", "--provider", "nope"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'nope'" in err and known in err, argv


def test_a_profile_brings_its_own_solve_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--provider", "heavy-tail", "--solve-sigma", "0.3"]) == 2
    assert "drop --solve-median and --solve-sigma" in capsys.readouterr().err


def test_a_poll_answers_a_round_trip_after_it_is_sent() -> None:
    """The simulator's detection with a far-away provider: the poll sent at 20 s reaches it at 20.5 s."""
    api = ApiConfig()  # first poll after 15 s, then every 5 s
    assert seen_after(20.3, 1, 0.3, api) == 25.0  # on loopback the 20 s poll was too early
    assert seen_after(20.3, 1, 0.3, api, round_trip_s=0.5) == 20.5  # far away it arrives after the solve
    assert seen_after(16.0, 1, 0.3, api, round_trip_s=0.5) == 20.5  # and is seen a round trip late


def test_the_simulated_provider_slows_down_as_it_fills() -> None:
    """Slot hold time per task on the plan-capped oracle: on congested, a burst that fills the plan holds slots
    far longer than a trickle that leaves it nearly idle; on the loopback sandbox both hold them as long."""
    settings = ControllerSettings(plan_threads=100)

    def hold_per_task(profile: str, trace: Trace) -> float:
        config = SimConfig(seed=2, provider=provider_profile(profile), oracle_capped=True)
        result = simulate(trace, None, settings, config)
        assert result.lost == 0
        return result.oracle_worker_seconds / result.tasks

    burst, trickle = Trace("burst", (30,) * 20), Trace("trickle", (1,) * 200)
    assert hold_per_task("congested", burst) > 1.25 * hold_per_task("congested", trickle)
    assert hold_per_task("sandbox", burst) == pytest.approx(hold_per_task("sandbox", trickle), rel=0.08)


def test_the_sandbox_command_runs_a_profile_at_its_time_scale() -> None:
    """``captcha-fleet sandbox --provider congested --time-scale 0.05``: the stalls compress with the solves."""
    from captcha_fleet.apps.sandbox.cli import config_from_args

    args = argparse.Namespace(config=None, time_scale=0.05, threads=40, seed=None, provider="congested")
    config = config_from_args(args)
    assert config.provider_model() == provider_profile("congested").model
    assert config.threads == 40 and config.slow_delay_s == pytest.approx(4.0 * 0.05)
    args.provider = None
    assert config_from_args(args).provider_model() == provider_profile("sandbox").model  # the default
