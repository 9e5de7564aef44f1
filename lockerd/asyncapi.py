"""The hub <-> cloud contract as an AsyncAPI 3.0 document, generated from lockerd.contract.

``python -m lockerd.asyncapi`` writes ``docs/asyncapi.json``; ``--check`` exits 1 when
the committed file differs from what the code generates (a test does the same).

The payload schemas come from the very pydantic models the hub parses commands with
and builds its messages from (``TypeAdapter.json_schemas``, one shared set of
definitions under ``components.schemas``). The document is written from the hub's
side: ``send`` is what the hub publishes, ``receive`` what it subscribes to. Channel
addresses are ``{prefix}/{hub}/...`` with two parameters: ``prefix`` (``cloud.prefix``
in the hub config, default ``lockers``) and ``hub`` (the hub id).

:func:`worked_example` computes the code hash and the signed command quoted in
``docs/cloud-guide.md``; a test checks the guide quotes exactly these values.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from lockerd import contract as c
from lockerd.cloud import VERSION
from lockerd.codes import CodeHasher
from lockerd.config import Cloud, HubConfig

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
SCHEMAS = "#/components/schemas/"
MQTT_BINDING = "0.2.0"

# hub -> cloud: (channel, message key, model)
HUB_MESSAGES: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("reply", "reply", c.Reply),
    ("evt", "event", c.EventMessage),
    ("status", "status", c.Status),
    ("state", "state", c.StateSnapshot),
)
RETAINED = frozenset({"status", "state"})

COMMAND_SUMMARY: dict[str, str] = {
    "parcel.reserve": "Reserve a compartment for a delivery: the carrier's deposit code "
    "and the resident's pickup code.",
    "return.reserve": "Reserve a compartment for a return: the resident deposits, the "
    "carrier picks up.",
    "parcel.cancel": "Cancel a reservation that has not been deposited yet.",
    "parcel.update_codes": "Replace the deposit and/or pickup code of a parcel.",
    "parcel.recall": "Let the carrier take an expired parcel back with a recall code.",
    "compartment.open": "Open one compartment now, remotely.",
    "compartment.set_service": "Take a compartment out of service, or put it back.",
    "sync.request": "Ask for a full state report: the reply's `result` is a state "
    "snapshot, and a fresh snapshot is published on `state`.",
    "codes.bulk": "Reserve many parcels with one command.",
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
                    "message": "signature check failed",
                    "result": {},
                    "duplicate": False,
                    "at": t + 12.0,
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
        "event": [
            (
                "parcel reserved",
                {
                    "hub": EXAMPLE_HUB,
                    "seq": 41,
                    "id": "2f1c7b1e-5d0a-4c1e-9a51-8e2b7c3d9f10",
                    "type": "parcel_reserved",
                    "at": t + 0.5,
                    "data": {"parcel": "P-1001", "kind": "delivery", "size": "M"},
                },
            ),
            (
                "deposited",
                {
                    "hub": EXAMPLE_HUB,
                    "seq": 42,
                    "id": "8a0d5e62-0c4b-4f7e-b3a2-51d9c6e4a7b3",
                    "type": "deposited",
                    "at": t + 3600.0,
                    "data": {
                        "compartment": "A05",
                        "parcel": "P-1001",
                        "collect_until": t + 262_800.0,
                    },
                },
            ),
        ],
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
    models: dict[str, Any] = {key: model for _, key, model in HUB_MESSAGES}
    for key, items in out.items():
        for _, payload in items:
            if key in models:
                models[key].model_validate(payload)
            else:
                assert c.COMMAND.validate_python(payload).type == key
    return out


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
    ``discriminator`` object is dropped (in AsyncAPI it is a property name with another
    meaning; JSON Schema validators ignore it anyway)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = SCHEMAS + v.removeprefix("#/$defs/")
            elif k == "discriminator" and isinstance(v, dict):
                continue
            else:
                out[k] = _fix_refs(v)
        return out
    if isinstance(node, list):
        return [_fix_refs(v) for v in node]
    return node


def schemas() -> dict[str, Any]:
    """components.schemas: every model, plus ``Command`` (the union of all commands)."""
    mode: JsonSchemaMode = "validation"
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        ("Command", mode, c.COMMAND),
        *((m.__name__, mode, TypeAdapter(m)) for _, _, m in HUB_MESSAGES),
    ]
    tops, defs = TypeAdapter.json_schemas(inputs, ref_template=SCHEMAS + "{model}")
    out: dict[str, Any] = dict(defs.get("$defs", {}))
    command = dict(tops[("Command", mode)])
    command["title"] = "Command"
    command["description"] = "Any command; `type` selects which: " + ", ".join(
        f"`{t}` ({m.__name__})" for t, m in command_models().items()
    )
    out["Command"] = command
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
            "reconnect: dedupe and order by `seq`. `id` is unique per event; `data` "
            "depends on `type`. Events written while the hub was offline arrive after "
            "reconnection, oldest first.",
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
    for _, key, model in HUB_MESSAGES:
        summary, description = about[key]
        out[key] = {
            "name": key,
            "title": model.__name__,
            "summary": summary,
            "description": description,
            "contentType": "application/json",
            "payload": {"$ref": SCHEMAS + model.__name__},
            "examples": [{"name": n, "payload": p} for n, p in ex[key]],
        }
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
    keys = {"cmd": list(command_models()), **{ch: [key] for ch, key, _ in HUB_MESSAGES}}
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
    for channel, key, _ in HUB_MESSAGES:
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
            "version": VERSION,
            "description": (
                "The contract between a lockerd hub and the operator's cloud over MQTT 5, "
                "generated from `lockerd/contract.py` (the models the hub itself parses "
                "and builds messages with) by `python -m lockerd.asyncapi`. Written from "
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
        prog="python -m lockerd.asyncapi", description="write (or check) docs/asyncapi.json"
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
            f"{out} differs from lockerd/contract.py: run `python -m lockerd.asyncapi` "
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
    "examples",
    "main",
    "render",
    "schemas",
    "worked_example",
]
