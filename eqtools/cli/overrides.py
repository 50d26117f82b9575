"""``--set dotted.key=value`` overrides for spec files, validated by the same schema."""

from __future__ import annotations

import json
from typing import Any

from eqtools.errors import SpecError


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=VALUE`` applied (VALUE parsed as JSON, else a string)."""
    out = json.loads(json.dumps(data))
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r} is not of the form dotted.key=value (e.g. --set train.epochs=5)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part!r} is not a section of the spec")
            node = child
        node[parts[-1]] = value
    return out
