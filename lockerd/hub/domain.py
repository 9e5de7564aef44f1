"""The hub's rules: parcels, compartments, codes' purposes, and what a door event means.

Pure: no I/O, no clock (time is passed in), no asyncio, no SQLite. Every function
takes the few objects an action touches (one parcel, its compartment, the free
compartments for an allocation) and returns new objects and the events the change
causes; the store persists them together (docs/architecture.md: the hub layer).

A compartment is always in exactly one :class:`CompartmentState`, derived from
three facts: in service or not, what it holds (nothing, a parcel, or *unknown*),
and whether an operation (a door opened for someone) is in progress. *Unknown*
is how the hub stays truthful: after a forced door, or a carrier who walked away
without a sensor to tell, the compartment is neither "empty" nor "full" until a
technician (or an occupancy sensor) says which.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lockerd.hub.vocab import EventType


class Size(enum.StrEnum):
    S = "S"
    M = "M"
    L = "L"
    XL = "XL"

    @property
    def rank(self) -> int:
        return _SIZE_RANK[self]


_SIZE_RANK = {Size.S: 0, Size.M: 1, Size.L: 2, Size.XL: 3}


class Kind(enum.StrEnum):
    DELIVERY = "delivery"  # carrier deposits, resident collects (or carrier recalls)
    RETURN = "return"  # resident deposits, carrier collects


class ParcelState(enum.StrEnum):
    RESERVED = "reserved"  # deposit code valid; no compartment yet
    DEPOSITING = "depositing"  # a compartment was opened for the deposit
    STORED = "stored"  # deposit confirmed (door shut); collect code valid
    COLLECTING = "collecting"  # the door was opened for the collector
    COLLECTED = "collected"  # final: taken out, door shut, code spent
    EXPIRED = "expired"  # stored past its window; only a recall opens it
    RECALLING = "recalling"  # the door was opened for the carrier's recall
    RECALLED = "recalled"  # final: the carrier took it back
    CANCELLED = "cancelled"  # final: cancelled before it was deposited


FINAL = frozenset({ParcelState.COLLECTED, ParcelState.RECALLED, ParcelState.CANCELLED})
IN_COMPARTMENT = frozenset(
    {
        ParcelState.DEPOSITING,
        ParcelState.STORED,
        ParcelState.COLLECTING,
        ParcelState.EXPIRED,
        ParcelState.RECALLING,
    }
)


class Purpose(enum.StrEnum):
    """What a code (or a technician) opens a door for."""

    DEPOSIT = "deposit"  # delivery: the carrier; return: the resident
    COLLECT = "collect"  # delivery: the resident (pickup code); return: the carrier
    RECALL = "recall"  # delivery: the carrier takes an expired parcel back
    SERVICE = "service"  # a technician


class Content(enum.StrEnum):
    EMPTY = "empty"
    PARCEL = "parcel"
    UNKNOWN = "unknown"  # nobody can say; a technician (or a sensor) must


class CompartmentState(enum.StrEnum):
    FREE = "free"
    OCCUPIED = "occupied"
    IN_USE = "in_use"  # a door is open (or opening) for someone
    ATTENTION = "attention"  # content unknown: never allocated, never reported empty
    OUT_OF_SERVICE = "out_of_service"


class Refusal(enum.StrEnum):
    """Why a door stays shut. Said to the person as one message: a guesser learns
    nothing about which codes exist (see :func:`terminal_message`)."""

    UNKNOWN_CODE = "unknown_code"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    SPENT = "spent"
    CANCELLED = "cancelled"
    WRONG_STATE = "wrong_state"
    NO_COMPARTMENT = "no_compartment"
    BUSY = "busy"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(frozen=True, slots=True)
class Operation:
    """A door opened for someone, until it is seen shut again."""

    purpose: Purpose
    parcel_id: str | None
    started_at: float
    seen_open: bool = False
    actor: str = ""


@dataclass(frozen=True, slots=True)
class Compartment:
    label: str
    size: Size
    accessible: bool = False
    in_service: bool = True
    content: Content = Content.EMPTY
    parcel_id: str | None = None
    operation: Operation | None = None
    door_open: bool = False

    @property
    def state(self) -> CompartmentState:
        if not self.in_service:
            return CompartmentState.OUT_OF_SERVICE
        if self.operation is not None:
            return CompartmentState.IN_USE
        if self.content is Content.UNKNOWN:
            return CompartmentState.ATTENTION
        if self.content is Content.PARCEL:
            return CompartmentState.OCCUPIED
        return CompartmentState.FREE


@dataclass(frozen=True, slots=True)
class Parcel:
    id: str
    kind: Kind
    size: Size
    state: ParcelState = ParcelState.RESERVED
    compartment: str | None = None
    deposit_from: float = 0.0
    deposit_until: float = float("inf")
    collect_window_s: float = 72 * 3600.0
    collect_until: float | None = None  # set when stored
    accessible: bool = False
    has_recall_code: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, for the outbox and the audit log. Never holds a code.
    ``type`` is one of :data:`lockerd.hub.vocab.EventType`; the shape of ``data`` for
    each is in the cloud contract (``lockerd.cloud.contract.EVENT_DATA``)."""

    type: EventType
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """The outcome of a rule: new objects (only those that changed) and the events."""

    parcel: Parcel | None = None
    compartment: Compartment | None = None
    events: tuple[Event, ...] = ()
    refusal: Refusal | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def _refuse(reason: Refusal) -> Change:
    return Change(refusal=reason)


def terminal_message(refusal: Refusal) -> str:
    """What the keypad says. Wrong, spent, expired and cancelled codes read the same."""
    if refusal in (Refusal.NO_COMPARTMENT,):
        return "No free compartment of this size right now. Please try again later."
    if refusal in (Refusal.BUSY, Refusal.OUT_OF_SERVICE):
        return "This compartment cannot be opened right now. Please contact support."
    return "This code cannot be used. Please check it and try again."


def _when(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _operation(c: Compartment) -> str:
    """What is under way at a compartment's door, in words."""
    op = c.operation
    if op is None:
        return "its door is open" if c.door_open else "nothing is under way"
    who = f" by {op.actor}" if op.actor else ""
    what = f"{op.purpose.value}{who} since {_when(op.started_at)}"
    if op.parcel_id is not None:
        what += f", parcel {op.parcel_id}"
    if c.door_open or op.seen_open:
        return f"its door is already open ({what}): shut it first"
    return f"an open is under way ({what})"


def why(  # noqa: PLR0911 - one answer per refusal
    refusal: Refusal,
    *,
    parcel: Parcel | None = None,
    compartment: Compartment | None = None,
    purpose: Purpose | None = None,
) -> str:
    """The technician's reason for a refusal: what :func:`terminal_message` keeps from
    the person at a keypad (which parcel, in which state, what the door is doing).
    Never a code, nor a code's hash."""
    p, c = parcel, compartment
    code = f"a {purpose.value} code" if purpose is not None else "this code"
    if refusal is Refusal.UNKNOWN_CODE:
        return "no live parcel has this code"
    if refusal is Refusal.BUSY and c is not None:
        return f"{c.label} is busy: {_operation(c)}"
    if refusal is Refusal.OUT_OF_SERVICE and c is not None:
        return f"{c.label} is out of service"
    if refusal is Refusal.NO_COMPARTMENT and p is not None:
        acc = " accessible" if p.accessible else ""
        return f"no free{acc} compartment of size {p.size.value} for parcel {p.id}"
    if p is None:
        if refusal is Refusal.WRONG_STATE and c is not None and c.parcel_id is not None:
            return (
                f"{c.label} holds parcel {c.parcel_id}: collect, recall or cancel it, "
                "an inspection does not wish it away"
            )
        return refusal.value.replace("_", " ")
    state = f"parcel {p.id} is {p.state.value}"
    if refusal is Refusal.NOT_YET_VALID:
        return f"{state}: its deposit code works from {_when(p.deposit_from)}"
    if refusal is Refusal.EXPIRED:
        if p.state is ParcelState.RESERVED:
            return f"{state}: its deposit window ended {_when(p.deposit_until)}"
        return f"{state}: its pickup window ended {_when(p.collect_until)}"
    if refusal is Refusal.SPENT:
        return f"{state}: {code} of it was used already"
    if refusal is Refusal.CANCELLED:
        return f"parcel {p.id} was cancelled"
    if refusal is Refusal.WRONG_STATE and c is not None and p.compartment not in (None, c.label):
        return f"{state} in {p.compartment}, not in {c.label}"
    return f"{state}: {code} does not open it now"


# ======================================================================================
# Codes: which purpose a code may serve in which parcel state
# ======================================================================================


def check_code(parcel: Parcel, purpose: Purpose, now: float) -> Refusal | None:  # noqa: PLR0911
    """Whether a code of ``purpose`` for ``parcel`` may open a door now."""
    if parcel.state is ParcelState.CANCELLED:
        return Refusal.CANCELLED
    if parcel.state in (ParcelState.COLLECTED, ParcelState.RECALLED):
        return Refusal.SPENT
    if purpose is Purpose.DEPOSIT:
        if parcel.state is not ParcelState.RESERVED:
            return Refusal.SPENT if parcel.state in IN_COMPARTMENT else Refusal.WRONG_STATE
        if now < parcel.deposit_from:
            return Refusal.NOT_YET_VALID
        if now > parcel.deposit_until:
            return Refusal.EXPIRED
        return None
    if purpose is Purpose.COLLECT:
        if parcel.state is ParcelState.EXPIRED or (
            parcel.state is ParcelState.STORED
            and parcel.collect_until is not None
            and now > parcel.collect_until
        ):
            return Refusal.EXPIRED
        return None if parcel.state is ParcelState.STORED else Refusal.WRONG_STATE
    if purpose is Purpose.RECALL:
        if parcel.kind is not Kind.DELIVERY or not parcel.has_recall_code:
            return Refusal.WRONG_STATE
        return None if parcel.state is ParcelState.EXPIRED else Refusal.WRONG_STATE
    return Refusal.WRONG_STATE


# ======================================================================================
# Allocation
# ======================================================================================


def allocate(
    compartments: Iterable[Compartment], size: Size, *, accessible: bool, fallback: bool
) -> Compartment | None:
    """The free compartment for a parcel: the smallest size that fits (its own size;
    larger ones only with ``fallback``), accessible ones only when asked for or when
    nothing else fits, then by label for a stable choice."""
    best: tuple[int, int, str] | None = None
    chosen: Compartment | None = None
    for comp in compartments:
        if comp.state is not CompartmentState.FREE or comp.door_open:
            continue
        if comp.size.rank < size.rank or (comp.size is not size and not fallback):
            continue
        if accessible and not comp.accessible:
            continue
        # keep accessible compartments for those who need them
        key = (comp.size.rank, int(comp.accessible and not accessible), comp.label)
        if best is None or key < best:
            best, chosen = key, comp
    return chosen


# ======================================================================================
# Reservations
# ======================================================================================


def cancel(parcel: Parcel) -> Change:
    """The cloud cancels a reservation: only before the parcel is in a compartment."""
    if parcel.state is ParcelState.CANCELLED:
        return Change()  # already: idempotent
    if parcel.state is not ParcelState.RESERVED:
        return _refuse(Refusal.WRONG_STATE)
    return Change(
        parcel=replace(parcel, state=ParcelState.CANCELLED),
        events=(Event("parcel_cancelled", {"parcel": parcel.id}),),
    )


def expire(parcel: Parcel, now: float) -> Change:
    """Time ends a parcel's window. A stored parcel past its collect window: its
    collect code is dead (only a recall opens). A reservation past ``deposit_until``
    without a deposit: it ends (cancelled, its codes tombstoned, the parcel id free to
    prune), so a reservation the cloud forgot does not hold codes and ids for good."""
    if parcel.state is ParcelState.RESERVED:
        if now <= parcel.deposit_until:
            return Change()
        return Change(
            parcel=replace(parcel, state=ParcelState.CANCELLED),
            events=(Event("reservation_expired", {"parcel": parcel.id}),),
        )
    if parcel.state is not ParcelState.STORED or parcel.collect_until is None:
        return Change()
    if now <= parcel.collect_until:
        return Change()
    return Change(
        parcel=replace(parcel, state=ParcelState.EXPIRED),
        events=(Event("parcel_expired", {"parcel": parcel.id, "compartment": parcel.compartment}),),
    )


# ======================================================================================
# Opening a door for a code
# ======================================================================================


def start(
    parcel: Parcel,
    purpose: Purpose,
    compartment: Compartment,
    now: float,
    *,
    actor: str = "",
) -> Change:
    """Open ``compartment`` for ``parcel``'s ``purpose`` (the code was checked).

    For a deposit, ``compartment`` is the one :func:`allocate` chose; otherwise the
    parcel's own. The change is the intent: the store records it before the pulse.
    """
    refusal = check_code(parcel, purpose, now)
    if refusal is not None:
        return _refuse(refusal)
    if not compartment.in_service:
        return _refuse(Refusal.OUT_OF_SERVICE)
    if compartment.operation is not None:
        return _refuse(Refusal.BUSY)
    if purpose is Purpose.DEPOSIT:
        if compartment.state is not CompartmentState.FREE:
            return _refuse(Refusal.NO_COMPARTMENT)
        new_state = ParcelState.DEPOSITING
    else:
        if compartment.label != parcel.compartment or compartment.parcel_id != parcel.id:
            return _refuse(Refusal.WRONG_STATE)
        new_state = ParcelState.COLLECTING if purpose is Purpose.COLLECT else ParcelState.RECALLING
    # a door already open (forced, left open) needs no pulse to be seen open
    op = Operation(purpose, parcel.id, now, seen_open=compartment.door_open, actor=actor)
    comp = replace(compartment, operation=op)
    if purpose is Purpose.DEPOSIT:
        comp = replace(comp, parcel_id=parcel.id)
    return Change(
        parcel=replace(parcel, state=new_state, compartment=compartment.label),
        compartment=comp,
        events=(
            Event(
                "door_open_requested",
                {
                    "compartment": compartment.label,
                    "parcel": parcel.id,
                    "purpose": purpose.value,
                    "by": actor,
                },
            ),
        ),
    )


def technician_recall(
    parcel: Parcel, compartment: Compartment, now: float, *, actor: str
) -> Change:
    """A technician empties an expired parcel (``lockerctl empty-expired``): the recall
    flow without a carrier's code; the door shut ends it as recalled."""
    if parcel.state is not ParcelState.EXPIRED:
        return _refuse(Refusal.WRONG_STATE)
    if compartment.operation is not None:
        return _refuse(Refusal.BUSY)
    if compartment.label != parcel.compartment or compartment.parcel_id != parcel.id:
        return _refuse(Refusal.WRONG_STATE)
    op = Operation(Purpose.RECALL, parcel.id, now, seen_open=compartment.door_open, actor=actor)
    return Change(
        parcel=replace(parcel, state=ParcelState.RECALLING),
        compartment=replace(compartment, operation=op),
        events=(
            Event(
                "door_open_requested",
                {
                    "compartment": compartment.label,
                    "parcel": parcel.id,
                    "purpose": "recall",
                    "by": actor,
                },
            ),
        ),
    )


def service_open(compartment: Compartment, now: float, *, actor: str, reason: str) -> Change:
    """A technician opens a door (audited). Whatever it held, the technician sees it."""
    if compartment.operation is not None:
        return _refuse(Refusal.BUSY)
    op = Operation(
        Purpose.SERVICE, compartment.parcel_id, now, seen_open=compartment.door_open, actor=actor
    )
    return Change(
        compartment=replace(compartment, operation=op),
        events=(
            Event(
                "door_open_requested",
                {
                    "compartment": compartment.label,
                    "purpose": "service",
                    "by": actor,
                    "reason": reason,
                    "parcel": compartment.parcel_id,
                },
            ),
        ),
    )


# ======================================================================================
# What the door monitor saw
# ======================================================================================


def door_opened(compartment: Compartment, now: float) -> Change:
    """The door was seen open (debounced)."""
    comp = replace(compartment, door_open=True)
    op = compartment.operation
    if op is not None:
        if op.seen_open:
            return Change(compartment=comp)
        return Change(
            compartment=replace(comp, operation=replace(op, seen_open=True)),
            events=(
                Event(
                    "door_opened",
                    {
                        "compartment": compartment.label,
                        "purpose": op.purpose.value,
                        "parcel": op.parcel_id,
                    },
                ),
            ),
        )
    # opened with no command: forced, or a faulty lock. What is inside is no longer known.
    return Change(
        compartment=replace(comp, content=Content.UNKNOWN if comp.in_service else comp.content),
        events=(
            Event(
                "forced_open",
                {"compartment": compartment.label, "parcel": compartment.parcel_id},
            ),
        ),
    )


def _undone(
    compartment: Compartment, parcel: Parcel | None, purpose: Purpose
) -> tuple[Compartment, Parcel | None]:
    """An operation that did not happen: the parcel goes back to where it was (a deposit
    to reserved, its code good again; a collect to stored; a recall to expired)."""
    comp = replace(compartment, operation=None)
    if parcel is None:
        return comp, None
    if purpose is Purpose.DEPOSIT:
        return replace(comp, parcel_id=None), replace(
            parcel, state=ParcelState.RESERVED, compartment=None
        )
    if purpose is Purpose.COLLECT:
        return comp, replace(parcel, state=ParcelState.STORED)
    if purpose is Purpose.RECALL:
        return comp, replace(parcel, state=ParcelState.EXPIRED)
    return comp, None


def open_not_seen(compartment: Compartment, parcel: Parcel | None, now: float) -> Change:
    """The lock was pulsed but the door was not seen open in time: jammed.

    Never reported as opened. The operation is undone: a depositing parcel goes back
    to reserved (its code still works, another compartment can be tried); a parcel
    being collected stays stored (its code is not spent). The compartment goes out
    of service until a technician checks the lock.
    """
    op = compartment.operation
    if op is None or op.seen_open:
        return Change()
    comp, new_parcel = _undone(compartment, parcel, op.purpose)
    comp = replace(comp, in_service=False)
    return Change(
        parcel=new_parcel,
        compartment=comp,
        events=(
            Event(
                "door_jammed",
                {
                    "compartment": compartment.label,
                    "purpose": op.purpose.value,
                    "parcel": op.parcel_id,
                },
            ),
        ),
    )


def not_pulsed(compartment: Compartment, parcel: Parcel | None, now: float) -> Change:
    """The unlock never went out (bus down, board refused): undo the operation as if
    the code had not been typed; the compartment stays as it was."""
    op = compartment.operation
    if op is None or op.seen_open:
        return Change()
    comp, new_parcel = _undone(compartment, parcel, op.purpose)
    return Change(
        parcel=new_parcel,
        compartment=comp,
        events=(
            Event(
                "door_not_opened",
                {
                    "compartment": compartment.label,
                    "purpose": op.purpose.value,
                    "parcel": op.parcel_id,
                },
            ),
        ),
    )


def interrupted(compartment: Compartment, parcel: Parcel | None, now: float) -> Change:
    """At start-up: an operation was under way when the daemon stopped, and its door is
    shut now. Whether it opened in between nobody knows, so it is never pulsed again
    and nothing is assumed: the compartment needs a look (attention), a depositing
    parcel is reserved again (its code works), a collected one stays where it was."""
    op = compartment.operation
    if op is None:
        return Change()
    comp, new_parcel = _undone(compartment, parcel, op.purpose)
    comp = replace(comp, door_open=False, content=Content.UNKNOWN)
    return Change(
        parcel=new_parcel,
        compartment=comp,
        events=(
            Event(
                "open_interrupted",
                {
                    "compartment": compartment.label,
                    "purpose": op.purpose.value,
                    "parcel": op.parcel_id,
                },
            ),
        ),
    )


def door_shut(
    compartment: Compartment,
    parcel: Parcel | None,
    now: float,
    *,
    occupied: bool | None = None,
) -> Change:
    """The door was seen shut (debounced). ``occupied`` is the occupancy sensor's word,
    ``None`` where the board has no sensor.

    Ends the operation and decides what the compartment holds: a sensor's word wins;
    without one, a completed deposit holds its parcel, a completed collect or recall
    is empty, and a door shut after a forced open stays unknown.
    """
    op = compartment.operation
    comp = replace(compartment, door_open=False)
    if op is None or not op.seen_open:
        return Change(compartment=_settle_by_sensor(comp, occupied) if op is None else comp)
    comp = replace(comp, operation=None)
    if op.purpose is Purpose.DEPOSIT and parcel is not None:
        change = _finish_deposit(comp, parcel, now, occupied)
    elif op.purpose in (Purpose.COLLECT, Purpose.RECALL) and parcel is not None:
        change = _finish_collect(comp, parcel, op.purpose, occupied)
    else:
        change = _finish_service(comp, occupied)
    shut = Event("door_shut", {"compartment": compartment.label})
    return replace(change, events=(*change.events, shut))


def _settle_by_sensor(comp: Compartment, occupied: bool | None) -> Compartment:
    """A sensor settles what a forced open made unknown (a recorded parcel's place
    found empty is left for a person)."""
    if occupied is None or not comp.in_service or comp.content is not Content.UNKNOWN:
        return comp
    if occupied:
        return replace(comp, content=Content.PARCEL) if comp.parcel_id else comp
    return comp if comp.parcel_id else replace(comp, content=Content.EMPTY)


def occupancy_seen(compartment: Compartment, occupied: bool) -> Change:
    """A steady occupancy reading of a shut door nobody is using, compared with what the
    store believes. Something in a compartment recorded empty makes it unknown (never
    allocated) and raises an alarm; a recorded parcel the sensor does not see raises an
    alarm but is never wished away: a person looks (``inspect``)."""
    comp = compartment
    if comp.operation is not None or comp.door_open or not comp.in_service:
        return Change()  # the door's shut decides, with the sensor's word at that moment
    if comp.content is Content.UNKNOWN:
        settled = _settle_by_sensor(comp, occupied)
        return Change(compartment=settled) if settled != comp else Change()
    if occupied and comp.content is Content.EMPTY:
        return Change(
            compartment=replace(comp, content=Content.UNKNOWN),
            events=(
                Event(
                    "occupancy_mismatch",
                    {"compartment": comp.label, "store": "empty", "sensor": "occupied"},
                ),
            ),
        )
    if not occupied and comp.content is Content.PARCEL:
        return Change(
            events=(
                Event(
                    "occupancy_mismatch",
                    {
                        "compartment": comp.label,
                        "parcel": comp.parcel_id,
                        "store": "parcel",
                        "sensor": "empty",
                    },
                ),
            )
        )
    return Change()


def _finish_deposit(comp: Compartment, parcel: Parcel, now: float, occupied: bool | None) -> Change:
    label = comp.label
    if occupied is False:
        # the sensor says nothing was put in: the reservation stands, the door is free
        return Change(
            parcel=replace(parcel, state=ParcelState.RESERVED, compartment=None),
            compartment=replace(comp, content=Content.EMPTY, parcel_id=None),
            events=(Event("deposit_abandoned", {"compartment": label, "parcel": parcel.id}),),
        )
    until = now + parcel.collect_window_s
    kind: EventType = "deposited" if parcel.kind is Kind.DELIVERY else "return_deposited"
    return Change(
        parcel=replace(parcel, state=ParcelState.STORED, collect_until=until),
        compartment=replace(comp, content=Content.PARCEL, parcel_id=parcel.id),
        events=(Event(kind, {"compartment": label, "parcel": parcel.id, "collect_until": until}),),
    )


def _finish_collect(
    comp: Compartment, parcel: Parcel, purpose: Purpose, occupied: bool | None
) -> Change:
    label = comp.label
    if occupied is True:
        # still there: not taken; the code stays good, the parcel stays
        back = ParcelState.STORED if purpose is Purpose.COLLECT else ParcelState.EXPIRED
        return Change(
            parcel=replace(parcel, state=back),
            compartment=replace(comp, content=Content.PARCEL),
            events=(Event("collect_not_taken", {"compartment": label, "parcel": parcel.id}),),
        )
    done = ParcelState.COLLECTED if purpose is Purpose.COLLECT else ParcelState.RECALLED
    kinds: dict[tuple[Kind, Purpose], EventType] = {
        (Kind.DELIVERY, Purpose.COLLECT): "collected",
        (Kind.RETURN, Purpose.COLLECT): "return_collected",
        (Kind.DELIVERY, Purpose.RECALL): "recalled",
    }
    kind = kinds[(parcel.kind, purpose)]
    return Change(
        parcel=replace(parcel, state=done),
        compartment=replace(comp, content=Content.EMPTY, parcel_id=None),
        events=(Event(kind, {"compartment": label, "parcel": parcel.id}),),
    )


def _finish_service(comp: Compartment, occupied: bool | None) -> Change:
    """A technician looked inside: the sensor's word, or unchanged until the technician
    says (``inspected``); a recorded parcel is never wished away."""
    if occupied is None:
        content = comp.content
    elif occupied:
        content = Content.PARCEL if comp.parcel_id else Content.UNKNOWN
    else:
        content = Content.UNKNOWN if comp.parcel_id else Content.EMPTY
    return Change(
        compartment=replace(comp, content=content),
        events=(Event("service_door_shut", {"compartment": comp.label}),),
    )


def left_open(compartment: Compartment, now: float, limit_s: float) -> Change:
    """A door open longer than ``limit_s`` (since its operation started): an alarm."""
    op = compartment.operation
    if not compartment.door_open or op is None or now - op.started_at <= limit_s:
        return Change()
    return Change(
        events=(
            Event(
                "door_left_open",
                {
                    "compartment": compartment.label,
                    "purpose": op.purpose.value,
                    "parcel": op.parcel_id,
                    "open_s": round(now - op.started_at, 1),
                },
            ),
        )
    )


# ======================================================================================
# Technician
# ======================================================================================


def set_service(compartment: Compartment, in_service: bool, *, actor: str) -> Change:
    if compartment.in_service == in_service:
        return Change()
    return Change(
        compartment=replace(compartment, in_service=in_service),
        events=(
            Event(
                "compartment_service",
                {"compartment": compartment.label, "in_service": in_service, "by": actor},
            ),
        ),
    )


def inspected(compartment: Compartment, *, holds_parcel: bool, actor: str) -> Change:
    """A technician says what an *attention* compartment holds."""
    if compartment.operation is not None or compartment.door_open:
        return _refuse(Refusal.BUSY)
    if not holds_parcel and compartment.parcel_id is not None:
        # a recorded parcel is not wished away: it is collected, recalled or removed
        return _refuse(Refusal.WRONG_STATE)
    if holds_parcel and compartment.parcel_id is None:
        content = Content.UNKNOWN  # a parcel we know nothing of: keep it out of allocation
    else:
        content = Content.PARCEL if holds_parcel else Content.EMPTY
    return Change(
        compartment=replace(compartment, content=content),
        events=(
            Event(
                "compartment_inspected",
                {"compartment": compartment.label, "holds_parcel": holds_parcel, "by": actor},
            ),
        ),
    )
