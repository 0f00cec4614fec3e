"""A CaptchaAI-compatible HTTP service on loopback, for the demo, tests and benchmarks.

``SandboxServer(SandboxConfig(time_scale=0.01)).start()`` serves ``in.php``/``res.php`` with solve times,
a thread-limited plan, a balance and injectable faults; ``captcha-fleet sandbox`` runs it from the shell.
"""

from captcha_fleet.apps.sandbox.config import SandboxConfig, parse_sandbox_config
from captcha_fleet.apps.sandbox.server import SandboxServer
from captcha_fleet.contract.provider_model import SolveTime

__all__ = ["SandboxConfig", "SandboxServer", "SolveTime", "parse_sandbox_config"]
