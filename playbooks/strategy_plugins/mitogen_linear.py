"""The ``mitogen_linear`` strategy, found here so that ansible.cfg names it by a path inside the project.

Mitogen keeps one Python interpreter per host for the whole run and caches the modules it sends, instead of a
fresh interpreter that unpacks and compiles each task's module (about 0.25 s of the host's CPU per task). The
plays and their results are the same as with ``linear``; only the transport is faster.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
