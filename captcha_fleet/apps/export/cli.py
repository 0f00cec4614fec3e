"""``captcha-fleet export keda|hpa``: Kubernetes manifests that carry ``fleet.yml``'s queue target and bounds.

For users who run the workers on Kubernetes and let KEDA or an HPA size them instead of the built-in
controller (see docs/kubernetes.md for what that gives up). The output is plain multi-document YAML on stdout
or in ``-o FILE``; the Secret is referenced, never rendered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captcha_fleet import __version__
from captcha_fleet.contract.common_cli import (
    add_config_option,
    add_key_prefix_option,
    add_log_level_option,
    add_subcommand,
)

if TYPE_CHECKING:
    from captcha_fleet.apps.export.k8s_manifests import ExportOptions
    from captcha_fleet.contract.config import FleetConfig
    from captcha_fleet.controller.settings import ControllerSettings


def register(subparsers: Any) -> None:
    """Add ``export`` with its ``keda`` and ``hpa`` targets."""
    parser = add_subcommand(
        subparsers,
        "export",
        run,
        help="print Kubernetes manifests (KEDA ScaledObject or HPA) from fleet.yml",
        description="Print a Deployment of `captcha-fleet worker` pods, its ConfigMap, and either a KEDA "
        "ScaledObject on the Redis task list (keda) or an autoscaling/v2 HPA on an External metric (hpa), "
        "with the queue target and min/max taken from fleet.yml's controller section.",
    )
    parser.add_argument("target", choices=["keda", "hpa"], help="which autoscaler to write manifests for")
    add_config_option(parser)
    add_key_prefix_option(parser, "Redis key prefix (default: from fleet.yml)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--image", default=f"captcha-fleet:{__version__}", help="worker container image")
    parser.add_argument("--name", default="captcha-fleet-worker", help="Deployment name (and prefix of the rest)")
    parser.add_argument("--namespace", "-n", help="namespace to put in the manifests")
    parser.add_argument("--secret", default="captcha-fleet", help="Secret holding the API key and Redis access")
    parser.add_argument("--list-length", type=int, help="pending tasks per pod (default: from the queue model)")
    parser.add_argument(
        "--metric", default="captcha_fleet_backlog", help="hpa: External metric name (default captcha_fleet_backlog)"
    )
    parser.add_argument("--cpu-request", default="100m")
    parser.add_argument("--memory-request", default="128Mi")
    parser.add_argument("--memory-limit", default="512Mi")
    add_log_level_option(parser, "WARNING")


def run(args: argparse.Namespace) -> int:
    """Render the manifests; config errors propagate to the CLI, which exits 2 naming the field."""
    from captcha_fleet.apps.export.k8s_manifests import ExportOptions
    from captcha_fleet.contract.common_cli import config_from_args
    from captcha_fleet.contract.config import ConfigError
    from captcha_fleet.controller.settings import settings_from_config

    if args.list_length is not None and args.list_length < 1:
        raise ConfigError("--list-length: must be at least 1")
    config = config_from_args(args)
    controller = settings_from_config(config)
    options = ExportOptions(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        secret_name=args.secret,
        cpu_request=args.cpu_request,
        memory_request=args.memory_request,
        memory_limit=args.memory_limit,
        list_length=args.list_length,
        metric_name=args.metric,
    )
    text = render(args.target, config, controller, options)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _block_dumper() -> type[Any]:
    """A SafeDumper writing multi-line strings (the ConfigMap's fleet.yml) as readable ``|`` blocks."""
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    BlockDumper.add_representer(str, represent_str)
    return BlockDumper


def render(target: str, config: FleetConfig, controller: ControllerSettings, options: ExportOptions) -> str:
    """Multi-document YAML with a header that says where the numbers came from and which Secret to create."""
    import yaml

    from captcha_fleet.apps.export.k8s_manifests import hpa_manifests, keda_manifests, scaling_plan, secret_command

    plan = scaling_plan(config, controller, options)
    documents = (
        keda_manifests(config, controller, options) if target == "keda" else hpa_manifests(config, controller, options)
    )
    header = [
        f"# Generated by `captcha-fleet export {target}` (captcha-fleet {__version__}).",
        f"# Queue {config.keys.tasks}; {plan.slots_per_pod} slots per pod (controller.slots_per_service);",
        f"# replicas {plan.min_replicas}..{plan.max_replicas} (controller min/max slots and services, plan_threads);",
        f"# {plan.queue_per_pod} pending tasks per pod (queue model: slots x drain_fraction x"
        " (p95_target_s - 2 x solve_time_prior_s) / solve_time_prior_s).",
        "# Create the Secret first (never commit it):",
        f"#   {secret_command(options)}",
    ]
    if target == "hpa":
        header.append(
            f"# The External metric {options.metric_name} must be served by a metrics adapter "
            "(e.g. prometheus-adapter); see docs/kubernetes.md."
        )
    body = "---\n".join(
        yaml.dump(doc, Dumper=_block_dumper(), default_flow_style=False, sort_keys=False) for doc in documents
    )
    return "\n".join(header) + "\n---\n" + body
