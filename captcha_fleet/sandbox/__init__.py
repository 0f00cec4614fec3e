"""A CaptchaAI-compatible HTTP service on loopback, for the demo, tests and benchmarks.

``SandboxServer(SandboxConfig(time_scale=0.01)).start()`` serves ``in.php``/``res.php`` with solve times,
a thread-limited plan, a balance and injectable faults; ``captcha-fleet sandbox`` runs it from the shell.
"""

from captcha_fleet.provider_model import SolveTime
from captcha_fleet.sandbox.config import SandboxConfig, parse_sandbox_config
from captcha_fleet.sandbox.server import SandboxServer

__all__ = ["SandboxConfig", "SandboxServer", "SolveTime", "parse_sandbox_config"]
