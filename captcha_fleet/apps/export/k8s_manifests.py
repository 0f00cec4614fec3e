"""Kubernetes manifests for running the workers under KEDA or an HPA instead of the built-in controller.

Pure functions of the loaded ``fleet.yml``: the same queue key, slot bounds and scale-down window the
controller would use become a Deployment (one worker service per pod, fixed slots), a ConfigMap with the
secret-free ``fleet.yml``, and either a KEDA ScaledObject with the Redis list trigger or an ``autoscaling/v2``
HPA on an External metric. Secrets are never rendered: the manifests reference a Secret the user creates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from captcha_fleet import __version__
from captcha_fleet.contract.config import FleetConfig

if TYPE_CHECKING:
    from captcha_fleet.controller.settings import ControllerSettings

CONFIG_MOUNT = "/etc/captcha-fleet"
# Keys the user puts in the Secret (see secret_command()).
SECRET_API_KEY = "captchaai-key"
SECRET_REDIS_URL = "redis-url"
SECRET_REDIS_ADDRESS = "redis-address"
SECRET_REDIS_PASSWORD = "redis-password"
# P95 solve time / mean solve time assumed when only the prior is known (no tasks have finished yet).
P95_SOLVE_FACTOR = 2.0
MAX_SLOTS_PER_POD = 10  # KEDA has no fast path: replicas are its only unit of capacity


@dataclass(frozen=True)
class ExportOptions:
    """What the command line may change; everything else follows ``fleet.yml``."""

    name: str = "captcha-fleet-worker"
    namespace: str | None = None
    image: str = f"captcha-fleet:{__version__}"
    secret_name: str = "captcha-fleet"
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    memory_limit: str = "512Mi"
    list_length: int | None = None  # KEDA listLength / HPA per-pod target; None: derived from the queue model
    metric_name: str = "captcha_fleet_backlog"  # HPA External metric (served by a metrics adapter)


@dataclass(frozen=True)
class ScalingPlan:
    """The numbers the manifests carry, derived once so the tests and the docs can name them."""

    slots_per_pod: int
    min_replicas: int
    max_replicas: int
    queue_per_pod: int  # pending tasks per pod that still meet the latency target
    backlog_per_pod: int  # pending + in flight per pod (the HPA's target)
    polling_interval_s: int
    scale_down_window_s: int
    termination_grace_s: int
    database: int


def scaling_plan(config: FleetConfig, controller: ControllerSettings, options: ExportOptions) -> ScalingPlan:
    """Translate the controller's slot bounds and queue model into pods.

    A pod is one worker service with ``controller.slots_per_service`` slots, at most ``MAX_SLOTS_PER_POD``:
    KEDA scales pods, not thread targets, so a pod must be small for replicas to track the load (the
    controller's own default service holds the whole plan and grows by thread targets instead). Replicas never
    exceed what the plan's threads can use (``min(max_slots, plan_threads)`` slots), since slots beyond the plan
    are refused.
    The queue target per pod is the backlog one pod starts within the latency budget, as in the controller's
    queue model: ``slots x drain_fraction x (P95 target - P95 solve) / mean solve``, with the solve-time prior
    as the mean and twice it as the P95 (solve times are long-tailed: the sandbox and bench traces show P95
    ~2x P50). With the defaults that is 2 tasks per slot, the ``keda:2`` of bench/README.md (P95 52-55 s).
    """
    slots = max(1, min(controller.slots_per_service, MAX_SLOTS_PER_POD))
    min_replicas = max(controller.min_services, math.ceil(controller.min_slots / slots))
    max_by_slots = max(1, controller.max_effective_slots // slots)
    max_replicas = max(min_replicas, min(controller.max_services, max_by_slots))
    solve = max(controller.solve_time_prior_s, 0.001)
    budget = max(0.0, controller.p95_target_s - P95_SOLVE_FACTOR * solve) * controller.drain_fraction
    derived = max(1, math.floor(slots * budget / solve))
    queue_per_pod = options.list_length if options.list_length is not None else derived
    return ScalingPlan(
        slots_per_pod=slots,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        queue_per_pod=queue_per_pod,
        backlog_per_pod=slots + queue_per_pod,
        polling_interval_s=max(1, math.ceil(controller.interval_s)),
        scale_down_window_s=min(3600, max(0, math.ceil(controller.scale_down_window_s))),
        # SIGTERM drains: in-flight solves get drain_timeout_s, then the rest is requeued; leave room for that.
        termination_grace_s=math.ceil(config.worker.drain_timeout_s) + 15,
        database=_redis_database(config.redis_url),
    )


def _redis_database(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _metadata(name: str, options: ExportOptions, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": options.name,
            "app.kubernetes.io/part-of": "captcha-fleet",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/version": __version__,
        },
    }
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def pod_config(config: FleetConfig, plan: ScalingPlan) -> FleetConfig:
    """The config a pod runs: the plan's slots per pod, metrics reachable from outside it, no untyped sections."""
    worker = dataclasses.replace(config.worker, initial_slots=plan.slots_per_pod)
    if config.worker.metrics_port:
        worker = dataclasses.replace(worker, metrics_host="0.0.0.0")  # scraped from outside the pod
    return dataclasses.replace(config, worker=worker, raw={})


def config_map(config: FleetConfig, plan: ScalingPlan, options: ExportOptions) -> dict[str, Any]:
    """The secret-free ``fleet.yml`` as a ConfigMap, mounted at :data:`CONFIG_MOUNT` (Redis URL and API key come
    from the Secret's env vars; the API base is written, pods have no CAPTCHAAI_BASE)."""
    text = pod_config(config, plan).to_yaml(with_base=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{options.name}-config", options, "config"),
        "data": {"fleet.yml": text},
    }


def deployment(config: FleetConfig, plan: ScalingPlan, options: ExportOptions) -> dict[str, Any]:
    """One ``captcha-fleet worker`` per pod with fixed slots; SIGTERM drains within the grace period."""
    selector = {"app.kubernetes.io/name": options.name}
    args = [
        "worker",
        "--config",
        f"{CONFIG_MOUNT}/fleet.yml",
        "--slots",
        str(plan.slots_per_pod),
        "--host-name",
        "$(POD_NAME)",
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": options.image,
        "command": ["captcha-fleet"],
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            _secret_env("CAPTCHAAI_KEY", options.secret_name, SECRET_API_KEY),
            _secret_env("REDIS_URL", options.secret_name, SECRET_REDIS_URL),
        ],
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"memory": options.memory_limit},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    template_meta: dict[str, Any] = {"labels": dict(selector)}
    if config.worker.metrics_port:
        container["ports"] = [{"name": "metrics", "containerPort": config.worker.metrics_port}]
        template_meta["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(config.worker.metrics_port),
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options.name, options, "worker"),
        "spec": {
            "replicas": max(1, plan.min_replicas),
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": template_meta,
                "spec": {
                    "terminationGracePeriodSeconds": plan.termination_grace_s,
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": f"{options.name}-config"}}],
                },
            },
        },
    }


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def trigger_authentication(options: ExportOptions) -> dict[str, Any]:
    """KEDA reads the Redis address and password from the Secret, never from the manifest."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _metadata(f"{options.name}-redis", options, "autoscaling"),
        "spec": {
            "secretTargetRef": [
                {"parameter": "address", "name": options.secret_name, "key": SECRET_REDIS_ADDRESS},
                {"parameter": "password", "name": options.secret_name, "key": SECRET_REDIS_PASSWORD},
            ]
        },
    }


def scaled_object(config: FleetConfig, plan: ScalingPlan, options: ExportOptions) -> dict[str, Any]:
    """KEDA's Redis list trigger on ``{prefix}:tasks``: one pod per ``listLength`` pending tasks."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(options.name, options, "autoscaling"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "pollingInterval": plan.polling_interval_s,
            "cooldownPeriod": max(plan.scale_down_window_s, 30),
            "minReplicaCount": plan.min_replicas,
            "maxReplicaCount": plan.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(plan)}},
            "triggers": [
                {
                    "type": "redis",
                    # Trigger metadata values are strings in KEDA's CRD.
                    "metadata": {
                        "listName": config.keys.tasks,
                        "listLength": str(plan.queue_per_pod),
                        "activationListLength": "0",
                        "databaseIndex": str(plan.database),
                    },
                    "authenticationRef": {"name": f"{options.name}-redis"},
                }
            ],
        },
    }


def hpa(plan: ScalingPlan, options: ExportOptions, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An ``autoscaling/v2`` HPA on an External metric, averaged per pod.

    The default metric, ``captcha_fleet_backlog``, counts pending and claimed tasks, so unlike KEDA's list
    length it does not fall while solves are still in flight; a metrics adapter must serve it from Prometheus.
    """
    metric: dict[str, Any] = {"name": options.metric_name}
    if selector:
        metric["selector"] = {"matchLabels": dict(selector)}
    target = plan.backlog_per_pod if options.metric_name == "captcha_fleet_backlog" else plan.queue_per_pod
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options.name, options, "autoscaling"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": max(1, plan.min_replicas),
            "maxReplicas": plan.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": metric,
                        "target": {"type": "AverageValue", "averageValue": str(target)},
                    },
                }
            ],
            "behavior": _behavior(plan),
        },
    }


def _behavior(plan: ScalingPlan) -> dict[str, Any]:
    """Up at once (the controller's interval), down only to the highest recommendation over its window."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": plan.polling_interval_s}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": plan.scale_down_window_s,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": max(plan.polling_interval_s, 15)}],
        },
    }


def secret_command(options: ExportOptions) -> str:
    """The ``kubectl`` line that creates the Secret the manifests reference (values are placeholders)."""
    namespace = f" -n {options.namespace}" if options.namespace else ""
    return (
        f"kubectl{namespace} create secret generic {options.secret_name}"
        f" --from-literal={SECRET_API_KEY}=... --from-literal={SECRET_REDIS_URL}=redis://:PASSWORD@HOST:6379/0"
        f" --from-literal={SECRET_REDIS_ADDRESS}=HOST:6379 --from-literal={SECRET_REDIS_PASSWORD}=PASSWORD"
    )


def keda_manifests(config: FleetConfig, controller: ControllerSettings, options: ExportOptions) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, TriggerAuthentication, ScaledObject."""
    plan = scaling_plan(config, controller, options)
    return [
        config_map(config, plan, options),
        deployment(config, plan, options),
        trigger_authentication(options),
        scaled_object(config, plan, options),
    ]


def hpa_manifests(
    config: FleetConfig,
    controller: ControllerSettings,
    options: ExportOptions,
    selector: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, HorizontalPodAutoscaler."""
    plan = scaling_plan(config, controller, options)
    return [config_map(config, plan, options), deployment(config, plan, options), hpa(plan, options, selector)]
