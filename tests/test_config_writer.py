"""The one fleet.yml writer is the inverse of the one parser: what demo, the k8s export, tests and benches write
loads back as the config they meant, and no secret is written."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.contract.config import (
    ApiConfig,
    FleetConfig,
    ResultsConfig,
    WorkerConfig,
    load_config,
    write_fleet_config,
)
from captcha_fleet.contract.methods import METHODS, first_poll_delays

SECRET_KEY = "sk-never-in-the-file"
REDIS_URL = "redis://:pw-never-in-the-file@127.0.0.1:6390/2"

amounts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**6)


def _by_default_type(cls: type[Any], **fixed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``cls`` built from a value for each field of the default's type (``fixed`` for fields with rules)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if f.name in fixed:
            fields[f.name] = fixed[f.name]
        elif isinstance(default, bool):
            fields[f.name] = st.booleans()
        elif isinstance(default, int):
            fields[f.name] = counts
        elif isinstance(default, float):
            fields[f.name] = amounts
    return st.builds(cls, **fields)


apis = _by_default_type(
    ApiConfig,
    base=st.sampled_from(["http://127.0.0.1:8000", "https://ocr.captchaai.com"]),
    key=st.just(SECRET_KEY),
    # The parser merges a partial mapping into the table's delays: a config in code starts from them too.
    first_poll_delay_s=st.dictionaries(st.sampled_from(["default", *METHODS]), amounts).map(
        lambda d: {**first_poll_delays(), **d}
    ),
    poll_interval_s=positive,
    task_deadline_s=positive,
    fast_poll_min_share=st.floats(min_value=0.01, max_value=1.0),
    requests_per_task=st.just(0.0) | st.floats(min_value=1.001, max_value=10.0),  # 0: a fixed retry ratio
)


@st.composite
def workers(draw: st.DrawFn) -> WorkerConfig:
    worker: WorkerConfig = draw(_by_default_type(WorkerConfig, metrics_host=st.sampled_from(["127.0.0.1", "0.0.0.0"])))
    # The parser's cross-field rules: bounds in order, a TTL longer than the beat, at least one thread and attempt.
    return dataclasses.replace(
        worker,
        max_slots=worker.min_slots + draw(counts),
        heartbeat_ttl_s=worker.heartbeat_interval_s + draw(positive),
        submit_threads=max(1, worker.submit_threads),
        max_attempts=max(1, worker.max_attempts),
    )


raw_sections = st.dictionaries(
    st.sampled_from(["controller", "sandbox", "redis"]),
    st.dictionaries(st.sampled_from(["interval_s", "plan_threads", "names"]), counts | amounts | st.lists(counts)),
    max_size=2,
)
configs = st.builds(
    FleetConfig,
    redis_url=st.just(REDIS_URL),
    key_prefix=st.sampled_from(["captcha", "demo", "bench-7"]),
    api=apis,
    worker=workers(),
    results=_by_default_type(ResultsConfig),
    raw=raw_sections,
)


@settings(max_examples=60, deadline=None)
@given(config=configs, with_base=st.booleans())
def test_loading_what_was_written_gives_the_config_back(config: FleetConfig, with_base: bool) -> None:
    env = {"CAPTCHAAI_KEY": SECRET_KEY, "REDIS_URL": REDIS_URL}
    if not with_base:
        env["CAPTCHAAI_BASE"] = config.api.base
    with tempfile.TemporaryDirectory() as tmp:
        path = write_fleet_config(Path(tmp) / "fleet.yml", config, with_base=with_base)
        text = path.read_text(encoding="utf-8")
        assert load_config(path, env=env) == config
    assert SECRET_KEY not in text and "pw-never-in-the-file" not in text
    assert ("base" in yaml.safe_load(text)["api"]) is with_base


def test_the_default_config_writes_the_method_tables_first_poll_delays() -> None:
    written = yaml.safe_load(FleetConfig().to_yaml())
    assert written["api"]["first_poll_delay_s"] == dict(ApiConfig().first_poll_delay_s)
    assert written["api"]["first_poll_delay_s"]["base64"] == METHODS["base64"].first_poll_delay_s
    assert list(written)[:4] == ["key_prefix", "api", "worker", "results"]
