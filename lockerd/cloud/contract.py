"""The hub <-> cloud contract over MQTT: every message as a pydantic model.

One definition serves the code (parsing commands, building replies and events)
and the published document (``docs/asyncapi.json``, generated from these models by
``python -m tools.asyncapi``; a test fails when the two disagree).

Topics, under a configurable prefix (default ``lockers``):

- ``{prefix}/{hub}/cmd``    cloud -> hub, QoS 1, never retained: :data:`Command`
- ``{prefix}/{hub}/reply``  hub -> cloud, QoS 1: :class:`Reply`, one per delivery
- ``{prefix}/{hub}/evt``    hub -> cloud, QoS 1: :class:`EventMessage`, gapless ``seq``
- ``{prefix}/{hub}/status`` hub -> cloud, QoS 1, retained: :class:`Status` (also the will)
- ``{prefix}/{hub}/state``  hub -> cloud, QoS 1, retained: :class:`StateSnapshot`

Times are integer Unix seconds in commands (they are signed: integers have one
canonical JSON form) and float seconds in what the hub sends.

The contract has a version of its own, :data:`CONTRACT_VERSION` (semantic
versioning: a new event type or an optional field is a minor version, anything a
client written to the old one would refuse or misread is a major one), apart from the
package's version that the hub's birth message carries.

Closed vocabularies (event types, reply statuses, refusal reasons) come from
:mod:`lockerd.hub.vocab`; every event type has the model of its ``data`` here
(:data:`EVENT_DATA`), and :data:`Event` is the discriminated union (by ``type``) of
the events as the cloud receives them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import operator
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, create_model

from lockerd.hub.vocab import (
    ALARM_KINDS,
    EVENT_TYPES,
    TELEMETRY_KINDS,
    EventType,
    RefusalReason,
    ReplyStatus,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# the contract's own version (docs/asyncapi.json's info.version); see the docstring
CONTRACT_VERSION = "1.2.0"

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


LABEL_PATTERN = r"^[A-Z]{1,3}[0-9]{1,3}$"
Label = Annotated[str, Field(pattern=LABEL_PATTERN)]
HubId = Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
# a command's or an event's type: dotted lower-case names (`parcel.reserve`)
TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}$"
TypeName = Annotated[str, Field(max_length=131, pattern=TYPE_PATTERN)]
# the hub's own enums' values (lockerd.hub.domain: Size, Purpose, Kind, CompartmentState),
# spelt out: the schema is inline strings, and mypy takes no Literal built from an enum;
# a test keeps each equal to its enum (tests/lockerd/test_contract.py)
SizeClass = Literal["S", "M", "L", "XL"]  # d.Size
PurposeName = Literal["deposit", "collect", "recall", "service"]  # d.Purpose
KindName = Literal["delivery", "return"]  # d.Kind
CompartmentStateName = Literal[  # d.CompartmentState
    "free", "occupied", "in_use", "attention", "out_of_service"
]
# (up to 2100: a larger integer would overflow a float, or mean nothing). Strict: a
# JSON integer and nothing else (never "1767225600", never 1767225600.0); a command
# carrying another type is refused as malformed (the schema says the same)
UnixTime = Annotated[
    int,
    Strict(),
    Field(ge=0, le=4_102_444_800, description="Unix time, whole seconds, before 2100"),
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
        default=None,
        description="required on signed commands, optional on the others; any command "
        "that arrives more than `command_skew_s` after this time is refused (`expired`) "
        "and nothing is done",
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
    pickup_window_s: int | None = Field(
        default=None,
        gt=0,
        le=90 * 86_400,
        description="how long the parcel waits for its collector once deposited, seconds; "
        "absent (or `null`): the hub's own default, `[timers] pickup_window_h` in its config "
        "(72 h unless set)",
    )
    accessible: bool = Field(default=False, description="needs a compartment within reach")
    kind: KindName = "delivery"


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
COMMAND: TypeAdapter[Command] = TypeAdapter(Command)

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
    status: ReplyStatus = Field(
        description="how it went: `ok`, `opened`, `already_open` (with `ok: true`); "
        "`jammed`, `failed`, `refused`, `interrupted`, `quarantined`, or why the command "
        "was refused before anything was done (`malformed`, `wrong_hub`, ...). `opening` "
        "and `wait` are never published (`opening` is kept at the hub while a remote "
        "open is under way; `wait` is the keypad's)"
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


# ======================================================================================
# Events: the `data` of each event type
# ======================================================================================


def _absent(description: str) -> Any:
    """A field the hub leaves out (never ``null``) when it does not apply."""

    def no_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)

    return Field(default=None, description=description, json_schema_extra=no_default)


# the hub cuts every string it puts into an event at 256 characters (lockerd.hub.jsonsafe)
Text = Annotated[str, Field(max_length=256)]
Seconds = Annotated[float, Field(ge=0)]

_PARCEL = "the parcel's id (as the cloud reserved it)"
_COMPARTMENT = "the compartment's label"
_BY = "who asked: a keypad's terminal, `cloud:<command id>`, a technician's name, ..."
_PURPOSE = "what the door was opened for: `deposit`, `collect`, `recall` or `service`"
_BOARD = "the lock board: `<kind>@<address>`, e.g. `cu48@1`"
_OP_PARCEL = "the parcel the door was opened for; `null` for a service open of an empty one"


class _Data(BaseModel):
    """An event's ``data``: strict and closed, as the hub builds it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ParcelData(_Data):
    parcel: Id = Field(description=_PARCEL)


class _ParcelInCompartment(_ParcelData):
    compartment: Label = Field(description=_COMPARTMENT)


class _CompartmentData(_Data):
    compartment: Label = Field(description=_COMPARTMENT)


class _Operation(_CompartmentData):
    purpose: PurposeName = Field(description=_PURPOSE)
    parcel: Id | None = Field(description=_OP_PARCEL)


# -------------------------------------------------------------------------- parcels


class ParcelReservedData(_ParcelData):
    """A reservation was stored: one per parcel, whether it came in a `parcel.reserve`,
    a `return.reserve` or a `codes.bulk` (whose reply also counts them). Its codes work
    from `deposit_from`."""

    kind: KindName
    size: SizeClass


class ParcelCodesChangedData(_ParcelData):
    """A parcel's code hashes were replaced (`parcel.update_codes`) or a recall code was
    given (`parcel.recall`). The old codes no longer work."""

    purposes: list[Literal["deposit", "collect", "recall"]] = Field(
        max_length=3, description="the codes replaced, sorted"
    )


class ParcelCancelledData(_ParcelData):
    """A reservation was cancelled (`parcel.cancel`) before its deposit. Its codes are
    dead. Not sent again for a cancel of a cancelled parcel."""


class ReservationExpiredData(_ParcelData):
    """A reservation passed its `deposit_until` without a deposit: it ended (the parcel
    is cancelled, its codes are dead, its id may be pruned). Sent once."""


class ParcelExpiredData(_ParcelInCompartment):
    """A stored parcel passed its pickup window: its pickup code no longer opens; only a
    recall (a recall code, or a technician's `empty-expired`) does."""


# -------------------------------------------------------------------------- a parcel's way


class DepositedData(_ParcelInCompartment):
    """A delivery was deposited: the carrier shut the door (and the occupancy sensor, if
    any, saw the parcel). The resident's pickup code works until `collect_until`."""

    collect_until: Seconds = Field(description="Unix time: the pickup window's end")


class ReturnDepositedData(DepositedData):
    """A return was deposited by the resident: the carrier's code works until
    `collect_until`."""


class DepositAbandonedData(_ParcelInCompartment):
    """The door of a deposit was shut but the occupancy sensor saw nothing inside: the
    reservation stands (its deposit code works again), the compartment is free."""


class CollectedData(_ParcelInCompartment):
    """A delivery was collected: the resident shut the door. The parcel's codes are spent."""


class ReturnCollectedData(_ParcelInCompartment):
    """A return was collected by the carrier. The parcel's codes are spent."""


class RecalledData(_ParcelInCompartment):
    """An expired delivery was taken back (the carrier's recall code, or a technician's
    `empty-expired`). The parcel's codes are spent."""


class CollectNotTakenData(_ParcelInCompartment):
    """The door of a pickup or recall was shut with the parcel still inside (the
    occupancy sensor says so): the parcel stays, its code still works."""


# -------------------------------------------------------------------------- doors


class DoorOpenRequestedData(_Operation):
    """A door is about to be unlocked: a code was accepted at a keypad, a technician
    opened one, or a `compartment.open` was accepted."""

    parcel: Id | None = Field(
        description="the parcel it opens for; `null` for a service open of an empty one"
    )
    by: Text = Field(description=_BY)
    reason: Text = _absent("only for `purpose` `service`: why the technician opened it")


class DoorOpenedData(_Operation):
    """The door asked for was seen open."""


class DoorShutData(_CompartmentData):
    """The door of an operation was seen shut again. It follows the event that says what
    was done (`deposited`, `collected`, `service_door_shut`, ...)."""


class ServiceDoorShutData(_CompartmentData):
    """A door opened for service (a technician's open, or a `compartment.open`) was
    shut again."""


class DoorNotOpenedData(_Operation):
    """The unlock never went out (bus or board failure): nothing was opened and the
    operation is undone (a code stays good)."""


class DoorJammedData(_Operation):
    """The lock was pulsed but the door was not seen open in time: the operation
    is undone and the compartment is out of service until a technician checks it."""


class DoorLeftOpenData(_Operation):
    """A door stayed open longer than `timers.left_open_alarm_s` since it was asked
    open."""

    open_s: Seconds = Field(description="how long it has been open, seconds (0.1 s)")


class ForcedOpenData(_CompartmentData):
    """A door was seen open with nothing asked: forced, or a faulty lock. The
    compartment needs a look (`attention`) until a technician or a sensor says what it
    holds."""

    parcel: Id | None = Field(description="the parcel recorded in it, if any")


class OpenInterruptedData(_Operation):
    """At start-up: an open was under way when the hub stopped and its door is shut
    now. Whether it opened is unknown: the operation is undone (a deposit's code works
    again) and the compartment needs a look."""


class OccupancyMismatchData(_CompartmentData):
    """The occupancy sensor of a shut, idle door disagrees with the store:
    something in a compartment recorded empty (it is kept out of allocation), or a
    recorded parcel the sensor does not see (left for a person to check)."""

    parcel: Id = _absent("only when `store` is `parcel`: the parcel recorded there")
    store: Literal["empty", "parcel"] = Field(description="what the hub had recorded")
    sensor: Literal["occupied", "empty"] = Field(description="what the sensor says")


# -------------------------------------------------------------------------- technicians


class CompartmentServiceData(_CompartmentData):
    """A compartment was taken out of service or put back (a technician, or
    `compartment.set_service`). A flip and a flip back before the event was sent are
    one event with the final state."""

    in_service: bool
    by: Text = Field(description=_BY)


class CompartmentInspectedData(_CompartmentData):
    """A technician said what a compartment needing a look holds."""

    holds_parcel: bool
    by: Text = Field(description=_BY)


# -------------------------------------------------------------------------- the hub itself


class BoardOfflineData(_Data):
    """A lock board stopped answering: its doors are not watched (and cannot be
    opened) until it answers again."""

    board: Text = Field(description=_BOARD)
    error: Text


class BoardOnlineData(_Data):
    """A board answers again: its doors are watched again, and the hub closes the
    board's open `board_offline` alarm itself."""

    board: Text = Field(description=_BOARD)


class SensorFaultData(_Data):
    """A door sensor changes too often (flapping): check its cable and switch.
    Its changes keep being reported."""

    board: Text = Field(description=_BOARD)
    channel: int = Field(ge=1, description="the board's channel (1-based)")
    compartment: Label | None = Field(description="the compartment on it; `null` if none")
    changes: int = Field(ge=1, description="changes seen within the flapping window")


class CodeGuessingData(_Data):
    """One terminal entered too many wrong codes within the window: it is being
    slowed down."""

    terminal: Text = Field(description="the keypad or kiosk")
    wrong: int = Field(ge=1, description="wrong codes within the window")
    window_s: Seconds


class CodeGuessingHubWideData(_Data):
    """Too many wrong codes at the hub as a whole within the window (guessing
    spread over terminals)."""

    wrong: int = Field(ge=1, description="wrong codes within the window")
    window_s: Seconds


class DiskFullData(_Data):
    """The hub's disk is full: its reserve was freed so that pickups and opens go
    on, and new reservations are refused until there is room."""

    path: Text = Field(description="the directory of the hub's store")


class OutboxQuotaReachedData(_Data):
    """The events waiting for the cloud passed the outbox quota
    (`cloud.outbox_quota_mb`): from now on telemetry and repeats of open alarms are not
    queued (they never take a `seq`)."""

    bytes: int = Field(ge=0, description="the outbox's size")
    quota: int = Field(ge=0, description="the quota, bytes")


class OutboxFullData(_Data):
    """The outbox reached its hard ceiling (twice the quota): new reservations and
    service changes are refused until the cloud has taken the events."""

    bytes: int = Field(ge=0, description="the outbox's size")
    ceiling: int = Field(ge=0, description="the ceiling, bytes")


class MessageQuarantinedData(_Data):
    """The hub failed to handle a message (a fault of the hub's): it was set aside
    (the cloud got a `quarantined` reply) and is never retried."""

    source: Text = Field(description="where it came from: `cloud`")
    ref: Id | None = Field(description="the command's id, `null` if it had none")
    error: Text = Field(max_length=200)
    bytes: int = Field(ge=0, description="the message's size")


class CommandRefusedData(_Data):
    """A command was refused before anything was done (the reply says the same)."""

    command: Id | None = Field(description="the command's id, `null` if it could not be read")
    type: Text = Field(
        description="the command's type as read (`unknown` if it could not be read); "
        "a command type, but a row an older hub version stored may hold other text"
    )
    reason: RefusalReason


EVENT_DATA: dict[EventType, type[BaseModel]] = {
    "parcel_reserved": ParcelReservedData,
    "parcel_codes_changed": ParcelCodesChangedData,
    "parcel_cancelled": ParcelCancelledData,
    "reservation_expired": ReservationExpiredData,
    "parcel_expired": ParcelExpiredData,
    "deposited": DepositedData,
    "return_deposited": ReturnDepositedData,
    "deposit_abandoned": DepositAbandonedData,
    "collected": CollectedData,
    "return_collected": ReturnCollectedData,
    "recalled": RecalledData,
    "collect_not_taken": CollectNotTakenData,
    "door_open_requested": DoorOpenRequestedData,
    "door_opened": DoorOpenedData,
    "door_shut": DoorShutData,
    "service_door_shut": ServiceDoorShutData,
    "door_not_opened": DoorNotOpenedData,
    "door_jammed": DoorJammedData,
    "door_left_open": DoorLeftOpenData,
    "forced_open": ForcedOpenData,
    "open_interrupted": OpenInterruptedData,
    "occupancy_mismatch": OccupancyMismatchData,
    "compartment_service": CompartmentServiceData,
    "compartment_inspected": CompartmentInspectedData,
    "board_offline": BoardOfflineData,
    "board_online": BoardOnlineData,
    "sensor_fault": SensorFaultData,
    "code_guessing": CodeGuessingData,
    "code_guessing_hub_wide": CodeGuessingHubWideData,
    "disk_full": DiskFullData,
    "outbox_quota_reached": OutboxQuotaReachedData,
    "outbox_full": OutboxFullData,
    "message_quarantined": MessageQuarantinedData,
    "command_refused": CommandRefusedData,
}


def _envelope(type_: EventType, data: type[BaseModel]) -> type[EventMessage]:
    """The event of one type as the cloud receives it: :class:`EventMessage` with its
    ``type`` fixed and its ``data`` the type's model."""
    name = data.__name__.removesuffix("Data") + "Event"
    fields: dict[str, Any] = {"type": (Literal[type_], ...), "data": (data, ...)}
    doc = " ".join((data.__doc__ or "").split())
    if type_ in ALARM_KINDS:
        doc += " Raises an alarm (one open alarm per type and target until acknowledged)."
    if type_ in TELEMETRY_KINDS:
        doc += " Telemetry: not queued for the cloud while the outbox is past its quota."
    model: type[EventMessage] = create_model(
        name, __base__=EventMessage, __doc__=f"A `{type_}` event. {doc}", **fields
    )
    return model


EVENT_MODELS: dict[EventType, type[EventMessage]] = {
    t: _envelope(t, EVENT_DATA[t]) for t in EVENT_TYPES
}
# any event, by its `type` (what the cloud receives on `evt`)
Event: Any = Annotated[
    functools.reduce(operator.or_, EVENT_MODELS.values()), Field(discriminator="type")
]
EVENT: TypeAdapter[Any] = TypeAdapter(Event)


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
    state: CompartmentStateName
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
