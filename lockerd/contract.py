"""The hub <-> cloud contract over MQTT: every message as a pydantic model.

One definition serves the code (parsing commands, building replies and events)
and the published document (``docs/asyncapi.json``, generated from these models by
``python -m lockerd.asyncapi``; a test fails when the two disagree).

Topics, under a configurable prefix (default ``lockers``):

- ``{prefix}/{hub}/cmd``    cloud -> hub, QoS 1, never retained: :data:`Command`
- ``{prefix}/{hub}/reply``  hub -> cloud, QoS 1: :class:`Reply`, one per delivery
- ``{prefix}/{hub}/evt``    hub -> cloud, QoS 1: :class:`EventMessage`, gapless ``seq``
- ``{prefix}/{hub}/status`` hub -> cloud, QoS 1, retained: :class:`Status` (also the will)
- ``{prefix}/{hub}/state``  hub -> cloud, QoS 1, retained: :class:`StateSnapshot`

Times are integer Unix seconds in commands (they are signed: integers have one
canonical JSON form) and float seconds in what the hub sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

CodeHash = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256 of the code's digits with the hub's code key, lower-case hex",
    ),
]
ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]


def valid_id(value: object) -> str | None:
    """``value`` if it is a usable command id, else ``None``."""
    if isinstance(value, str) and 0 < len(value) <= 64 and re.fullmatch(ID_PATTERN, value):
        return value
    return None


Label = Annotated[str, Field(pattern=r"^[A-Z]{1,3}[0-9]{1,3}$")]
SizeClass = Literal["S", "M", "L", "XL"]
UnixTime = Annotated[int, Field(ge=0, description="Unix time, whole seconds")]


class _Msg(BaseModel):
    # strict: what the published schema refuses ("42" for a number, 1 for a bool), the
    # hub refuses too
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ======================================================================================
# Commands: cloud -> hub
# ======================================================================================


class _Command(_Msg):
    id: Id = Field(description="unique per command; a redelivery with the same id does nothing")
    hub: str = Field(description="the hub the command is for; any other hub refuses it")
    issued_at: UnixTime
    expires_at: UnixTime | None = Field(
        default=None, description="required on signed commands; refused after this time"
    )
    sig: str | None = Field(
        default=None,
        description="Ed25519 signature (base64) of the canonical command without `sig`: "
        "JSON, keys sorted, no spaces, UTF-8",
    )


class Reservation(_Msg):
    """One parcel to be deposited (by a carrier, or by a resident for a return)."""

    parcel: Id
    size: SizeClass
    deposit_code_hash: CodeHash = Field(description="carrier's code; for a return, resident's")
    pickup_code_hash: CodeHash = Field(description="resident's code; for a return, carrier's")
    recall_code_hash: CodeHash | None = Field(
        default=None, description="carrier's code to take an expired parcel back"
    )
    deposit_from: UnixTime
    deposit_until: UnixTime
    pickup_window_s: int = Field(default=72 * 3600, gt=0, le=90 * 86_400)
    accessible: bool = Field(default=False, description="needs a compartment within reach")
    kind: Literal["delivery", "return"] = "delivery"


class ParcelReserve(_Command, Reservation):
    type: Literal["parcel.reserve"]
    kind: Literal["delivery"] = "delivery"


class ReturnReserve(_Command, Reservation):
    type: Literal["return.reserve"]
    kind: Literal["return"] = "return"


class ParcelCancel(_Command):
    type: Literal["parcel.cancel"]
    parcel: Id


class ParcelUpdateCodes(_Command):
    type: Literal["parcel.update_codes"]
    parcel: Id
    deposit_code_hash: CodeHash | None = None
    pickup_code_hash: CodeHash | None = None


class ParcelRecall(_Command):
    type: Literal["parcel.recall"]
    parcel: Id
    recall_code_hash: CodeHash


class CompartmentOpen(_Command):
    """A remote open (support, the mobile app). Must be signed and short-lived."""

    type: Literal["compartment.open"]
    compartment: Label
    reason: str = Field(min_length=1, max_length=500)


class CompartmentSetService(_Command):
    type: Literal["compartment.set_service"]
    compartment: Label
    in_service: bool


class SyncRequest(_Command):
    type: Literal["sync.request"]


BULK_MAX = 2000


class CodesBulk(_Command):
    """Many reservations at once (first sync, recovery); every reservation's fate is in
    the reply. At most 2,000 per command (about 600 kB: under the 1 MB message limit
    common on fleet brokers, and small enough to parse without stalling door
    handling); a first sync of 100,000 parcels is 50 commands."""

    type: Literal["codes.bulk"]
    reservations: list[Reservation] = Field(max_length=BULK_MAX)


Command = Annotated[
    ParcelReserve
    | ReturnReserve
    | ParcelCancel
    | ParcelUpdateCodes
    | ParcelRecall
    | CompartmentOpen
    | CompartmentSetService
    | SyncRequest
    | CodesBulk,
    Field(discriminator="type"),
]
COMMAND: TypeAdapter[Any] = TypeAdapter(Command)

SIGNED = frozenset({"compartment.open"})  # commands that open a door


# ======================================================================================
# Hub -> cloud
# ======================================================================================


class Reply(_Msg):
    id: Id = Field(description="the command's id")
    hub: str
    type: str = Field(description="the command's type, or `unknown` if it could not be read")
    ok: bool
    status: str = Field(description="`ok`, `opened`, `jammed`, ..., or why it was refused")
    message: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    duplicate: bool = Field(
        default=False, description="a redelivery: the stored reply, nothing was done again"
    )
    at: float


class EventMessage(_Msg):
    hub: str
    seq: int = Field(ge=1, description="per hub, gapless, in order; dedupe by it")
    id: str = Field(description="unique event id")
    type: str
    at: float
    data: dict[str, Any]


class Status(_Msg):
    hub: str
    state: Literal["online", "offline"]
    boot_seq: int = Field(
        ge=1,
        description="grows by one per start; an offline will older than the last birth is stale",
    )
    at: float
    version: str


class CompartmentState(_Msg):
    label: str
    size: SizeClass
    state: Literal["free", "occupied", "in_use", "attention", "out_of_service"]
    door_open: bool


class StateSnapshot(_Msg):
    hub: str
    at: float
    compartments: list[CompartmentState]
    alarms: int = Field(ge=0, description="open alarms")


# ======================================================================================
# Signing
# ======================================================================================


def canonical(command: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the command without ``sig``, keys sorted, no
    whitespace, UTF-8 (integers only for numbers, so every language agrees)."""
    body = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_sig(sig: str) -> bytes | None:
    try:
        return base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None


__all__ = [
    "BULK_MAX",
    "COMMAND",
    "SIGNED",
    "CodesBulk",
    "Command",
    "CompartmentOpen",
    "CompartmentSetService",
    "CompartmentState",
    "EventMessage",
    "ParcelCancel",
    "ParcelRecall",
    "ParcelReserve",
    "ParcelUpdateCodes",
    "Reply",
    "Reservation",
    "ReturnReserve",
    "StateSnapshot",
    "Status",
    "SyncRequest",
    "canonical",
    "decode_sig",
    "valid_id",
]
