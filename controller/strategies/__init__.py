"""Strategies: pure functions of the signals that size the fleet (nomad-autoscaler's strategy plugins).

``base.py`` holds the contract every strategy implements (:class:`~.base.Policy`, its ``Decision`` and
``PolicyState``); ``queue_model.py`` is this project's policy, ``seed.py``, ``keda.py`` and ``static.py`` the
baselines it is compared with; ``registry.py`` turns a ``--policy`` name into one, wrapped in ``bounds.py``.
"""
