"""The controller's Prometheus endpoint: scraped for real while a burst flows through the fleet."""

from __future__ import annotations

import time

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from captcha_fleet.local_servers.polling import wait_until as wait_for
from captcha_fleet.local_servers.redis_server import free_port
from tests.controller_fleet import Fleet

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[str, float]:
    """Samples by name (labels joined in), e.g. ``captcha_fleet_decisions_total{rule=scale-up}``."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.ConnectionError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_controller_metrics_move_with_the_fleet(fleet: Fleet) -> None:
    port = free_port()
    data = yaml.safe_load(fleet.config.read_text())
    data["controller"]["metrics_port"] = port
    fleet.config.write_text(yaml.safe_dump(data))
    fleet.start_controller("m")
    assert wait_for(lambda: scrape(port).get("captcha_fleet_controller_leader") == 1, 20)
    idle = scrape(port)
    assert idle["captcha_fleet_queue_pending"] == 0
    ids = fleet.submit(40)
    assert wait_for(lambda: scrape(port).get("captcha_fleet_concurrency_desired", 0) > 2, 10)
    busy = scrape(port)
    assert busy["captcha_fleet_decisions_total{rule=scale-up}"] >= 1
    assert busy["captcha_fleet_backlog"] > 0
    assert wait_for(lambda: fleet.counts()[2] == len(ids), 40)
    time.sleep(1.0)
    done = scrape(port)
    assert done["captcha_fleet_completion_rate"] > 0
    assert done["captcha_fleet_latency_p95_seconds"] > 0
    assert done["captcha_fleet_account_balance"] > 0
    assert done["captcha_fleet_workers_live"] >= 1
    assert "captcha_fleet_error_rate_ratio{error_class=capacity}" in done
