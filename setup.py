"""The package list for setuptools (everything else is in pyproject.toml).

``worker/`` and ``controller/`` stay at the top of the repository but install as ``captcha_fleet.worker`` and
``captcha_fleet.controller`` (``[tool.setuptools.package-dir]``): a mapped folder is not found under its new name by
``packages.find``, so the list is built here. The links ``captcha_fleet/worker`` and ``captcha_fleet/controller`` (for
the source tree) are left out of the search: the mapping names their real folders.
"""

from setuptools import find_packages, setup

NAMESPACE = "captcha_fleet"
MAPPED = ("worker", "controller")

own = find_packages(include=[NAMESPACE, f"{NAMESPACE}.*"], exclude=[f"{NAMESPACE}.{m}*" for m in MAPPED])
mapped = [f"{NAMESPACE}.{p}" for p in find_packages(include=[f"{m}{s}" for m in MAPPED for s in ("", ".*")])]
setup(packages=sorted({*own, *mapped}))
