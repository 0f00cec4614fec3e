"""Render a role's real Jinja templates the way Ansible's template module does, for fast tests without Ansible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"


def role_vars(role: str, **overrides: Any) -> dict[str, Any]:
    """The role's defaults, its vars and ``overrides``, string values templated against each other (like Ansible)."""
    variables: dict[str, Any] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    role_vars_file = ROLES / role / "vars" / "main.yml"
    if role_vars_file.exists():
        variables.update(yaml.safe_load(role_vars_file.read_text()) or {})
    variables.update(ansible_managed="Ansible managed", **overrides)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    for _ in range(5):
        for name, value in variables.items():
            if isinstance(value, str) and "{{" in value:
                variables[name] = env.from_string(value).render(**variables)
    return variables


def render(role: str, template: str, dest: Path, **overrides: Any) -> Path:
    """Render ``roles/<role>/templates/<template>`` into ``dest`` (mode 0600: it may hold secrets)."""
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, autoescape=False)
    text = env.from_string((ROLES / role / "templates" / template).read_text()).render(**role_vars(role, **overrides))
    dest.write_text(text, encoding="utf-8")
    dest.chmod(0o600)
    return dest
