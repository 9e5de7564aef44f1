"""Check a message against the published contract, docs/asyncapi.json (not the models).

    from tests.support.contract_check import validate_message
    validate_message("evt", payload)          # kind: cmd, reply, evt, status or state
    validate_message(topic.rsplit("/", 1)[1], json.loads(raw))

The schemas are read from the committed document (which a test keeps equal to what
lockerd/cloud/contract.py generates), so a message that passes here is one the cloud team's
own validators accept. Raises AssertionError saying what is wrong and where.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped,unused-ignore]
from jsonschema.validators import extend  # type: ignore[import-untyped,unused-ignore]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
URI = DOC.as_uri()
KINDS = ("cmd", "reply", "evt", "status", "state")


@dataclass(frozen=True)
class _Contract:
    doc: dict[str, Any]
    registry: Registry[Any]
    # kind -> {message name: JSON pointer of its payload schema}
    payloads: dict[str, dict[str, str]]


def _resolve(doc: dict[str, Any], ref: str) -> tuple[str, Any]:
    """Follow AsyncAPI ``$ref`` objects inside the document: (pointer, object)."""
    node: Any = {"$ref": ref}
    pointer = ref
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), (
            f"docs/asyncapi.json: only local $refs are supported: {pointer}"
        )
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return pointer, node


@functools.cache
def _contract() -> _Contract:
    doc = json.loads(DOC.read_text(encoding="utf-8"))
    resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(URI, resource)
    payloads: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        channel = doc["channels"][kind]
        payloads[kind] = {}
        for ref in channel["messages"].values():
            pointer, message = _resolve(doc, ref["$ref"])
            payloads[kind][message["name"]] = f"{pointer}/payload"
    return _Contract(doc, registry, payloads)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` as JSON Schema means it (ECMA-262, as pydantic's Rust regex does): a
    final ``$`` matches only at the very end. Python's ``$`` also matches before a final
    newline, so plain jsonschema would accept ``"cmd-1\\n"`` where the hub refuses it."""
    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if re.search(pattern, instance) is None:
        yield ValidationError(f"{instance!r} does not match {schema['pattern']!r}")


_Validator = extend(Draft202012Validator, {"pattern": _pattern})


@functools.cache
def _validator(pointer: str) -> Any:
    return _Validator({"$ref": URI + pointer}, registry=_contract().registry)


def _where(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(the message)"


def validate_message(kind: str, payload: dict[str, Any] | str | bytes) -> None:
    """Assert that ``payload`` (a dict, or its JSON text) is a valid ``kind`` message
    per docs/asyncapi.json. A command is checked against the schema its ``type`` names."""
    if kind not in KINDS:
        raise AssertionError(f"unknown message kind {kind!r}; one of {', '.join(KINDS)}")
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise AssertionError(f"{kind} message is not JSON: {exc}") from None
    contract = _contract()
    by_name = contract.payloads[kind]
    if kind == "cmd":
        ctype = payload.get("type") if isinstance(payload, dict) else None
        if ctype not in by_name:
            raise AssertionError(
                f"cmd message has type {ctype!r}, not one of the contract's commands: "
                f"{', '.join(sorted(by_name))}"
            )
        name = str(ctype)
    else:
        (name,) = by_name
    pointer = by_name[name]
    validator = _validator(pointer)
    errors = sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    lines = [f"- at {_where(e)}: {e.message}" for e in errors[:8]]
    if len(errors) > 8:
        lines.append(f"- ... {len(errors) - 8} more")
    raise AssertionError(
        f"{kind} message ({name}) does not match docs/asyncapi.json ({pointer}):\n"
        + "\n".join(lines)
        + f"\npayload: {json.dumps(payload, ensure_ascii=False)[:500]}"
    )


__all__ = ["KINDS", "validate_message"]
