"""What a committed change leaves behind: its events in the outbox (for the cloud, with
a gapless ``seq``, within a quota and a hard ceiling) and in the local history (all of
them, :mod:`.history`), the alarms some events raise (one open alarm per type and
target until a technician acknowledges it, or an event says it is over: a board back
online), and its audit line (who did what).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from lockerd.hub import domain as d
from lockerd.hub.jsonsafe import clean
from lockerd.hub.store.history import HistoryMixin
from lockerd.hub.store.rows import AuditRow, OutboxRow, to_audit_row, to_outbox_row
from lockerd.hub.vocab import ALARM_CLEARED_BY, ALARM_KINDS, TELEMETRY_KINDS

# not queued for the cloud once the outbox is past its quota (the audit keeps them):
# door telemetry, and reports whose news the retained state snapshot or the command's
# reply also carries (the list: lockerd.hub.vocab)
TELEMETRY_EVENTS = TELEMETRY_KINDS
# the outbox's hard ceiling, as a multiple of its quota: past it the hub also refuses
# what would add events without a person or a parcel behind them (new reservations,
# technicians' service changes) until the cloud has taken its events
CEILING_FACTOR = 2

# events that raise an alarm (one open alarm per type and target until acknowledged;
# the list: lockerd.hub.vocab)
ALARM_EVENTS = ALARM_KINDS


def event_id() -> str:
    """A new event's id: a UUID of version 7 (RFC 9562), the time in milliseconds
    first and random bits after. Unique as any; in time order, so the outbox's unique
    index on it grows at its end instead of at random pages (a ``codes.bulk`` of
    100,000 reservations queues as many events)."""
    value = (time.time_ns() // 1_000_000 & _MS_MASK) << 80 | int.from_bytes(os.urandom(10))
    return str(uuid.UUID(int=value & _VERSION_CLEAR | _VERSION_7))


_MS_MASK = (1 << 48) - 1
_VERSION_CLEAR = ~((0xF << 76) | (0x3 << 62))  # the version's and the variant's bits
_VERSION_7 = (0x7 << 76) | (0x2 << 62)  # version 7, the RFC's variant


def alarm_target(data: dict[str, Any]) -> str:
    """What an alarm is about: one open alarm per type and target."""
    return str(data.get("compartment") or data.get("board") or data.get("terminal") or "hub")


class OutboxMixin(HistoryMixin):
    """The ``outbox``, ``alarms`` and ``audit`` tables: :meth:`_record` writes a
    change's events (the history's too) and audit line inside the change's
    transaction."""

    outbox_quota: int | None  # bytes; set by the daemon from the config
    _over_quota: bool
    _over_ceiling: bool
    # the newest outbox seq the cloud link has read to publish (it may be on the way;
    # what a previous run left may have been sent already)
    _handed_out: int
    _outbox_bytes: int  # what the outbox takes, kept up to date as it changes

    def _load_outbox(self) -> None:
        """The outbox's bookkeeping, from what the file holds (once, when it opens)."""
        self.outbox_quota = None
        self._over_quota = False
        self._over_ceiling = False
        (last,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
        self._handed_out = int(last)
        self._outbox_bytes = self.outbox_size()[1]

    def _record(
        self,
        db: sqlite3.Connection,
        events: Iterable[d.Event],
        *,
        now: float,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """A change's events (queued for the cloud within the quota, alarms opened and
        cleared, all of them in the history) and its audit line, in the change's
        transaction ``db``. ``detail``: what the audit line says besides the events
        (why: a technician's reason, the state a service change or inspection set)."""
        # what came from outside (a command's type, a terminal's name) is in some
        # events: stored (and compared) only as text any JSON encoder can send
        evts = [d.Event(e.type, clean(e.data)) for e in events]
        dropped = self._queue(db, evts, now=now, actor=actor, targets=[target] * len(evts))
        self._audit(
            db,
            now=now,
            actor=actor,
            action=action,
            target=target,
            detail={
                **clean(detail or {}),
                "events": [e.type for e in evts],
                **({"dropped": dropped} if dropped else {}),
            },
        )

    def _queue(
        self,
        db: sqlite3.Connection,
        evts: list[d.Event],
        *,
        now: float,
        actor: str,
        targets: Sequence[str],
    ) -> list[str]:
        """Events (``clean`` already; each with its target) into the history, and into
        the outbox for the cloud within the quota; the alarms they raise opened, those
        they clear acknowledged. Returns the types not queued for the cloud."""
        if not evts:
            return []
        row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        seq = int(row[0]) if row else 1
        notices, queued = self._within_quota(db, evts)
        texts = [json.dumps(e.data, sort_keys=True) for e in evts]
        dropped: list[str] = []
        pending: list[tuple[int, str, str, float, str]] = []  # outbox rows, in seq order
        history: list[tuple[float, str, str, str, str]] = []
        for e, text, target, keep in itertools.chain(
            ((n, json.dumps(n.data, sort_keys=True), "outbox", True) for n in notices),
            zip(evts, texts, targets, queued, strict=True),
        ):
            history.append((now, e.type, text, actor, target))
            if not keep:
                dropped.append(e.type)
                continue
            self._tx_events.append(e.type)
            if e.type == "compartment_service":
                self._insert_outbox(db, pending)  # the newest row is looked at
                if self._coalesced(db, e.type, e.data, text, now, seq):
                    continue
            pending.append((seq, event_id(), e.type, now, text))
            self._outbox_bytes += len(text) + len(e.type) + 64
            seq += 1
            if e.type in ALARM_EVENTS:
                db.execute(
                    "INSERT INTO alarms(type, target, raised, data) VALUES(?,?,?,?) "
                    "ON CONFLICT DO NOTHING",
                    (e.type, alarm_target(e.data), now, text),
                )
        self._insert_outbox(db, pending)
        self._set_meta(db, "next_seq", str(seq))
        self._tx_events.extend(dropped)  # not queued for the cloud, but they happened
        self._write_history(db, history)
        for e in evts:
            if (cleared := ALARM_CLEARED_BY.get(e.type)) is not None:
                self._clear_alarm(db, cleared, alarm_target(e.data), e.type, now)
        return dropped

    @staticmethod
    def _insert_outbox(
        db: sqlite3.Connection, pending: list[tuple[int, str, str, float, str]]
    ) -> None:
        """Outbox rows (seq, id, type, at, data), written and taken off ``pending``."""
        if pending:
            db.executemany("INSERT INTO outbox(seq, id, type, at, data) VALUES(?,?,?,?,?)", pending)
            pending.clear()

    def _clear_alarm(
        self, db: sqlite3.Connection, kind: str, target: str, by: str, now: float
    ) -> None:
        """The open alarm ``kind`` of ``target`` is over (a board came back): the hub
        acknowledges it itself, audited as ``lockerd``'s."""
        for (alarm_id,) in db.execute(
            "UPDATE alarms SET acked=?, acked_by='lockerd' "
            "WHERE type=? AND target=? AND acked IS NULL RETURNING id",
            (now, kind, target),
        ).fetchall():
            self._audit(
                db,
                now=now,
                actor="lockerd",
                action="ack",
                target=str(alarm_id),
                detail={"type": kind, "target": target, "cleared_by": by},
            )

    def _coalesced(  # noqa: PLR0917 - the event as _record holds it
        self,
        db: sqlite3.Connection,
        type_: str,
        data: dict[str, Any],
        text: str,
        now: float,
        seq: int,
    ) -> bool:
        """A compartment's service flag flipped again before the cloud link took the
        last flip: that event (still the newest in the outbox, never handed to the
        publisher) is updated to say the newest state, instead of a new event. A
        technician (or a script) toggling a door cannot flood the outbox; ``seq`` stays
        gapless and the cloud still learns the final state and who set it."""
        if type_ != "compartment_service" or seq - 1 <= self._handed_out:
            return False
        row = db.execute("SELECT type, data FROM outbox WHERE seq=?", (seq - 1,)).fetchone()
        if row is None or row["type"] != type_:
            return False
        if json.loads(row["data"]).get("compartment") != data.get("compartment"):
            return False
        db.execute("UPDATE outbox SET data=?, at=? WHERE seq=?", (text, now, seq - 1))
        self._outbox_bytes += len(text) - len(row["data"])
        return True

    @property
    def outbox_full(self) -> bool:
        """The outbox is at its hard ceiling (:data:`CEILING_FACTOR` times the quota)."""
        return (
            self.outbox_quota is not None
            and self._outbox_bytes >= self.outbox_quota * CEILING_FACTOR
        )

    def _within_quota(
        self, db: sqlite3.Connection, evts: list[d.Event]
    ) -> tuple[list[d.Event], list[bool]]:
        """Past the outbox quota, door telemetry (and reports the state snapshot also
        carries) is no longer queued for the cloud (the history and the audit keep it),
        nor is an alarm whose alarm is still open (a door forced again and again, a
        board that flaps: the cloud knows of it already); parcel events and new alarms
        always are. Crossing the quota raises one alarm event, crossing the hard
        ceiling another: those notices come first, then whether each of ``evts`` is
        queued. ``seq`` stays gapless: a dropped event never takes a number."""
        if self.outbox_quota is None or self._outbox_bytes < self.outbox_quota:
            return [], [True] * len(evts)
        notices = []
        if not self._over_quota:
            self._over_quota = True
            notices.append(
                d.Event(
                    "outbox_quota_reached",
                    {"bytes": self._outbox_bytes, "quota": self.outbox_quota},
                )
            )
        if self.outbox_full and not self._over_ceiling:
            self._over_ceiling = True
            notices.append(
                d.Event(
                    "outbox_full",
                    {
                        "bytes": self._outbox_bytes,
                        "ceiling": self.outbox_quota * CEILING_FACTOR,
                    },
                )
            )
        queued = [
            not (
                e.type in TELEMETRY_EVENTS
                or (
                    e.type in ALARM_EVENTS
                    and db.execute(
                        "SELECT 1 FROM alarms WHERE type=? AND target=? AND acked IS NULL",
                        (e.type, alarm_target(e.data)),
                    ).fetchone()
                )
            )
            for e in evts
        ]
        return notices, queued

    def _audit(
        self,
        db: sqlite3.Connection,
        *,
        now: float,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO audit(at, actor, action, target, detail) VALUES(?,?,?,?,?)",
            (now, actor, action, target, json.dumps(detail, sort_keys=True)),
        )

    def audit_refused(
        self, *, now: float, actor: str, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        """One audit line for an action the hub refused (a technician's open of a door
        already busy, a cancel of a parcel it does not know): action ``refused:ACTION``,
        ``detail`` the refusal (``refused``: its word; ``why``: the technician's
        reason for it), and nothing else written. Only for actors that are rate-limited
        and authenticated (the technician socket): a terminal's forbidden requests are
        logged, never audited, so a keypad cannot fill the disk."""
        with self.transaction() as db:
            self._audit(
                db,
                now=now,
                actor=actor,
                action=f"refused:{action}",
                target=target,
                detail=clean(detail),
            )

    def outbox_size(self) -> tuple[int, int]:
        """Events waiting for the cloud, and the bytes they take (roughly, on disk)."""
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(data) + length(type) + 64), 0) FROM outbox"
        ).fetchone()
        return int(count), int(size)

    def oldest_event_at(self) -> float | None:
        row = self._db.execute("SELECT at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def outbox(
        self, after_seq: int = 0, limit: int = 1000, *, publishing: bool = False
    ) -> list[OutboxRow]:
        """Events waiting for the cloud, oldest first. ``publishing``: the cloud link
        reads them to send; from then on they are never changed (see _coalesced)."""
        rows = [
            to_outbox_row(r)
            for r in self._db.execute(
                "SELECT * FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
        ]
        if publishing and rows:
            self._handed_out = max(self._handed_out, rows[-1].seq)
        return rows

    def delete_outbox(self, seqs: Iterable[int]) -> None:
        """Events the broker acknowledged (PUBACK): gone from the outbox."""
        wanted = [(s,) for s in seqs]
        with self.transaction() as db:
            freed = 0
            for (seq,) in wanted:
                row = db.execute(
                    "DELETE FROM outbox WHERE seq=? RETURNING length(data) + length(type) + 64",
                    (seq,),
                ).fetchone()
                freed += row[0] if row else 0
        self._outbox_bytes = max(0, self._outbox_bytes - freed)
        if self._over_quota and self.outbox_quota and self._outbox_bytes < self.outbox_quota * 0.8:
            self._over_quota = False
        if self._over_ceiling and not self.outbox_full:
            self._over_ceiling = False

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {**dict(r), "detail": json.loads(r["detail"])}
            for r in self._db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        ]

    def alarms(self, *, open_only: bool = True) -> list[dict[str, Any]]:
        where = "WHERE acked IS NULL" if open_only else ""
        return [
            {**dict(r), "data": json.loads(r["data"])}
            for r in self._db.execute(f"SELECT * FROM alarms {where} ORDER BY id")  # noqa: S608
        ]

    def alarm_raised_since(self, type_: str, target: str, since: float) -> bool:
        """Whether an alarm (acknowledged or not) of this type and target was raised at
        or after ``since``."""
        row = self._db.execute(
            "SELECT 1 FROM alarms WHERE type=? AND target=? AND raised >= ? LIMIT 1",
            (type_, target, since),
        ).fetchone()
        return row is not None

    def ack(self, alarm_id: int, *, actor: str, now: float) -> bool:
        """Acknowledge an open alarm; ``False`` if there is no such open alarm."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE alarms SET acked=?, acked_by=? WHERE id=? AND acked IS NULL",
                (now, actor, alarm_id),
            )
            if cur.rowcount:
                self._audit(db, now=now, actor=actor, action="ack", target=str(alarm_id), detail={})
            return bool(cur.rowcount)

    def ack_all(self, *, actor: str, now: float) -> int:
        """Acknowledge every open alarm (an audit line each); how many there were."""
        with self.transaction() as db:
            acked = db.execute(
                "UPDATE alarms SET acked=?, acked_by=? WHERE acked IS NULL "
                "RETURNING id, type, target",
                (now, actor),
            ).fetchall()
            for alarm_id, kind, target in sorted(tuple(r) for r in acked):
                self._audit(
                    db,
                    now=now,
                    actor=actor,
                    action="ack",
                    target=str(alarm_id),
                    detail={"type": kind, "target": target, "all": True},
                )
            return len(acked)

    def audit_log(self, *, limit: int, since: float | None = None) -> list[AuditRow]:
        """The newest ``limit`` audit lines, newest first; with ``since``, only those
        of that time or later. Lines are in time order: the read stops at the first
        older one (never the whole trail for a short answer)."""
        rows: list[AuditRow] = []
        if limit <= 0:
            return rows
        cur = self._db.execute("SELECT * FROM audit ORDER BY id DESC")
        try:
            for r in cur:
                if since is not None and r["at"] < since:
                    break
                rows.append(to_audit_row(r))
                if len(rows) >= limit:
                    break
        finally:
            cur.close()  # the read ends here, not when the cursor is collected
        return rows
