"""The hub <-> cloud contract as an AsyncAPI 3.0 document, generated from lockerd.cloud.contract.

``python -m tools.asyncapi`` writes ``docs/asyncapi.json``; ``--check`` exits 1 when
the committed file differs from what the code generates (a test does the same).

The payload schemas come from the very pydantic models the hub parses commands with
and builds its messages from (``TypeAdapter.json_schemas``, one shared set of
definitions under ``components.schemas``). Commands and events are discriminated
unions by ``type`` (``oneOf``, with the AsyncAPI ``discriminator``), one schema per
type; a reply's ``status`` is an enum; a reply names its command by ``id`` (the
``correlationId``). The document's ``info.version`` is the contract's own version,
``contract.CONTRACT_VERSION``. It is written from the hub's side: ``send`` is what
the hub publishes, ``receive`` what it subscribes to. Channel addresses are
``{prefix}/{hub}/...`` with two parameters: ``prefix`` (``cloud.prefix`` in the hub
config, default ``lockers``) and ``hub`` (the hub id).

:func:`worked_example` computes the code hash and the signed command quoted in
``docs/cloud-guide.md``, and :func:`event_table` the guide's table of events; a test
checks the guide quotes exactly these.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import sys
import typing
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from lockerd.cloud import contract as c
from lockerd.cloud.link import VERSION, Verifier
from lockerd.config import Cloud, HubConfig
from lockerd.hub.codes import CodeHasher
from lockerd.hub.vocab import ALARM_KINDS, EVENT_TYPES, TELEMETRY_KINDS, EventType

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
SCHEMAS = "#/components/schemas/"
MQTT_BINDING = "0.2.0"

# hub -> cloud: (channel, message key, payload schema's name, what validates it)
HUB_MESSAGES: tuple[tuple[str, str, str, TypeAdapter[Any]], ...] = (
    ("reply", "reply", "Reply", TypeAdapter(c.Reply)),
    ("evt", "event", "Event", c.EVENT),
    ("status", "status", "Status", TypeAdapter(c.Status)),
    ("state", "state", "StateSnapshot", TypeAdapter(c.StateSnapshot)),
)
CORRELATION = "#/components/correlationIds/commandId"
RETAINED = frozenset({"status", "state"})

COMMAND_SUMMARY: dict[str, str] = {
    "parcel.reserve": "Reserve a compartment for a delivery: the carrier's deposit code "
    "and the resident's pickup code. A `parcel_reserved` event follows.",
    "return.reserve": "Reserve a compartment for a return: the resident deposits, the "
    "carrier picks up. A `parcel_reserved` event follows.",
    "parcel.cancel": "Cancel a reservation that has not been deposited yet. A "
    "`parcel_cancelled` event follows (none for a parcel cancelled already).",
    "parcel.update_codes": "Replace the deposit and/or pickup code of a parcel. A "
    "`parcel_codes_changed` event follows.",
    "parcel.recall": "Give the carrier a recall code for a delivery: it opens the "
    "compartment only once the parcel has expired (stored past its pickup window). On a "
    "parcel not deposited yet it is accepted and kept for later (the deposit code still "
    "works; to take such a parcel back, cancel it). A `parcel_codes_changed` event "
    '(`purposes` `["recall"]`) follows.',
    "compartment.open": "Open one compartment now, remotely. `already_open` when its door "
    "stood open with nothing under way (nothing is pulsed); `refused` when the compartment "
    "is busy, an earlier open whose door is not shut yet included. Door events follow "
    "(`door_open_requested`, `door_opened`, `service_door_shut`, ...).",
    "compartment.set_service": "Take a compartment out of service, or put it back. A "
    "`compartment_service` event follows when the state changed.",
    "sync.request": "Ask for a full state report: the reply's `result` is a state "
    "snapshot, and a fresh snapshot is published on `state`. No event.",
    "codes.bulk": "Reserve many parcels with one command: one `parcel_reserved` event "
    "for each parcel stored, as `parcel.reserve` sends.",
}


# ======================================================================================
# Examples (deterministic: the document is compared byte for byte)
# ======================================================================================

EXAMPLE_HUB = "hub-0042"
EXAMPLE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
EXAMPLE_CODE_KEY = bytes(range(32))  # 00 01 02 ... 1f: an example, never a real key
# RFC 8032 section 7.1, TEST 1: a published key, for examples only
EXAMPLE_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


@dataclass(frozen=True)
class WorkedExample:
    """The worked examples of docs/cloud-guide.md, computed with lockerd's own code."""

    code_key: bytes
    code: str
    code_hash: str
    seed: bytes
    public_key: bytes
    public_key_pem: str
    command: dict[str, Any]
    canonical: bytes
    canonical_sha256: str
    sig: str
    signed: dict[str, Any]
    now: int  # a moment at which the signed command is valid

    def quoted(self) -> dict[str, str]:
        """What the guide must quote verbatim."""
        return {
            "code key (hex)": self.code_key.hex(),
            "code": self.code,
            "code hash": self.code_hash,
            "Ed25519 seed (hex)": self.seed.hex(),
            "public key (hex)": self.public_key.hex(),
            "public key (PEM)": self.public_key_pem.strip(),
            "canonical bytes": self.canonical.decode(),
            "canonical length": f"{len(self.canonical)} bytes of UTF-8",
            "canonical sha256": self.canonical_sha256,
            "signature": self.sig,
            "signed command": json.dumps(self.signed, indent=2, ensure_ascii=False),
        }


def worked_example() -> WorkedExample:
    code = "40185327"
    key = Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED)
    public = key.public_key()
    command: dict[str, Any] = {
        "id": "open-20260101-0001",
        "type": "compartment.open",
        "hub": EXAMPLE_HUB,
        "issued_at": EXAMPLE_TIME,
        "expires_at": EXAMPLE_TIME + 120,
        "compartment": "A05",
        "reason": "support ticket 4711: Tür klemmt",
    }
    canonical = c.canonical(command)
    sig = base64.b64encode(key.sign(canonical)).decode()
    return WorkedExample(
        code_key=EXAMPLE_CODE_KEY,
        code=code,
        code_hash=CodeHasher(EXAMPLE_CODE_KEY).hash(code),
        seed=EXAMPLE_SEED,
        public_key=public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public_key_pem=public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        command=command,
        canonical=canonical,
        canonical_sha256=hashlib.sha256(canonical).hexdigest(),
        sig=sig,
        signed={**command, "sig": sig},
        now=EXAMPLE_TIME + 10,
    )


def expired_message() -> str:
    """What the hub says of the worked example's open arriving 10 minutes late."""
    w = worked_example()
    cloud = Cloud(url="mqtt://broker")
    verifier = Verifier(
        EXAMPLE_HUB, None, cloud.command_skew_s, cloud.command_max_life_s, cloud.grant_max_life_s
    )
    found = verifier.times(c.COMMAND.validate_python(w.signed), EXAMPLE_TIME + 600, signed=True)
    assert found is not None
    assert found[0] == "expired"
    return found[1]


def _h(code: str) -> str:
    return CodeHasher(EXAMPLE_CODE_KEY).hash(code)


def _signed(command: dict[str, Any], life: int = 86_400) -> dict[str, Any]:
    """An example grant as the cloud sends it: ``expires_at`` (after ``issued_at``), and
    signed with the example key."""
    body: dict[str, Any] = {}
    for k, v in command.items():
        body[k] = v
        if k == "issued_at":
            body["expires_at"] = v + life
    key = Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED)
    return c.sign(body, key)


def examples() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Example payloads by message key: each is valid (pydantic checks it here; the
    tests check it against the schemas too)."""
    t = EXAMPLE_TIME
    base = {"hub": EXAMPLE_HUB, "issued_at": t}
    reservation = {
        "parcel": "P-1001",
        "size": "M",
        "deposit_code_hash": _h("40185327"),
        "pickup_code_hash": _h("77120964"),
        "deposit_from": t,
        "deposit_until": t + 3 * 86_400,
    }
    snapshot = {
        "hub": EXAMPLE_HUB,
        "at": t + 0.25,
        "compartments": [
            {"label": "A01", "size": "S", "state": "free", "door_open": False},
            {"label": "A05", "size": "M", "state": "occupied", "door_open": False},
            {"label": "B02", "size": "L", "state": "out_of_service", "door_open": True},
        ],
        "alarms": 1,
    }
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "parcel.reserve": [
            ("delivery", {"id": "cmd-1001", "type": "parcel.reserve", **base, **reservation}),
            (
                "with recall code, accessible",
                {
                    "id": "cmd-1002",
                    "type": "parcel.reserve",
                    **base,
                    **reservation,
                    "parcel": "P-1002",
                    "deposit_code_hash": _h("51230866"),
                    "pickup_code_hash": _h("90417723"),
                    "recall_code_hash": _h("30098112"),
                    "pickup_window_s": 48 * 3600,
                    "accessible": True,
                },
            ),
        ],
        "return.reserve": [
            (
                "return",
                {
                    "id": "cmd-1003",
                    "type": "return.reserve",
                    **base,
                    **reservation,
                    "parcel": "R-2001",
                    "size": "S",
                    "deposit_code_hash": _h("66140279"),
                    "pickup_code_hash": _h("18840351"),
                },
            )
        ],
        "parcel.cancel": [
            ("cancel", {"id": "cmd-1004", "type": "parcel.cancel", **base, "parcel": "P-1001"})
        ],
        "parcel.update_codes": [
            (
                "new pickup code",
                {
                    "id": "cmd-1005",
                    "type": "parcel.update_codes",
                    **base,
                    "parcel": "P-1001",
                    "pickup_code_hash": _h("24681357"),
                },
            )
        ],
        "parcel.recall": [
            (
                "recall",
                {
                    "id": "cmd-1006",
                    "type": "parcel.recall",
                    **base,
                    "parcel": "P-1001",
                    "recall_code_hash": _h("30098112"),
                },
            )
        ],
        "compartment.open": [("signed (docs/cloud-guide.md)", worked_example().signed)],
        "compartment.set_service": [
            (
                "out of service",
                {
                    "id": "cmd-1007",
                    "type": "compartment.set_service",
                    **base,
                    "compartment": "B02",
                    "in_service": False,
                },
            )
        ],
        "sync.request": [("sync", {"id": "cmd-1008", "type": "sync.request", **base})],
        "codes.bulk": [
            (
                "two reservations",
                {
                    "id": "cmd-1009",
                    "type": "codes.bulk",
                    **base,
                    "reservations": [
                        reservation,
                        {
                            **reservation,
                            "parcel": "R-2001",
                            "size": "S",
                            "kind": "return",
                            "deposit_code_hash": _h("66140279"),
                            "pickup_code_hash": _h("18840351"),
                        },
                    ],
                },
            )
        ],
        "reply": [
            (
                "applied",
                {
                    "id": "cmd-1001",
                    "hub": EXAMPLE_HUB,
                    "type": "parcel.reserve",
                    "ok": True,
                    "status": "ok",
                    "message": "",
                    "result": {},
                    "duplicate": False,
                    "at": t + 0.5,
                },
            ),
            (
                "a redelivery",
                {
                    "id": "cmd-1001",
                    "hub": EXAMPLE_HUB,
                    "type": "parcel.reserve",
                    "ok": True,
                    "status": "ok",
                    "message": "",
                    "result": {},
                    "duplicate": True,
                    "at": t + 0.5,
                },
            ),
            (
                "door opened",
                {
                    "id": "open-20260101-0001",
                    "hub": EXAMPLE_HUB,
                    "type": "compartment.open",
                    "ok": True,
                    "status": "opened",
                    "message": "Compartment A05 is open.",
                    "result": {"compartment": "A05"},
                    "duplicate": False,
                    "at": t + 11.2,
                },
            ),
            (
                "refused",
                {
                    "id": "open-20260101-0002",
                    "hub": EXAMPLE_HUB,
                    "type": "compartment.open",
                    "ok": False,
                    "status": "bad_signature",
                    "message": "the signature does not verify (another key, a changed "
                    "field, or other canonical bytes)",
                    "result": {},
                    "duplicate": False,
                    "at": t + 12.0,
                },
            ),
            (
                "expired",
                {
                    "id": "open-20260101-0003",
                    "hub": EXAMPLE_HUB,
                    "type": "compartment.open",
                    "ok": False,
                    "status": "expired",
                    "message": expired_message(),
                    "result": {},
                    "duplicate": False,
                    "at": t + 600.0,
                },
            ),
            (
                "codes.bulk",
                {
                    "id": "cmd-1009",
                    "hub": EXAMPLE_HUB,
                    "type": "codes.bulk",
                    "ok": True,
                    "status": "ok",
                    "message": "",
                    "result": {
                        "reserved": 1,
                        "exists": ["P-1001"],
                        "code_conflict": [],
                        "code_used": [],
                    },
                    "duplicate": False,
                    "at": t + 2.0,
                },
            ),
        ],
        "event": event_examples(),
        "status": [
            (
                "birth",
                {
                    "hub": EXAMPLE_HUB,
                    "state": "online",
                    "boot_seq": 17,
                    "at": t + 0.1,
                    "version": VERSION,
                },
            ),
            (
                "will",
                {
                    "hub": EXAMPLE_HUB,
                    "state": "offline",
                    "boot_seq": 17,
                    "at": t + 0.1,
                    "version": VERSION,
                },
            ),
        ],
        "state": [("snapshot", snapshot)],
    }
    for key in c.SIGNED - c.OPENS_NOW:  # grants are signed too, and live longer
        out[key] = [(name, _signed(payload)) for name, payload in out[key]]
    models = {key: adapter for _, key, _, adapter in HUB_MESSAGES}
    for key, items in out.items():
        for _, payload in items:
            if key in models:
                models[key].validate_python(payload)
            else:
                assert c.COMMAND.validate_python(payload).type == key
    return out


def _event_data() -> dict[EventType, dict[str, Any]]:
    """An example ``data`` of every event type."""
    t = EXAMPLE_TIME
    by = "keypad:1"
    door = {"compartment": "A05", "purpose": "collect", "parcel": "P-1001"}
    return {
        "parcel_reserved": {"parcel": "P-1001", "kind": "delivery", "size": "M"},
        "parcel_codes_changed": {"parcel": "P-1001", "purposes": ["collect"]},
        "parcel_cancelled": {"parcel": "P-1001"},
        "reservation_expired": {"parcel": "P-1001"},
        "parcel_expired": {"parcel": "P-1001", "compartment": "A05"},
        "deposited": {"compartment": "A05", "parcel": "P-1001", "collect_until": t + 262_800.0},
        "return_deposited": {
            "compartment": "A01",
            "parcel": "R-2001",
            "collect_until": t + 262_800.0,
        },
        "deposit_abandoned": {"compartment": "A05", "parcel": "P-1001"},
        "collected": {"compartment": "A05", "parcel": "P-1001"},
        "return_collected": {"compartment": "A01", "parcel": "R-2001"},
        "recalled": {"compartment": "A05", "parcel": "P-1001"},
        "collect_not_taken": {"compartment": "A05", "parcel": "P-1001"},
        "door_open_requested": {**door, "by": by},
        "door_opened": door,
        "door_shut": {"compartment": "A05"},
        "service_door_shut": {"compartment": "B02"},
        "door_not_opened": door,
        "door_jammed": door,
        "door_left_open": {**door, "open_s": 184.5},
        "forced_open": {"compartment": "B02", "parcel": None},
        "open_interrupted": {"compartment": "A05", "purpose": "deposit", "parcel": "P-1001"},
        "occupancy_mismatch": {"compartment": "A01", "store": "empty", "sensor": "occupied"},
        "compartment_service": {"compartment": "B02", "in_service": False, "by": "cloud:cmd-1007"},
        "compartment_inspected": {"compartment": "B02", "holds_parcel": False, "by": "tech"},
        "board_offline": {"board": "cu48@1", "error": "no reply"},
        "board_online": {"board": "cu48@1"},
        "sensor_fault": {"board": "cu48@1", "channel": 5, "compartment": "A05", "changes": 8},
        "code_guessing": {"terminal": by, "wrong": 10, "window_s": 3600.0},
        "code_guessing_hub_wide": {"wrong": 50, "window_s": 3600.0},
        "disk_full": {"path": "/var/lib/lockerd"},
        "outbox_quota_reached": {"bytes": 52_428_800, "quota": 52_428_800},
        "outbox_full": {"bytes": 104_857_600, "ceiling": 104_857_600},
        "message_quarantined": {
            "source": "cloud",
            "ref": "cmd-1010",
            "error": "RecursionError: maximum recursion depth exceeded",
            "bytes": 2048,
        },
        "command_refused": {
            "command": "open-20260101-0002",
            "type": "compartment.open",
            "reason": "bad_signature",
        },
    }


def event_examples() -> list[tuple[str, dict[str, Any]]]:
    """One example event of every type, as the cloud receives it (``seq`` from 41)."""
    out: list[tuple[str, dict[str, Any]]] = []
    data = _event_data()
    for n, type_ in enumerate(EVENT_TYPES):
        payload = {
            "hub": EXAMPLE_HUB,
            "seq": 41 + n,
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:lockerd:example-event:{type_}")),
            "type": type_,
            "at": EXAMPLE_TIME + 60.0 * n + 0.5,
            "data": data[type_],
        }
        out.append((type_, payload))
    return out


# ======================================================================================
# The guide's table of events
# ======================================================================================

_SHAPES = {
    c.ID_PATTERN: "id",
    c.LABEL_PATTERN: "label",
    c.TYPE_PATTERN: "command type",
}


def _shape(schema: dict[str, Any]) -> str:
    """A field's JSON type, as the guide's table says it."""
    if "anyOf" in schema:
        kinds = [_shape(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) + " or `null`"
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return " / ".join(f"`{v}`" for v in values)
    if schema.get("type") == "array":
        return "list of " + _shape(schema["items"])
    if schema.get("type") == "string":
        return _SHAPES.get(schema.get("pattern", ""), "text")
    return str(schema.get("type", "any"))


def event_table() -> str:
    """The guide's table of every event type: when it is sent, and its ``data``."""
    lines = ["| `type` | sent when | `data` |", "| --- | --- | --- |"]
    for type_, model in c.EVENT_DATA.items():
        schema = model.model_json_schema()
        required = set(schema.get("required", []))
        fields = ", ".join(
            f"`{name}` {_shape(prop)}" + ("" if name in required else " (optional)")
            for name, prop in schema["properties"].items()
        )
        when = " ".join((model.__doc__ or "").split())
        if type_ in ALARM_KINDS:
            when += " **Alarm.**"
        if type_ in TELEMETRY_KINDS:
            when += " *Telemetry.*"
        lines.append(f"| `{type_}` | {when} | {fields} |")
    return "\n".join(lines) + "\n"


# ======================================================================================
# The document
# ======================================================================================


def command_models() -> dict[str, type[BaseModel]]:
    """Every command model of the ``Command`` union, by its ``type``."""
    union = typing.get_args(c.Command)[0]
    out: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (name,) = typing.get_args(model.model_fields["type"].annotation)
        out[name] = model
    return out


def _fix_refs(node: Any) -> Any:
    """pydantic's ``#/$defs/X`` -> ``#/components/schemas/X``; pydantic's OpenAPI-style
    ``discriminator`` object becomes AsyncAPI's: the name of the property that selects
    the schema (``type``; JSON Schema validators ignore it, the ``const`` of each
    member's ``type`` does the selecting)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = SCHEMAS + v.removeprefix("#/$defs/")
            elif k == "discriminator" and isinstance(v, dict) and "propertyName" in v:
                out[k] = v["propertyName"]
            else:
                out[k] = _fix_refs(v)
        return out
    if isinstance(node, list):
        return [_fix_refs(v) for v in node]
    return node


def schemas() -> dict[str, Any]:
    """components.schemas: every model, plus ``Command`` and ``Event`` (the unions of
    all commands and of all events, by ``type``)."""
    mode: JsonSchemaMode = "validation"
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        ("Command", mode, c.COMMAND),
        *((name, mode, adapter) for _, _, name, adapter in HUB_MESSAGES),
    ]
    tops, defs = TypeAdapter.json_schemas(inputs, ref_template=SCHEMAS + "{model}")
    out: dict[str, Any] = dict(defs.get("$defs", {}))
    command = dict(tops[("Command", mode)])
    command["title"] = "Command"
    command["description"] = "Any command; `type` selects which: " + ", ".join(
        f"`{t}` ({m.__name__})" for t, m in command_models().items()
    )
    out["Command"] = command
    event = dict(tops[("Event", mode)])
    event["title"] = "Event"
    event["description"] = (
        "Any event; `type` selects which, and with it the shape of `data`: "
        + ", ".join(f"`{t}` ({m.__name__})" for t, m in c.EVENT_MODELS.items())
        + ". A type not listed here is a newer contract's: log it and skip it."
    )
    out["Event"] = event
    return typing.cast(dict[str, Any], _fix_refs(out))


def _mqtt(qos: int, retain: bool) -> dict[str, Any]:
    return {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": MQTT_BINDING}}


def _command_description(name: str, model: type[BaseModel]) -> str:
    text = COMMAND_SUMMARY[name]
    if model.__doc__ and model.__doc__ != c.Reservation.__doc__:
        text += "\n\n" + " ".join(model.__doc__.split())
    if name in c.SIGNED:
        life = "`command_max_life_s`" if name in c.OPENS_NOW else "`grant_max_life_s`"
        text += (
            "\n\nMust carry `expires_at` and `sig`: an Ed25519 signature of the cloud's "
            "command key over the canonical JSON of the command without `sig` (keys "
            "sorted, separators `,` `:`, UTF-8, no escaping of non-ASCII). Refused unless "
            f"the signature verifies, the lifetime `expires_at - issued_at` is at most "
            f"{life} and the times are current within `command_skew_s`."
        )
        if name not in c.OPENS_NOW:
            text += (
                " A code hash spent or replaced at the hub before is refused (`refused`, "
                "the message says it was used before; in codes.bulk, `code_used`)."
            )
    else:
        text += (
            "\n\nNeeds no signature. `expires_at` is optional: if given, the command is "
            "refused (`expired`, nothing done) when it arrives more than `command_skew_s` "
            "after that time."
        )
    return text


def _messages() -> dict[str, Any]:
    ex = examples()
    out: dict[str, Any] = {}
    for name, model in command_models().items():
        out[name] = {
            "name": name,
            "title": model.__name__,
            "summary": COMMAND_SUMMARY[name],
            "description": _command_description(name, model),
            "contentType": "application/json",
            "payload": {"$ref": SCHEMAS + model.__name__},
            "correlationId": {"$ref": CORRELATION},
            "examples": [{"name": n, "payload": p} for n, p in ex[name]],
        }
    about = {
        "reply": (
            "The result of one delivered command, matched by `id`.",
            "Matched to its command by `id`. `ok` says whether it was done; `status` "
            "says how: `ok`; for compartment.open `opened`, `already_open`, `jammed`, "
            "`failed`, or `interrupted` (the hub restarted during the open; the events tell "
            "what the door did); `refused` when the hub could not do it (`message` says "
            "why); or a refusal before anything was done: `malformed`, `wrong_hub`, "
            "`retained`, `unsigned`, `bad_signature`, `no_expiry`, `lifetime_too_long`, "
            "`not_yet_valid`, `expired`, `no_command_key`. A redelivered command gets the "
            "stored reply again with `duplicate: true` (nothing is done again; `at` is "
            "the original's); a redelivery that arrives while its door is still being "
            "opened gets no reply of its own, the final one follows. A command whose id "
            "cannot be read is answered with id "
            "`unknown`. `result`: sync.request -> a state snapshot; codes.bulk -> "
            "`reserved` (count), `exists`, `code_conflict` and `code_used` (parcel ids; "
            "`code_used`: a code hash spent or replaced at the hub before); door commands "
            "-> `compartment`.",
        ),
        "event": (
            "Something happened at the hub (a deposit, a pickup, an alarm, ...).",
            "Events leave the hub's outbox with a per-hub `seq` that starts at 1 and has "
            "no gaps. An event can arrive twice, or after a later one, around a "
            "reconnect: dedupe and order by `seq`. `id` is unique per event. `type` "
            "selects the event's schema and with it the shape of `data` (the `Event` "
            "union: one schema per type, every one with an example here). Events "
            "written while the hub was offline arrive after reconnection, oldest first.",
        ),
        "status": (
            "The hub's birth (`online`) and its last will (`offline`).",
            "Retained. Published as `online` on every (re)connection; the same topic is "
            "the MQTT will, `offline`, with the same `boot_seq` and the `at` of the "
            "connection. `boot_seq` grows by one per start of the hub: an `offline` with "
            "a `boot_seq` lower than the last `online` one is a stale will of an earlier "
            "run; ignore it.",
        ),
        "state": (
            "A snapshot of every compartment.",
            "Retained. Published on every (re)connection, after a sync.request, and when "
            "the compartments change (coalesced; never more often than "
            "`state_coalesce_s`). `alarms` counts the open alarms.",
        ),
    }
    for _, key, name, _ in HUB_MESSAGES:
        summary, description = about[key]
        out[key] = {
            "name": key,
            "title": name,
            "summary": summary,
            "description": description,
            "contentType": "application/json",
            "payload": {"$ref": SCHEMAS + name},
            "examples": [{"name": n, "payload": p} for n, p in ex[key]],
        }
    out["reply"]["correlationId"] = {"$ref": CORRELATION}
    return out


def _channels(messages: dict[str, Any]) -> dict[str, Any]:
    params = {
        "prefix": {"$ref": "#/components/parameters/prefix"},
        "hub": {"$ref": "#/components/parameters/hub"},
    }
    described = {
        "cmd": (
            "Commands, cloud -> hub",
            "Publish with QoS 1 and never retained (a retained command is refused with "
            "`retained`). Every command has a unique `id`: the hub applies it at most once "
            "and acknowledges (PUBACK) it only after its effect and its reply are "
            "committed, so with a persistent session a command is never lost and never "
            "applied twice.",
        ),
        "reply": (
            "Replies, hub -> cloud",
            "One reply per delivered command, by command `id`.",
        ),
        "evt": (
            "Events, hub -> cloud",
            "The hub's events, with a gapless per-hub `seq`; dedupe by `seq`.",
        ),
        "status": (
            "Birth and will, hub -> cloud (retained)",
            "`online` on every connection; the will says `offline` with the same `boot_seq`.",
        ),
        "state": (
            "Compartment snapshot, hub -> cloud (retained)",
            "Every compartment's state; republished on change.",
        ),
    }
    keys = {"cmd": list(command_models()), **{ch: [key] for ch, key, _, _ in HUB_MESSAGES}}
    out: dict[str, Any] = {}
    for channel, (title, description) in described.items():
        out[channel] = {
            "address": "{prefix}/{hub}/" + channel,
            "title": title,
            "description": description,
            "parameters": params,
            "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in keys[channel]},
        }
        assert all(k in messages for k in keys[channel])
    return out


def _operations(channels: dict[str, Any]) -> dict[str, Any]:
    def refs(channel: str) -> list[dict[str, str]]:
        return [
            {"$ref": f"#/channels/{channel}/messages/{k}"} for k in channels[channel]["messages"]
        ]

    out: dict[str, Any] = {
        "receiveCommand": {
            "action": "receive",
            "channel": {"$ref": "#/channels/cmd"},
            "title": "Receive a command",
            "summary": "The hub subscribes to its command topic (QoS 1, retain-as-published).",
            "description": "Acknowledged only after the command's effect is committed "
            "(a crash before that gets it redelivered; the inbox makes the redelivery do "
            "nothing again). Every command is answered on `reply`, by `id`.",
            "messages": refs("cmd"),
            "reply": {"channel": {"$ref": "#/channels/reply"}, "messages": refs("reply")},
            "bindings": _mqtt(1, False),
        }
    }
    verbs = {
        "reply": ("sendReply", "Send a reply"),
        "evt": ("sendEvent", "Send an event"),
        "status": ("sendStatus", "Send the birth (the will is the broker's)"),
        "state": ("sendState", "Send a compartment snapshot"),
    }
    for channel, key, _, _ in HUB_MESSAGES:
        op, title = verbs[channel]
        out[op] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "title": title,
            "summary": f"QoS 1{', retained' if channel in RETAINED else ''}.",
            "messages": refs(channel),
            "bindings": _mqtt(1, channel in RETAINED),
        }
        assert key in channels[channel]["messages"]
    return out


def _default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].default


def _pattern(model: type[BaseModel], field: str) -> str:
    return str(model.model_json_schema()["properties"][field]["pattern"])


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the hub <-> cloud contract."""
    messages = _messages()
    channels = _channels(messages)
    skew = _default(Cloud, "command_skew_s")
    life = _default(Cloud, "command_max_life_s")
    return {
        "asyncapi": "3.0.0",
        "id": "urn:lockerd:hub-cloud",
        "info": {
            "title": "lockerd hub <-> cloud",
            "version": c.CONTRACT_VERSION,
            "description": (
                "The contract between a lockerd hub and the operator's cloud over MQTT 5, "
                "generated from `lockerd/cloud/contract.py` (the models the hub itself "
                "parses and builds messages with) by `python -m tools.asyncapi`. The "
                "version is the contract's own (semantic: a new event type or optional "
                "field is a minor version), not the hub software's, which the birth "
                "message's `version` carries. Written from "
                "the hub's side: `send` is what the hub publishes, `receive` what it "
                "subscribes to. Every payload is one JSON object in UTF-8; every message "
                "is published with QoS 1. Times are integer Unix seconds in commands "
                "(they are signed) and float seconds in what the hub sends. Door-opening "
                f"commands are signed (Ed25519); defaults: lifetime at most {life:g} s, "
                f"clock skew {skew:g} s. Code hashes are HMAC-SHA256 with the hub's code "
                "key over the code's digits, lower-case hex. How-to and worked examples: "
                "docs/cloud-guide.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "{host}:{port}",
                "protocol": "mqtts",
                "protocolVersion": "5",
                "title": "The operator's MQTT 5 broker",
                "description": (
                    "`cloud.url` in the hub config: mqtts://HOST[:PORT] (TLS; a client "
                    "certificate per hub in production) or mqtt://HOST[:PORT]. The hub "
                    "keeps one persistent session: client id = the hub id (unless "
                    "`cloud.client_id`), clean start off, a session expiry, so commands "
                    "published while it is offline are delivered when it returns. The "
                    "broker's ACL should confine hub X to `{prefix}/X/#`."
                ),
                "variables": {
                    "host": {"description": "the broker's host name"},
                    "port": {"default": "8883", "description": "8883 (mqtts), 1883 (mqtt)"},
                },
                "security": [{"$ref": "#/components/securitySchemes/hubCertificate"}],
                "bindings": {
                    "mqtt": {
                        "cleanSession": False,
                        "keepAlive": _default(Cloud, "keepalive_s"),
                        "sessionExpiryInterval": _default(Cloud, "session_expiry_s"),
                        "lastWill": {
                            "topic": "{prefix}/{hub}/status",
                            "qos": 1,
                            "retain": True,
                            "message": "a `status` message: state `offline`, the `boot_seq` "
                            "of this run",
                        },
                        "bindingVersion": MQTT_BINDING,
                    }
                },
            }
        },
        "channels": channels,
        "operations": _operations(channels),
        "components": {
            "schemas": schemas(),
            "messages": messages,
            "correlationIds": {
                "commandId": {
                    "description": "A reply names the command it answers by `id`: the "
                    "command's `id`, or `unknown` when it could not be read. Replies come at "
                    "least once: a command gets one per delivery (`duplicate: true` on the "
                    "stored one, which can arrive before the original), and a reply the hub "
                    "published just before a crash is published again when it starts "
                    "(`duplicate: false`). Deduplicate replies by `id`.",
                    "location": "$message.payload#/id",
                }
            },
            "parameters": {
                "prefix": {
                    "default": _default(Cloud, "prefix"),
                    "description": "`cloud.prefix` in the hub config; pattern "
                    f"`{_pattern(Cloud, 'prefix')}`",
                    "examples": [_default(Cloud, "prefix")],
                },
                "hub": {
                    "description": "the hub id (`hub_id` in the hub config); pattern "
                    f"`{_pattern(HubConfig, 'hub_id')}`",
                    "examples": [EXAMPLE_HUB],
                },
            },
            "securitySchemes": {
                "hubCertificate": {
                    "type": "X509",
                    "description": "TLS client certificate, one per hub "
                    "(`cloud.cert_file`, `cloud.key_file`); optionally also a username "
                    "and password (`cloud.username`, `cloud.password_file`).",
                }
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.asyncapi", description="write (or check) docs/asyncapi.json"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=DOC_PATH, help="default: %(default)s")
    ns = parser.parse_args(argv)
    out: Path = ns.out
    text = render(document())
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    if ns.check:
        if old == text:
            return 0
        diff = list(
            difflib.unified_diff(
                old.splitlines(),
                text.splitlines(),
                f"{out} (committed)",
                f"{out} (generated)",
                lineterm="",
                n=2,
            )
        )
        shown = "\n".join(diff[:60]) + (
            f"\n... {len(diff) - 60} more lines" if len(diff) > 60 else ""
        )
        print(shown, file=sys.stderr)
        print(
            f"{out} differs from lockerd/cloud/contract.py: run `python -m tools.asyncapi` "
            "and commit the result",
            file=sys.stderr,
        )
        return 1
    if old != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    else:
        print(f"{out} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DOC_PATH",
    "WorkedExample",
    "command_models",
    "document",
    "event_examples",
    "event_table",
    "examples",
    "expired_message",
    "main",
    "render",
    "schemas",
    "worked_example",
]
