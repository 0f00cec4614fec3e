"""``captcha-fleet export keda|hpa``: the manifests parse, carry fleet.yml's values, and hold no secret.

Deployment, ConfigMap and HPA are validated against the Kubernetes OpenAPI schemas when ``kubernetes-validate``
is installed (it bundles them). No package ships KEDA's CRD schemas, so the ScaledObject and the
TriggerAuthentication are checked here against the fields of KEDA's v1alpha1 CRD (keda.sh).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.config import load_config

FLEET_YML = """
key_prefix: shop
redis_url: redis://127.0.0.1:6379/3
worker:
  drain_timeout_s: 90
  metrics_port: 9464
controller:
  slots_per_service: 5
  min_slots: 12
  max_slots: 100
  plan_threads: 40
  p95_target_s: 45
  solve_time_prior_s: 15
  scale_down_window_s: 120
  interval_s: 5
"""
SECRET_KEY = "export-test-key-5d1e"
REDIS_PASSWORD = "export-redis-pw-0b7"

# Fields of KEDA's ScaledObject spec (keda.sh/v1alpha1); trigger metadata is a map of strings.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "fallback",
    "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_TRIGGER_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "port",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def export(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str
) -> tuple[int, list[dict[str, Any]], str]:
    config = tmp_path / "fleet.yml"
    config.write_text(FLEET_YML, encoding="utf-8")
    monkeypatch.setenv("CAPTCHAAI_KEY", SECRET_KEY)
    monkeypatch.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@10.0.0.5:6379/3")
    code = main(["export", *args, "--config", str(config)])
    out, err = capsys.readouterr()
    documents = [doc for doc in yaml.safe_load_all(out) if doc is not None] if code == 0 else []
    return code, documents, out + err


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents}


def test_keda_manifests_carry_fleet_values(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, documents, output = export(capsys, monkeypatch, tmp_path, "keda", "--image", "reg.example/cf:1.2")
    assert code == 0
    assert [d["kind"] for d in documents] == ["ConfigMap", "Deployment", "TriggerAuthentication", "ScaledObject"]
    kinds = by_kind(documents)
    so = kinds["ScaledObject"]["spec"]
    (trigger,) = so["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "shop:tasks"
    # queue model: 5 slots x (45 - 2 x 15) / 15 = 5 pending tasks per pod
    assert trigger["metadata"]["listLength"] == "5"
    assert trigger["metadata"]["databaseIndex"] == "3"
    assert so["minReplicaCount"] == math.ceil(12 / 5)  # min_slots / slots per pod
    assert so["maxReplicaCount"] == 40 // 5  # the plan's 40 threads cap max_slots 100
    assert so["pollingInterval"] == 5
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert so["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert trigger["authenticationRef"]["name"] == kinds["TriggerAuthentication"]["metadata"]["name"]

    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "reg.example/cf:1.2"
    assert container["command"] == ["captcha-fleet"]
    assert container["args"][:3] == ["worker", "--config", "/etc/captcha-fleet/fleet.yml"]
    assert container["args"][container["args"].index("--slots") + 1] == "5"
    assert pod["terminationGracePeriodSeconds"] >= 90
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["CAPTCHAAI_KEY"]["secretKeyRef"] == {"name": "captcha-fleet", "key": "captchaai-key"}
    assert env["REDIS_URL"]["secretKeyRef"] == {"name": "captcha-fleet", "key": "redis-url"}
    assert container["resources"]["requests"]["cpu"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464}]

    assert SECRET_KEY not in output and REDIS_PASSWORD not in output and "10.0.0.5" not in output


def test_scaled_object_matches_keda_crd_fields(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, documents, _ = export(capsys, monkeypatch, tmp_path, "keda", "--namespace", "fleet")
    kinds = by_kind(documents)
    so = kinds["ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"]["namespace"] == "fleet"
    assert set(so["spec"]) <= SCALED_OBJECT_SPEC
    assert {"scaleTargetRef", "triggers"} <= set(so["spec"])
    for trigger in so["spec"]["triggers"]:
        assert set(trigger) <= TRIGGER_FIELDS
        assert set(trigger["metadata"]) <= REDIS_TRIGGER_METADATA
        assert all(isinstance(value, str) for value in trigger["metadata"].values())
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(so["spec"][key], int)
    auth = kinds["TriggerAuthentication"]
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    assert all(set(ref) == {"parameter", "name", "key"} for ref in refs.values())


def test_hpa_targets_backlog_per_pod(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, documents, _ = export(capsys, monkeypatch, tmp_path, "hpa")
    assert code == 0
    hpa = by_kind(documents)["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 8)
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "captcha_fleet_backlog"
    # backlog counts in-flight too: 5 slots + 5 pending per pod
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "10"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_list_length_override_and_output_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "out.yaml"
    code, _, _ = export(capsys, monkeypatch, tmp_path, "keda", "--list-length", "7", "-o", str(target))
    assert code == 0
    documents = list(yaml.safe_load_all(target.read_text(encoding="utf-8")))
    (trigger,) = by_kind(documents)["ScaledObject"]["spec"]["triggers"]
    assert trigger["metadata"]["listLength"] == "7"


def test_configmap_fleet_yml_loads_and_holds_no_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, documents, _ = export(capsys, monkeypatch, tmp_path, "keda")
    text = by_kind(documents)["ConfigMap"]["data"]["fleet.yml"]
    assert "redis_url" not in text and "key:" not in text.replace("key_prefix:", "")
    embedded = tmp_path / "embedded.yml"
    embedded.write_text(text, encoding="utf-8")
    config = load_config(embedded, env={})
    assert config.key_prefix == "shop"
    assert config.worker.drain_timeout_s == 90
    assert config.worker.initial_slots == 5
    assert config.worker.metrics_host == "0.0.0.0"


def test_defaults_give_two_pending_tasks_per_slot(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["export", "keda"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    so = by_kind(documents)["ScaledObject"]["spec"]
    assert so["triggers"][0]["metadata"]["listLength"] == "20"  # 10 slots x (60 - 30) / 15
    assert so["triggers"][0]["metadata"]["listName"] == "captcha:tasks"
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (1, 10)  # plan_threads 100 / 10 slots


def test_bad_controller_setting_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("controller:\n  slots_per_service: 0\n", encoding="utf-8")
    code = main(["export", "keda", "--config", str(config)])
    assert code == 2
    assert "controller.slots_per_service" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["keda", "hpa"])
def test_core_objects_pass_kubernetes_schemas(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, target: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    _, documents, _ = export(capsys, monkeypatch, tmp_path, target)
    checked = 0
    for doc in documents:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # no bundled schema for KEDA's CRDs: checked field by field above
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        checked += 1
    assert checked == (2 if target == "keda" else 3)
