"""The method table is the one list of CAPTCHA methods: every consumer derives from it, so a new entry is covered
here without new code (the worker's check, the API client's upload, the metrics label, the first-poll delay, the
provider model the simulator replays, and the sandbox)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.apps.sandbox.model import Sandbox
from captcha_fleet.contract.config import ApiConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.methods import METHODS, CaptchaMethod, first_poll_delays, method_label
from captcha_fleet.contract.provider_model import ProviderModel, SolveTime
from captcha_fleet.contract.tasks import NewTask, Task, parse_task
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.metrics import WorkerMetrics
from captcha_fleet.worker.producer import Producer
from tests.fleet_helpers import TIME_SCALE, fast_config, read_results, running_worker

ENTRIES = list(METHODS.values())
IMAGE = base64.b64encode(b"GIF89a: the image of a method-table test").decode()
SUBMITS_PER_METHOD = 200


def valid_params(entry: CaptchaMethod) -> dict[str, str]:
    """Every parameter the entry requires, each with a usable value (an image where it takes one)."""
    return {p.name: IMAGE if p.image else f"{p.name}-of-{entry.name}" for p in entry.required}


def without(params: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in params.items() if k != name}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_the_task_check_requires_each_param_of_the_entry(entry: CaptchaMethod) -> None:
    params = valid_params(entry)
    complete = parse_task(NewTask(entry.name, params, "t").to_json().encode(), 10_000)
    assert isinstance(complete, Task)
    assert complete.missing_param() is None
    for param in entry.required:
        for lacking in (without(params, param.name), {**params, param.name: "  "}):
            task = parse_task(NewTask(entry.name, lacking, "t").to_json().encode(), 10_000)
            assert isinstance(task, Task)
            assert task.missing_param() == param


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_the_sandbox_accepts_the_entry_and_answers_each_missing_param_with_its_code(entry: CaptchaMethod) -> None:
    sandbox = Sandbox(SandboxConfig(seed=5))
    params, files = _form(entry, valid_params(entry))
    assert sandbox.submit({"key": "k", "method": entry.name, **params}, files).status == 1
    for param in entry.required:
        lacking, lacking_files = _form(entry, without(valid_params(entry), param.name))
        reply = sandbox.submit({"key": "k", "method": entry.name, **lacking}, lacking_files)
        assert reply.status == 0
        assert reply.request == param.missing_error


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_the_sandbox_solves_the_entry_with_its_solve_time(entry: CaptchaMethod) -> None:
    """Half the solves are done at the entry's median (200 draws: between 30 % and 70 %, or the median is off)."""
    now = [1000.0]
    sandbox = Sandbox(SandboxConfig(seed=11), clock=lambda: now[0])
    params, files = _form(entry, valid_params(entry))
    ids = [
        sandbox.submit({"key": "k", "method": entry.name, **params}, files).request for _ in range(SUBMITS_PER_METHOD)
    ]
    now[0] += entry.solve_median_s
    ready = sum(sandbox.get(captcha_id).status == 1 for captcha_id in ids)
    assert 0.3 * SUBMITS_PER_METHOD < ready < 0.7 * SUBMITS_PER_METHOD
    expected = SolveTime(entry.solve_median_s, entry.solve_sigma)
    assert sandbox.config.solve_time_for(entry.name) == expected
    assert ProviderModel().solve_time_for(entry.name) == expected  # what the simulator replays


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_first_poll_delay_and_metric_label_come_from_the_entry(entry: CaptchaMethod) -> None:
    assert ApiConfig().first_poll_delay(entry.name) == entry.first_poll_delay_s
    scaled = ApiConfig(first_poll_delay_s=first_poll_delays(TIME_SCALE))
    assert scaled.first_poll_delay(entry.name) == pytest.approx(entry.first_poll_delay_s * TIME_SCALE)
    metrics = WorkerMetrics("w", "h", "v")
    metrics.observe_result(entry.name, True, "", 0.1, 0.1)
    solved = metrics.registry.get_sample_value("captcha_fleet_tasks_solved_total", {"method": entry.metric_label})
    assert solved == 1.0


def test_a_method_outside_the_table_is_labelled_other() -> None:
    assert method_label("made-up-method") == "other"
    assert method_label("") == "unknown"
    assert {method_label(e.name) for e in ENTRIES} == {e.metric_label for e in ENTRIES}


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=3)) as server:
        yield server


def test_a_worker_solves_every_method_and_refuses_a_missing_param_unpaid(
    r: redis.Redis, keys: Keys, redis_url: str, sandbox: SandboxServer
) -> None:
    """Over real HTTP: a complete task of each method succeeds (an upload arrives as a file); one lacking a
    required param gets the provider's code for it as a task error, and is never sent (nothing paid)."""
    producer = Producer(r, keys)
    complete = {e.name: producer.submit(e.name, valid_params(e)) for e in ENTRIES}
    lacking = {e.name: producer.submit(e.name, without(valid_params(e), e.required[0].name)) for e in ENTRIES}
    with running_worker(fast_config(redis_url, keys.prefix, sandbox.url)):
        assert wait_until(lambda: r.hlen(keys.results) == 2 * len(ENTRIES), 30)
    results = read_results(r, keys)
    for entry in ENTRIES:
        assert results[complete[entry.name]]["status"] == "success", (entry.name, results[complete[entry.name]])
        refused = results[lacking[entry.name]]
        assert (refused["status"], refused["error_class"]) == ("error", "task"), entry.name
        assert refused["error"] == entry.required[0].missing_error, entry.name
    stats = sandbox.stats()
    assert (stats["accepted"], stats["rejected_params"]) == (len(ENTRIES), 0)


def _form(entry: CaptchaMethod, params: dict[str, str]) -> tuple[dict[str, str], dict[str, bytes]]:
    """``params`` as in.php receives them: an upload parameter as a file (decoded), the others as form fields."""
    uploads = set(entry.uploads)
    files = {k: base64.b64decode(v) for k, v in params.items() if k in uploads}
    return {k: v for k, v in params.items() if k not in uploads}, files
