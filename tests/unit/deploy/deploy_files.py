"""Loading the deploy files the way Docker Compose sees them (no Docker engine needed).

The Compose Specification schema in tests/fixtures/compose-spec.json is
``schema/compose-spec.json`` of https://github.com/compose-spec/compose-spec at commit
b2835e8acc1e42e7aecbc27a9bc4a1fc66ef21ba (vendored verbatim; see tests/fixtures/compose-spec.md).
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SPEC = REPO / "tests" / "fixtures" / "compose-spec.json"
DEPLOY = REPO / "deploy"

#: compose service -> (source directory under services/, python module it runs, its database)
APP_SERVICES: dict[str, tuple[str, str, str]] = {
    "attribution": ("attribution", "attribution", "attribution"),
    "referrals": ("referrals", "referrals", "referrals"),
    "care-gaps": ("care-gaps", "care_gaps", "care_gaps"),
    "notifications": ("notifications", "notifications", "notifications"),
}

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose variable interpolation (``${X}``, ``${X:-d}``, ``${X-d}``, ``$$``) with ``env``."""
    env = env or {}
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name"), match.group("op"), match.group("default")
        current = env.get(name)
        if op == ":-" and not current:
            return default or ""
        if op == "-" and current is None:
            return default or ""
        return current or ""

    return _VARIABLE.sub(replace, value)


@cache
def compose_raw() -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved, variables not)."""
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def compose() -> dict[str, Any]:
    """The compose file after interpolation with an empty environment (the documented defaults)."""
    resolved = interpolate(compose_raw())
    assert isinstance(resolved, dict)
    return resolved


@cache
def compose_spec() -> dict[str, Any]:
    loaded = json.loads(COMPOSE_SPEC.read_text())
    assert isinstance(loaded, dict)
    return loaded


def yaml_file(relative: str) -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / relative).read_text())
    assert isinstance(loaded, dict)
    return loaded


def json_file(relative: str) -> dict[str, Any]:
    loaded = json.loads((DEPLOY / relative).read_text())
    assert isinstance(loaded, dict)
    return loaded


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
