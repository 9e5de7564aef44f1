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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
HubId = Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
# a command's or an event's type: dotted lower-case names (`parcel.reserve`)
TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}$"
TypeName = Annotated[str, Field(max_length=131, pattern=TYPE_PATTERN)]
SizeClass = Literal["S", "M", "L", "XL"]
# (up to 2100: a larger integer would overflow a float, or mean nothing)
UnixTime = Annotated[
    int, Field(ge=0, le=4_102_444_800, description="Unix time, whole seconds, before 2100")
]


class _Msg(BaseModel):
    # strict: what the published schema refuses ("42" for a number, 1 for a bool), the
    # hub refuses too
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ======================================================================================
# Commands: cloud -> hub
# ======================================================================================


class _Command(_Msg):
    id: Id = Field(description="unique per command; a redelivery with the same id does nothing")
    hub: HubId = Field(description="the hub the command is for; any other hub refuses it")
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

# commands that grant or change who can open what: refused unless signed by the cloud
SIGNED = frozenset(
    {
        "parcel.reserve",
        "return.reserve",
        "parcel.update_codes",
        "parcel.recall",
        "codes.bulk",
        "compartment.open",
    }
)
# ... of which these open a door at once: short-lived (``command_max_life_s``); the
# others are grants sent ahead (``grant_max_life_s``)
OPENS_NOW = frozenset({"compartment.open"})


# ======================================================================================
# Hub -> cloud
# ======================================================================================


class Reply(_Msg):
    id: Id = Field(description="the command's id")
    hub: HubId
    type: TypeName = Field(description="the command's type, or `unknown` if it could not be read")
    ok: bool
    status: str = Field(
        max_length=32,
        pattern=r"^[a-z_]+$",
        description="`ok`, `opened`, `jammed`, ..., or why it was refused",
    )
    message: str = Field(default="", max_length=1000)
    result: dict[str, Any] = Field(default_factory=dict)
    duplicate: bool = Field(
        default=False, description="a redelivery: the stored reply, nothing was done again"
    )
    at: float


class EventMessage(_Msg):
    hub: HubId
    seq: int = Field(ge=1, description="per hub, gapless, in order; dedupe by it")
    id: str = Field(max_length=64, description="unique event id")
    type: TypeName
    at: float
    data: dict[str, Any]


class Status(_Msg):
    hub: HubId
    state: Literal["online", "offline"]
    boot_seq: int = Field(
        ge=1,
        description="grows by one per start; an offline will older than the last birth is stale",
    )
    at: float
    version: str = Field(max_length=32)


class CompartmentState(_Msg):
    label: Label
    size: SizeClass
    state: Literal["free", "occupied", "in_use", "attention", "out_of_service"]
    door_open: bool


class StateSnapshot(_Msg):
    hub: HubId
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
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # (a lone surrogate no signer could have meant gets bytes all the same: the
    # signature check then fails, where an encoding error would be a fault)
    return text.encode("utf-8", "surrogatepass")


def canonical_model(command: BaseModel) -> bytes:
    """:func:`canonical` of a command validated straight from its JSON bytes (the big
    ``codes.bulk`` fast path builds no dict): the same bytes as ``canonical`` of the
    dict ``json.loads`` makes of the same JSON. The models are strict and forbid extra
    fields, so every field sent is in the model, with the JSON type it was sent as;
    ``exclude_unset`` leaves out exactly the defaults that were not sent (an explicit
    ``null`` or default value was sent, so it is kept)."""
    return canonical(command.model_dump(exclude_unset=True))


def sign(command: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """``command`` with ``sig``: the cloud's Ed25519 signature (standard base64) of its
    canonical bytes (an old ``sig`` is replaced, never signed over). What the cloud
    does for every command in :data:`SIGNED`; tests, benches and ``lockerctl cloud``
    sign with it."""
    sig = private_key.sign(canonical(command))
    return {**command, "sig": base64.b64encode(sig).decode()}


def decode_sig(sig: str) -> bytes | None:
    try:
        return base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None


__all__ = [
    "BULK_MAX",
    "COMMAND",
    "OPENS_NOW",
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
    "canonical_model",
    "decode_sig",
    "sign",
    "valid_id",
]
