"""The service: the single entry point for every action, whoever asks.

keypad/kiosk, technician (lockerctl), cloud and door monitor all come here. For an
open: decide in the domain, commit the change with its intent (store), pulse the
lock (bus), wait for the door monitor to see the door open, commit the outcome.
The decision and its commit are serialised by one lock; the pulse and the wait are
not (the monitor needs the lock to report the door). The store runs on a thread
of its own (:class:`lockerd.hub.storethread.StoreThread`, which also keeps the hub
going when the disk fills up), so a slow fsync never stalls the loop that polls the
doors.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import structlog

from lockerd.config import Retention, ThrottlePolicy
from lockerd.drivers.boards import Board
from lockerd.drivers.errors import BusError, DriverError, PortUnavailable
from lockerd.hub import domain as d
from lockerd.hub.codes import Attempt, CodeHasher, Throttle, normalise
from lockerd.hub.store import (
    CodeSpent,
    Inbox,
    Store,
    StoreConflict,
    StoreError,
    reserved_event,
)
from lockerd.hub.storethread import StoreThread
from lockerd.hub.vocab import IntentOutcome, OutcomeStatus
from lockerd.logs import bound

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
MAX_TERMINALS = 64  # distinct terminals counted apart in the metrics

# reservations a transaction in reserve_many: a chunk holds the store (and the door
# monitor behind it) for some 10-50 ms, growing with the codes already stored
BULK_CHUNK = 500

Status = OutcomeStatus  # lockerd.hub.vocab


@dataclass(frozen=True)
class Outcome:
    """What the person at the keypad (or the technician) is told: ``message`` is what a
    keypad may say (a wrong, spent or expired code reads the same); ``detail``, where
    the service knows it, the technician's reason (the door already open, the board
    offline, the port not open, which state the parcel is in). Never a code or a
    code's hash; never shown at a keypad."""

    status: Status
    message: str
    compartment: str | None = None
    wait_s: float = 0.0
    detail: str | None = None


@dataclass(frozen=True)
class _Refused:
    """A code the rules refuse: why (the keypad's message follows from ``refusal``),
    and the technician's ``detail``. ``parcel_id``: a right code that cannot open now
    (no free compartment, its own busy or out of service...); ``None``: a wrong one."""

    refusal: d.Refusal
    parcel_id: str | None
    detail: str


@dataclass(frozen=True)
class Door:
    label: str
    board: Board[Any]
    channel: int


class HubService:
    """The hub's one entry point: every action, from whoever asks, goes through here.

    Responsible for: serialising decisions and their commits (one lock), asking the
    domain's rules and committing what they decide (with its intent, events and the
    cloud command behind it), pulsing a lock and waiting for the door monitor's
    verdict, the keypad's code throttle, time-driven rules (:meth:`tick`), what is
    refused while stopping, low on disk or with the outbox full, and draining opens
    under way on a stop (:meth:`drain`).

    Not responsible for: the rules themselves (:mod:`lockerd.hub.domain`), SQL
    (:class:`~lockerd.hub.store.Store`), the store's thread and the full-disk
    reserve (:class:`~lockerd.hub.storethread.StoreThread`, as :attr:`store_thread`),
    polling the doors (:mod:`lockerd.hub.monitor`) or talking to the cloud
    (:mod:`lockerd.cloud.link`).
    """

    def __init__(
        self,
        store: Store,
        hasher: CodeHasher,
        doors: list[Door],
        *,
        throttle: ThrottlePolicy | None = None,
        open_confirm_s: float = 3.0,
        left_open_alarm_s: float = 120.0,
        fallback_to_larger: bool = True,
        clock: Callable[[], float] = time.time,
        store_thread: StoreThread | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.doors = {door.label: door for door in doors}
        self._by_channel = {(door.board.key, door.channel): door.label for door in doors}
        self.throttle = Throttle(throttle or ThrottlePolicy())
        self.open_confirm_s = open_confirm_s
        self.left_open_alarm_s = left_open_alarm_s
        self.fallback = fallback_to_larger
        self.clock = clock
        self._lock = asyncio.Lock()
        # the store's calls run there (the daemon's, with its disk reserve: open_hub);
        # a full disk frees the reserve, and its alarm is committed apart from the call
        # that met it
        self.store_thread = store_thread or StoreThread(store)
        self.store_thread.on_disk_full = lambda event: self._record_apart(
            (event,), actor="lockerd", target="disk"
        )
        self._seen_open: dict[str, asyncio.Event] = {}
        self.on_commit: list[Callable[[], None]] = []  # e.g. the cloud link's outbox wake-up
        self._alarmed_open: set[str] = set()
        # compartments whose door the hub expects to move: an open it commanded is under
        # way, or the door is open for someone (the door shut ends a person's flow); the
        # door monitor does not count their changes as a flapping sensor
        self._moving = {c.label for c in store.compartments() if c.operation is not None}
        self.wrong_codes: Counter[str] = Counter()  # wrong codes per terminal (metrics)
        self._background: set[asyncio.Task[None]] = set()
        # a stop drains: no new open starts, every open under way reaches its outcome
        self.stopping = False
        self._opening = 0
        self._no_opens = asyncio.Event()
        self._no_opens.set()

    def _record_apart(self, events: tuple[d.Event, ...], *, actor: str, target: str) -> None:
        """Alarm events committed in a task of their own, apart from the request or the
        store call that raised them (which is failing, or holds the service lock)."""
        task = asyncio.get_running_loop().create_task(
            self.record(d.Change(events=events), actor=actor, action="alarm", target=target)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refuse_while_low_on_disk(self) -> Outcome | None:
        if not self.store_thread.disk_low:
            return None
        return Outcome(
            "refused",
            "the hub's disk is full: new reservations are refused until there is room; "
            "send it again later",
        )

    def _refuse_while_outbox_full(self) -> Outcome | None:
        """At the outbox's hard ceiling (the cloud has not taken events for long):
        nothing that adds events without a person or a parcel behind it."""
        if not self.store.outbox_full:
            return None
        return Outcome(
            "refused",
            "the hub's outbox is full (the cloud has not taken its events): new "
            "reservations and service changes are refused until it drains",
        )

    async def _audit_refusal(  # noqa: PLR0917 - the refusal and whose action
        self,
        outcome: Outcome,
        refused: str,
        actor: str,
        action: str,
        target: str,
        command: Inbox | None = None,
        reason: str | None = None,
    ) -> Outcome:
        """A technician's refused action (a second open of a door still busy, a cancel
        of a parcel the hub does not know), audited in one small line: action
        ``refused:ACTION``, detail ``refused`` (a word), ``why`` (the technician's
        reason for the refusal) and the ``reason`` given, if any. Then ``outcome``.

        A cloud command's refusal is kept in its reply (the inbox), not here. Only the
        service's technician actions come here: a terminal may only enter codes (the
        API refuses and logs anything else, and writes nothing), and the technician's
        actions are rate-limited, so refusals cannot fill the disk. While the disk is
        low on space, only the log has them."""
        if command is not None:
            return outcome
        detail = {"refused": refused, "why": outcome.detail or outcome.message}
        if reason is not None:
            detail["reason"] = reason
        log.info("technician_refused", by=actor, action=action, target=target, refused=refused)
        if self.store_thread.disk_low:
            return outcome
        try:
            await self.store_thread.run(
                self.store.audit_refused,
                now=self.clock(),
                actor=actor,
                action=action,
                target=target,
                detail=detail,
            )
        except StoreError as exc:  # the refusal stands; the log has it
            log.warning("refusal_not_audited", by=actor, action=action, error=str(exc))
        return outcome

    async def prune(
        self, retention: Retention, *, batch: int = 500, outbox: bool = False
    ) -> dict[str, int]:
        """Delete what the retention settings say is no longer kept, a small batch per
        store transaction, the service lock taken for each batch only (a door event
        waits at most one batch). ``outbox``: a hub with no cloud link keeps its events
        as long as its audit (no one takes them away). A table that fails is logged and
        the others are pruned all the same."""
        now = self.clock()
        day = 86_400.0
        ages = {
            "audit": retention.audit_days,
            "history": retention.audit_days,
            "alarms": retention.audit_days,
            "quarantine": retention.audit_days,
            "inbox": retention.inbox_days,
            "intents": retention.intents_days,
            "parcels": retention.parcels_days,
            "tombstones": retention.tombstone_days,
        }
        if outbox:
            ages["outbox"] = retention.audit_days
        pruned: dict[str, int] = {}
        for table, days in ages.items():
            before = now - days * day
            pruned[table] = 0
            try:
                while True:
                    async with self._lock:
                        n = await self.store_thread.run(self.store.prune, table, before, batch)
                    pruned[table] += n
                    if n < batch:
                        break
            except StoreError as exc:
                log.error("prune_failed", table=table, error=str(exc))  # noqa: TRY400
        if any(pruned.values()):
            log.info("store_pruned", **pruned)
        return pruned

    async def run_db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A store call on the store's own thread (for the cloud link). It pokes no
        ``on_commit`` listener: the link's own reads would wake its drain loop forever."""
        return await self.store_thread.run(fn, *args, **kwargs)

    def _changed(self) -> None:
        for listener in self.on_commit:
            listener()

    async def record(
        self,
        change: d.Change,
        *,
        actor: str,
        action: str = "record",
        target: str | None = None,
        command: Inbox | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Events (and a command's reply) with no other effect: a refused command, an
        alarm, a hardware report. ``detail``: the audit line's, beside the events."""
        async with self._lock:
            await self._commit(
                change,
                now=self.clock(),
                actor=actor,
                action=action,
                target=target or (command.command_id if command else "-"),
                command=command,
                detail=detail,
            )

    async def _commit(
        self,
        change: d.Change,
        *,
        now: float,
        actor: str,
        action: str,
        target: str,
        intent: tuple[str, d.Purpose, str | None] | None = None,
        resolve: tuple[int, IntentOutcome] | None = None,
        command: Inbox | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        """A domain change, its events, audit line (``detail``: why, beside the
        events), intent and the cloud command that asked for it, in one store
        transaction."""
        intent_id = await self.store_thread.run(
            self.store.apply,
            change,
            now=now,
            actor=actor,
            action=action,
            target=target,
            intent=intent,
            resolve=resolve,
            command=command,
            detail=detail,
        )
        if change.compartment is not None:
            self._note_moving(change.compartment)
        self._changed()
        return intent_id

    def _note_moving(self, comp: d.Compartment) -> None:
        """A compartment as committed: is its door expected to move?"""
        if comp.operation is not None:
            self._moving.add(comp.label)
        else:
            self._moving.discard(comp.label)

    def door_move_expected(self, label: str) -> bool:
        """Whether a change of ``label``'s door is one the hub explains (for the door
        monitor's flapping check): it commanded an open now under way, or the door is
        open for someone whose flow its shutting ends."""
        return label in self._moving

    def close(self) -> None:
        self.store_thread.close()

    async def drain(self, within: float) -> bool:
        """Refuse new opens and wait up to ``within`` seconds for every open under way
        to reach its outcome (door seen open, jammed, not sent); ``False`` if some did
        not. The door monitor must keep running meanwhile: it sees the doors open."""
        self.stopping = True
        try:
            async with asyncio.timeout(within):
                await self._no_opens.wait()
        except TimeoutError:
            return False
        return True

    def _refuse_while_stopping(self) -> Outcome | None:
        if not self.stopping:
            return None
        return Outcome("refused", "The hub is restarting. Please try again in a minute.")

    def label_of(self, board_key: str, channel: int) -> str | None:
        return self._by_channel.get((board_key, channel))

    # ------------------------------------------------------------------ start-up
    async def reconcile(self, doors_open: dict[str, bool]) -> list[str]:
        """At start-up, with the first reading of every door: every intent the last run
        left open is settled from what the doors say, never by pulsing again."""
        settled: list[str] = []
        async with self._lock:
            for intent in await self.store_thread.run(self.store.open_intents):
                comp = await self.store_thread.run(self.store.compartment, intent.label)
                if comp is None:
                    continue
                now = self.clock()
                parcel = await self._parcel_of(comp)
                outcome: IntentOutcome
                if doors_open.get(intent.label) and comp.operation is not None:
                    change = d.door_opened(comp, now)
                    outcome = "opened"
                else:
                    change = d.interrupted(comp, parcel, now)
                    outcome = "interrupted"
                if not change.refused:
                    await self._commit(
                        change,
                        now=now,
                        actor="lockerd",
                        action="reconcile",
                        target=intent.label,
                        resolve=(intent.id, outcome),
                    )
                settled.append(f"{intent.label}:{outcome}")
                log.warning(
                    "intent_reconciled",
                    compartment=intent.label,
                    outcome=outcome,
                    purpose=intent.purpose.value,
                )
        return settled

    async def _parcel_of(self, comp: d.Compartment) -> d.Parcel | None:
        pid = comp.operation.parcel_id if comp.operation else comp.parcel_id
        return await self.store_thread.run(self.store.parcel, pid) if pid else None

    # ------------------------------------------------------------------ the keypad
    async def enter_code(self, code: str, terminal: str) -> Outcome:
        """Exactly what the hub's keypad does with a code.

        The attempt is decided and counted before the lookup (``Throttle.begin``), so
        requests in flight together, on one terminal or on many, get no more codes
        checked than the same requests one after another; only a code that opens is
        refunded. Whatever fails in between leaves the attempt counted (ADR 0013).
        """
        if (stopping := self._refuse_while_stopping()) is not None:
            return stopping  # not a guess: nothing counted against the terminal
        if not normalise(code):
            return Outcome(
                "refused",
                d.terminal_message(d.Refusal.UNKNOWN_CODE),
                detail="the code has no digits (not counted as a guess)",
            )
        now = self.clock()
        attempt = self.throttle.begin(terminal, now)
        if not isinstance(attempt, Attempt):
            return Outcome(
                "wait",
                f"Please wait {math.ceil(attempt)} s before the next code.",
                wait_s=attempt,
                detail=f"the wrong-code throttle: {terminal} (or the whole hub) had too many "
                f"wrong codes; the next one is checked in {math.ceil(attempt)} s, this one "
                "was not",
            )
        try:
            code_hash = self.hasher.hash(code)
            async with self._lock:
                # one trip to the store's thread: look up, allocate, decide, commit the intent
                decided = await self.store_thread.run(self._decide_code, code_hash, terminal, now)
                if isinstance(decided, _Refused):
                    if decided.parcel_id is None:
                        return await self._wrong(attempt, decided.refusal, decided.detail)
                    return await self._refused(attempt, decided)
                change, intent = decided
                attempt.refund()  # a right code, its door about to open: not a guess
                assert change.compartment is not None
                self._note_moving(change.compartment)
                self._changed()
        finally:
            if not attempt.settled:  # failed half-way: fail closed
                self._count_in_background(attempt)
        assert change.compartment is not None
        return await self._pulse_and_confirm(change.compartment, intent, actor=terminal)

    def _decide_code(
        self, code_hash: str, terminal: str, now: float
    ) -> _Refused | tuple[d.Change, int]:
        """On the store's thread, under the service lock: what a code opens, and its
        intent committed. A refusal without a parcel id counts as a wrong code; with
        one it is a right code that cannot open now."""
        found = self.store.code(code_hash)
        if found is None:
            why = d.why(d.Refusal.UNKNOWN_CODE)
            if self.store.spent(code_hash):  # (a tombstone: a wrong code all the same)
                why = "this code was used or replaced at this hub before: it never opens again"
            return _Refused(d.Refusal.UNKNOWN_CODE, None, why)
        parcel, purpose = found
        if purpose is d.Purpose.DEPOSIT:
            comps = self.store.allocation_candidates(
                parcel.size, accessible=parcel.accessible, fallback=self.fallback
            )
            comp = d.allocate(
                comps, parcel.size, accessible=parcel.accessible, fallback=self.fallback
            )
            if comp is None:
                refusal = d.check_code(parcel, purpose, now) or d.Refusal.NO_COMPARTMENT
                why = d.why(refusal, parcel=parcel, purpose=purpose)
                return _Refused(refusal, parcel.id, why)
        else:
            comp = self.store.compartment(parcel.compartment) if parcel.compartment else None
            if comp is None:
                refusal = d.check_code(parcel, purpose, now) or d.Refusal.WRONG_STATE
                why = d.why(refusal, parcel=parcel, purpose=purpose)
                return _Refused(d.Refusal.WRONG_STATE, None, why)
        change = d.start(parcel, purpose, comp, now, actor=terminal)
        if change.refusal is not None:
            why = d.why(change.refusal, parcel=parcel, compartment=comp, purpose=purpose)
            return _Refused(change.refusal, parcel.id, why)
        intent = self.store.apply(
            change,
            now=now,
            actor=terminal,
            action="enter_code",
            target=comp.label,
            intent=(comp.label, purpose, parcel.id),
        )
        assert intent is not None
        return change, intent

    async def _wrong(self, attempt: Attempt, refusal: d.Refusal, detail: str) -> Outcome:
        # per keypad for the metrics; a flood of made-up terminal names shares one row
        terminal = attempt.terminal
        known = terminal in self.wrong_codes or len(self.wrong_codes) < MAX_TERMINALS
        self.wrong_codes[terminal if known else "other"] += 1
        await self._count(attempt)
        return Outcome("refused", d.terminal_message(refusal), detail=detail)

    async def _refused(self, attempt: Attempt, refused: _Refused) -> Outcome:
        refusal = refused.refusal
        log.info(
            "code_refused",
            terminal=attempt.terminal,
            reason=refusal.value,
            parcel=refused.parcel_id,
        )
        if refusal in (d.Refusal.NO_COMPARTMENT, d.Refusal.BUSY, d.Refusal.OUT_OF_SERVICE):
            # a right code that cannot open now: said as it is (whoever holds it must
            # not retype it), so it tells a code is valid; counted as a guess all the
            # same, so that buys no extra guesses (ADR 0013)
            await self._count(attempt)
            return Outcome("refused", d.terminal_message(refusal), detail=refused.detail)
        return await self._wrong(attempt, refusal, refused.detail)

    @staticmethod
    def _guessed(attempt: Attempt) -> list[d.Event]:
        """The attempt stays counted as a guess: the alarm events it raises, logged."""
        events = attempt.wrong()
        for event in events:
            log.error(event.type, **{"terminal": attempt.terminal, **event.data})
        return events

    async def _count(self, attempt: Attempt) -> None:
        """The attempt stays counted; the alarms it raises are committed."""
        for event in self._guessed(attempt):
            await self._commit(
                d.Change(events=(event,)),
                now=attempt.at,
                actor=attempt.terminal,
                action="alarm",
                target=attempt.terminal,
            )

    def _count_in_background(self, attempt: Attempt) -> None:
        """An attempt whose check failed half-way stays counted; its alarms are
        committed apart from the request, which is failing."""
        if events := self._guessed(attempt):
            self._record_apart(tuple(events), actor=attempt.terminal, target=attempt.terminal)

    # ------------------------------------------------------------------ reservations
    async def reserve(
        self,
        parcel: d.Parcel,
        codes: dict[d.Purpose, str],
        *,
        actor: str,
        command: Inbox | None = None,
    ) -> Outcome:
        """A new reservation (from the cloud, or a technician's) with its code hashes;
        never a plain code."""
        if (low := self._refuse_while_low_on_disk()) is not None:
            return low  # (while the disk is low, the log has it: _audit_refusal)
        if (full := self._refuse_while_outbox_full()) is not None:
            return await self._audit_refusal(
                full, "outbox_full", actor, "reserve", parcel.id, command
            )
        async with self._lock:
            if await self.store_thread.run(self.store.parcel, parcel.id) is not None:
                exists = Outcome("refused", f"parcel {parcel.id} is already reserved")
                return await self._audit_refusal(
                    exists, "exists", actor, "reserve", parcel.id, command
                )
            refused = await self._write_codes(
                self.store.add_parcel, parcel, codes, actor, reserved_event(parcel), command
            )
            if refused is not None:
                return await self._audit_refusal(*refused, actor, "reserve", parcel.id, command)
        return Outcome("ok", f"parcel {parcel.id} reserved")

    async def cancel(self, parcel_id: str, *, actor: str, command: Inbox | None = None) -> Outcome:
        """The cloud (or a technician) cancels a reservation: only before the parcel is
        in a compartment."""
        async with self._lock:
            parcel = await self.store_thread.run(self.store.parcel, parcel_id)
            if parcel is None:
                unknown = Outcome("refused", f"no parcel {parcel_id}")
                return await self._audit_refusal(
                    unknown, "unknown_parcel", actor, "cancel", parcel_id, command
                )
            change = d.cancel(parcel)
            if change.refusal is not None:
                late = Outcome(
                    "refused", f"parcel {parcel_id} is {parcel.state.value}: too late to cancel"
                )
                return await self._audit_refusal(
                    late, change.refusal.value, actor, "cancel", parcel_id, command
                )
            if change.parcel is not None or command is not None:
                await self._commit(
                    change,
                    now=self.clock(),
                    actor=actor,
                    action="cancel",
                    target=parcel_id,
                    command=command,
                )
        return Outcome("ok", f"parcel {parcel_id} cancelled")

    async def set_codes(
        self,
        parcel_id: str,
        codes: dict[d.Purpose, str],
        *,
        actor: str,
        command: Inbox | None = None,
    ) -> Outcome:
        """New code hashes for a live parcel (the cloud re-issues a code, or gives the
        carrier a recall code for an expired parcel)."""
        if (low := self._refuse_while_low_on_disk()) is not None:
            return low
        async with self._lock:
            parcel = await self.store_thread.run(self.store.parcel, parcel_id)
            if parcel is None:
                return Outcome("refused", f"no parcel {parcel_id}")
            if parcel.state in d.FINAL:
                return Outcome("refused", f"parcel {parcel_id} is {parcel.state.value}")
            if d.Purpose.RECALL in codes and parcel.kind is not d.Kind.DELIVERY:
                return Outcome("refused", "only a delivery can be recalled")
            if d.Purpose.DEPOSIT in codes and parcel.state is not d.ParcelState.RESERVED:
                return Outcome("refused", f"parcel {parcel_id} is already deposited")
            event = d.Event(
                "parcel_codes_changed",
                {"parcel": parcel_id, "purposes": sorted(p.value for p in codes)},
            )
            refused = await self._write_codes(
                self.store.set_codes, parcel_id, codes, actor, event, command
            )
        return refused[0] if refused else Outcome("ok", f"parcel {parcel_id}: codes changed")

    async def _write_codes(  # noqa: PLR0917 - the store call and its arguments
        self,
        write: Callable[..., None],
        target: Any,
        codes: dict[d.Purpose, str],
        actor: str,
        event: d.Event,
        command: Inbox | None,
    ) -> tuple[Outcome, str] | None:
        """Store code hashes (a new parcel's, or new ones for a parcel); ``None`` when
        done, a refusal (and its word for the audit) when a hash was used before here
        or is live for another parcel."""
        try:
            await self.store_thread.run(
                write,
                target,
                codes,
                now=self.clock(),
                actor=actor,
                events=[event],
                command=command,
            )
        except CodeSpent:
            return Outcome(
                "refused", "a code of this parcel was used before at this hub: send a new one"
            ), "code_used"
        except StoreConflict:
            return Outcome("refused", "a code of this parcel is already in use"), "code_conflict"
        self._changed()
        return None

    async def reserve_many(
        self,
        items: list[tuple[d.Parcel, dict[d.Purpose, str]]],
        *,
        actor: str,
        chunk: int = BULK_CHUNK,
    ) -> dict[str, str]:
        """Many reservations (``codes.bulk``): chunk by chunk, each chunk one transaction
        taken between door events (the lock is released between chunks, so the door
        monitor never waits for more than one chunk), each parcel reserved with its
        ``parcel_reserved`` event as :meth:`reserve` has. Returns each parcel's fate:
        ``reserved``, ``exists``, ``code_conflict`` or ``code_used`` (used before here)."""
        fate: dict[str, str] = {}
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            async with self._lock:
                fate.update(
                    await self.store_thread.run(
                        self.store.add_new_parcels, part, now=self.clock(), actor=actor
                    )
                )
        return fate

    # ------------------------------------------------------------------ technician
    async def open_compartment(
        self,
        label: str,
        *,
        actor: str,
        reason: str,
        command: Inbox | None = None,
        committed: Callable[[], None] | None = None,
    ) -> Outcome:
        """A technician's (or the cloud's signed) open. ``committed`` is called once the
        intent (and ``command``) is durable, before the pulse: the cloud link
        acknowledges the command there."""

        def refuse(outcome: Outcome, refused: str) -> Awaitable[Outcome]:
            return self._audit_refusal(outcome, refused, actor, "open", label, command, reason)

        if not reason.strip():
            return await refuse(
                Outcome("refused", "a reason is required (it goes to the audit log)"), "no_reason"
            )
        if command is None and (stopping := self._refuse_while_stopping()) is not None:
            return await refuse(stopping, "stopping")  # (a cloud open under way completes)
        async with self._lock:
            comp = await self.store_thread.run(self.store.compartment, label)
            if comp is None or label not in self.doors:
                return await refuse(
                    Outcome(
                        "refused",
                        f"no compartment {label}",
                        detail=f"{label} is not a door of this hub's config",
                    ),
                    "unknown_compartment",
                )
            now = self.clock()
            change = d.service_open(comp, now, actor=actor, reason=reason)
            if change.refusal is not None:
                return await refuse(
                    Outcome(
                        "refused",
                        d.terminal_message(change.refusal),
                        label,
                        detail=d.why(change.refusal, compartment=comp),
                    ),
                    change.refusal.value,
                )
            intent = await self._commit(
                change,
                now=now,
                actor=actor,
                action="open",
                target=label,
                intent=(label, d.Purpose.SERVICE, comp.parcel_id),
                command=command,
                detail={"reason": reason},
            )
            assert intent is not None
            assert change.compartment is not None
        if committed is not None:
            committed()
        return await self._pulse_and_confirm(change.compartment, intent, actor=actor)

    async def empty_expired(self, *, actor: str) -> list[Outcome]:
        """Open every compartment holding an expired parcel, one after another, for a
        technician to take it out; each door shut ends that parcel as recalled."""
        outcomes = []
        for parcel in await self.parcels([d.ParcelState.EXPIRED]):
            if (stopping := self._refuse_while_stopping()) is not None:
                outcomes.append(stopping)
                break
            async with self._lock:
                fresh = await self.store_thread.run(self.store.parcel, parcel.id)
                comp = (
                    await self.store_thread.run(self.store.compartment, fresh.compartment)
                    if fresh is not None and fresh.compartment
                    else None
                )
                if fresh is None or comp is None:
                    continue
                now = self.clock()
                change = d.technician_recall(fresh, comp, now, actor=actor)
                if change.refusal is not None:
                    why = d.why(change.refusal, parcel=fresh, compartment=comp)
                    refused = Outcome("refused", change.refusal.value, comp.label, detail=why)
                    outcomes.append(
                        await self._audit_refusal(
                            refused, change.refusal.value, actor, "empty_expired", comp.label
                        )
                    )
                    continue
                intent = await self._commit(
                    change,
                    now=now,
                    actor=actor,
                    action="empty_expired",
                    target=comp.label,
                    intent=(comp.label, d.Purpose.RECALL, fresh.id),
                )
                assert intent is not None
                assert change.compartment is not None
            outcomes.append(await self._pulse_and_confirm(change.compartment, intent, actor=actor))
        return outcomes

    async def set_service(
        self,
        label: str,
        in_service: bool,
        *,
        actor: str,
        reason: str | None = None,
        command: Inbox | None = None,
    ) -> Outcome:
        """A compartment taken out of service or back; audited with the state it set
        (and ``reason``, where one was given)."""
        detail = _why({"in_service": in_service}, reason)
        if (full := self._refuse_while_outbox_full()) is not None:
            return await self._audit_refusal(
                full, "outbox_full", actor, "service", label, command, reason
            )
        return await self._simple(
            label,
            actor,
            "service",
            lambda c: d.set_service(c, in_service, actor=actor),
            command=command,
            detail=detail,
        )

    async def inspect(
        self, label: str, holds_parcel: bool, *, actor: str, reason: str | None = None
    ) -> Outcome:
        """A technician says what a compartment holds; audited with what they said
        (and ``reason``, where one was given)."""
        return await self._simple(
            label,
            actor,
            "inspect",
            lambda c: d.inspected(c, holds_parcel=holds_parcel, actor=actor),
            detail=_why({"holds_parcel": holds_parcel}, reason),
        )

    async def _simple(
        self,
        label: str,
        actor: str,
        action: str,
        rule: Callable[[d.Compartment], d.Change],
        *,
        command: Inbox | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Outcome:
        reason = (detail or {}).get("reason")
        async with self._lock:
            comp = await self.store_thread.run(self.store.compartment, label)
            if comp is None:
                unknown = Outcome(
                    "refused",
                    f"no compartment {label}",
                    detail=f"{label} is not a door of this hub's config",
                )
                return await self._audit_refusal(
                    unknown, "unknown_compartment", actor, action, label, command, reason
                )
            change = rule(comp)
            if change.refusal is not None:
                refused = Outcome(
                    "refused",
                    f"{action} refused: {change.refusal.value}",
                    label,
                    detail=d.why(change.refusal, compartment=comp),
                )
                return await self._audit_refusal(
                    refused, change.refusal.value, actor, action, label, command, reason
                )
            if change.compartment is not None or change.events or command is not None:
                await self._commit(
                    change,
                    now=self.clock(),
                    actor=actor,
                    action=action,
                    target=label,
                    command=command,
                    detail=detail,
                )
        if change.compartment is None and not change.events:  # (a service flag as it was)
            where = "in service" if comp.in_service else "out of service"
            return Outcome("ok", "done", label, detail=f"{label} is {where} already: no change")
        return Outcome("ok", "done", label)

    # ------------------------------------------------------------------ the pulse
    async def _pulse_and_confirm(self, comp: d.Compartment, intent: int, *, actor: str) -> Outcome:
        self._opening += 1
        self._no_opens.clear()
        parcel = comp.operation.parcel_id if comp.operation else comp.parcel_id
        try:
            # every line logged on the way (the bus, the driver, the outcome) says which
            with bound(compartment=comp.label, parcel=parcel, intent=intent, by=actor):
                return await self._pulse_and_confirm_now(comp, intent, actor=actor)
        finally:
            self._opening -= 1
            if self._opening == 0:
                self._no_opens.set()

    async def _pulse_and_confirm_now(
        self, comp: d.Compartment, intent: int, *, actor: str
    ) -> Outcome:
        label = comp.label
        assert comp.operation is not None
        if comp.operation.seen_open:  # the door stood open already: nothing to pulse
            await self._resolve(label, intent, "already_open")
            return Outcome(
                "already_open",
                f"Compartment {label} is open.",
                label,
                detail=f"the door of {label} stood open already: nothing was pulsed",
            )
        door = self.doors[label]
        seen = self._seen_open.setdefault(label, asyncio.Event())
        seen.clear()
        try:
            await door.board.unlock(door.channel)
        except (BusError, DriverError) as exc:
            log.error("unlock_failed", compartment=label, error=str(exc), by=actor)  # noqa: TRY400
            await self._finish_without_open(label, intent, "not_sent", d.not_pulsed)
            return Outcome(
                "failed",
                "The compartment could not be opened. Please try again.",
                label,
                detail=self._unlock_failed(door, exc),
            )
        try:
            async with asyncio.timeout(self.open_confirm_s):
                await seen.wait()
        except TimeoutError:
            log.error(  # noqa: TRY400 - an expected outcome, not a traceback
                "door_jammed",
                compartment=label,
                by=actor,
                hint="the lock was pulsed but the door was not seen open; "
                "the compartment is out of service until a technician checks it",
            )
            if await self._finish_without_open(label, intent, "jammed", d.open_not_seen):
                return Outcome(
                    "jammed",
                    "The compartment did not open. Please contact support.",
                    label,
                    detail=f"the lock of {label} was pulsed but its door was not seen open "
                    f"within {self.open_confirm_s:g} s (a jammed lock, or something holds "
                    "the door): it is out of service until a technician checks it",
                )
        return Outcome("opened", f"Compartment {label} is open.", label)

    @staticmethod
    def _unlock_failed(door: Door, exc: Exception) -> str:
        """Why an unlock did not go out (or was not acknowledged), for the technician:
        the driver's word (the port not open, no reply), and the board offline."""
        board = door.board
        why = (
            f"the unlock of {door.label} (board {board.key}, channel {door.channel}) failed: {exc}"
        )
        health = board.bus.health_of(board.key)
        if not health.online:
            why += f"; board {board.key} is offline"
            if (
                not isinstance(exc, PortUnavailable)  # its message says why already
                and health.last_error
                and health.last_error not in str(exc)
            ):
                why += f" ({health.last_error})"
        return why

    async def _finish_without_open(
        self,
        label: str,
        intent: int,
        outcome: IntentOutcome,
        rule: Callable[[d.Compartment, d.Parcel | None, float], d.Change],
    ) -> bool:
        """Record that the door did not open; ``False`` if it was seen open meanwhile."""
        async with self._lock:
            comp = await self.store_thread.run(self.store.compartment, label)
            if comp is None or comp.operation is None or comp.operation.seen_open:
                return False  # seen open after all, in the meantime
            now = self.clock()
            change = rule(comp, await self._parcel_of(comp), now)
            await self._commit(
                change,
                now=now,
                actor="lockerd",
                action=outcome,
                target=label,
                resolve=(intent, outcome),
            )
            return True

    async def _resolve(self, label: str, intent: int, outcome: IntentOutcome) -> None:
        await self._commit(
            d.Change(),
            now=self.clock(),
            actor="lockerd",
            action=outcome,
            target=label,
            resolve=(intent, outcome),
        )

    # ------------------------------------------------------------------ the door monitor
    async def door_changed(self, label: str, is_open: bool, occupied: bool | None = None) -> None:
        """A debounced door state from the monitor. Compared with what the store believes,
        so the first reading after a start (or after a board comes back) counts too: a
        door that opened while nobody watched is still a forced door."""
        async with self._lock:
            comp = await self.store_thread.run(self.store.compartment, label)
            if comp is None or comp.door_open == is_open:
                return
            now = self.clock()
            intents = await self.store_thread.run(self.store.open_intents, label)
            resolve: tuple[int, IntentOutcome] | None = None
            if is_open:
                change = d.door_opened(comp, now)
                if comp.operation is not None and intents:
                    resolve = (intents[-1].id, "opened")
                if change.events and change.events[0].type == "forced_open":
                    log.error(
                        "forced_open",
                        compartment=label,
                        hint="the door opened with no command; check it",
                    )
            else:
                change = d.door_shut(comp, await self._parcel_of(comp), now, occupied=occupied)
                self._alarmed_open.discard(label)
            await self._commit(
                change,
                now=now,
                actor="monitor",
                action="door",
                target=label,
                resolve=resolve,
            )
        if is_open and label in self._seen_open:
            self._seen_open[label].set()

    async def occupancy_seen(self, label: str, occupied: bool) -> None:
        """A steady occupancy reading (boards with sensors), compared with the store."""
        async with self._lock:
            comp = await self.store_thread.run(self.store.compartment, label)
            if comp is None:
                return
            change = d.occupancy_seen(comp, occupied)
            if change.compartment is None and not change.events:
                return
            if change.events:
                log.error(
                    "occupancy_mismatch",
                    compartment=label,
                    sensor="occupied" if occupied else "empty",
                    hint="the occupancy sensor disagrees with the store: look inside, "
                    "then `lockerctl inspect LABEL empty|parcel`",
                )
            await self._commit(
                change, now=self.clock(), actor="monitor", action="occupancy", target=label
            )

    async def hardware_event(self, event: d.Event) -> None:
        """What the monitor saw of the hardware itself (a board offline or back, a failing
        sensor): into the outbox for the cloud, and an alarm where it is one."""
        target = str(event.data.get("compartment") or event.data.get("board"))
        await self.record(
            d.Change(events=(event,)), actor="monitor", action="hardware", target=target
        )

    async def tick(self) -> None:
        """Time-driven rules: parcels past their window expire; doors left open alarm."""
        self.store_thread.check_disk()
        now = self.clock()
        async with self._lock:
            for parcel in await self.store_thread.run(self.store.parcels_due, now):
                change = d.expire(parcel, now)
                if change.parcel is not None:
                    await self._commit(
                        change,
                        now=now,
                        actor="lockerd",
                        action="expire",
                        target=parcel.id,
                    )
            for comp in await self.store_thread.run(self.store.open_for_someone):
                if comp.label in self._alarmed_open:
                    continue
                assert comp.operation is not None
                if await self.store_thread.run(
                    self.store.alarm_raised_since,
                    "door_left_open",
                    comp.label,
                    comp.operation.started_at,
                ):  # this opening alarmed already, before a restart
                    self._alarmed_open.add(comp.label)
                    continue
                change = d.left_open(comp, now, self.left_open_alarm_s)
                if change.events:
                    self._alarmed_open.add(comp.label)
                    log.error("door_left_open", compartment=comp.label)
                    await self._commit(
                        change,
                        now=now,
                        actor="lockerd",
                        action="alarm",
                        target=comp.label,
                    )

    async def parcels(self, states: list[d.ParcelState] | None = None) -> list[d.Parcel]:
        return await self.store_thread.run(self.store.parcels, states)

    async def events(self, after_seq: int = 0, limit: int = 100) -> list[Any]:
        return await self.store_thread.run(self.store.outbox, after_seq, limit)

    async def alarms(self) -> list[dict[str, Any]]:
        return await self.store_thread.run(self.store.alarms)

    async def ack(self, alarm_id: int, *, actor: str) -> Outcome:
        done = await self.store_thread.run(self.store.ack, alarm_id, actor=actor, now=self.clock())
        self._changed()
        if not done:
            return Outcome("refused", f"no open alarm {alarm_id}")
        return Outcome("ok", f"alarm {alarm_id} acknowledged")

    async def ack_all(self, *, actor: str) -> Outcome:
        """Acknowledge every open alarm (each audited as ``actor``'s)."""
        n = await self.store_thread.run(self.store.ack_all, actor=actor, now=self.clock())
        self._changed()
        if not n:
            return Outcome("ok", "no open alarm")
        return Outcome("ok", f"{n} alarm{'s' if n != 1 else ''} acknowledged")

    async def status(self) -> dict[str, Any]:
        comps = await self.store_thread.run(self.store.compartments)
        return {
            "alarms": await self.alarms(),
            "compartments": [
                {
                    "label": c.label,
                    "size": c.size.value,
                    "state": c.state.value,
                    "door_open": c.door_open,
                    "parcel": c.parcel_id,
                }
                for c in comps
            ],
            "throttle": self.throttle.state(self.clock()),
        }


def _why(detail: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """An audit line's detail, with the technician's ``reason`` where one was given."""
    return detail if reason is None else {**detail, "reason": reason}


__all__ = ["Door", "HubService", "Outcome"]
