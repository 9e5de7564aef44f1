"""The durable store: one SQLite file, WAL, ``synchronous=FULL``, versioned migrations.

Every state change commits in one transaction together with the events it causes
(the outbox, with a gapless per-hub ``seq`` for the cloud link) and an audit line
(who did what). Opening a door is recorded as an *intent* before the pulse and
its *outcome* after the door monitor's verdict, so a crash in between is found at
start-up and reconciled by reading the doors, never by pulsing again.

A corrupt or unreadable file stops the daemon with :class:`StoreCorrupt`; it is
never recreated. A full disk raises :class:`StoreFull`: the transaction is rolled
back, nothing stored before is lost, and the caller decides (refuse the action,
raise an alarm).

The store is synchronous; the service runs it on one dedicated thread so a slow
fsync never blocks the door monitor's loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lockerd import domain as d

SCHEMA: list[str] = [
    # 1: the hub
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE compartments (
        label TEXT PRIMARY KEY,
        size TEXT NOT NULL,
        accessible INTEGER NOT NULL,
        in_service INTEGER NOT NULL DEFAULT 1,
        content TEXT NOT NULL DEFAULT 'empty',
        parcel_id TEXT,
        door_open INTEGER NOT NULL DEFAULT 0,
        op_purpose TEXT,
        op_parcel TEXT,
        op_started REAL,
        op_seen_open INTEGER,
        op_actor TEXT
    ) STRICT;
    CREATE TABLE parcels (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        size TEXT NOT NULL,
        state TEXT NOT NULL,
        compartment TEXT,
        deposit_from REAL NOT NULL,
        deposit_until REAL NOT NULL,
        collect_window_s REAL NOT NULL,
        collect_until REAL,
        accessible INTEGER NOT NULL,
        has_recall INTEGER NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    ) STRICT;
    CREATE INDEX parcels_live ON parcels(state)
        WHERE state NOT IN ('collected', 'recalled', 'cancelled');
    CREATE UNIQUE INDEX parcels_in_compartment ON parcels(compartment)
        WHERE state IN ('depositing', 'stored', 'collecting', 'expired', 'recalling');
    CREATE TABLE codes (
        hash TEXT PRIMARY KEY,
        parcel_id TEXT NOT NULL REFERENCES parcels(id),
        purpose TEXT NOT NULL
    ) STRICT;
    CREATE INDEX codes_parcel ON codes(parcel_id);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        at REAL NOT NULL,
        data TEXT NOT NULL
    ) STRICT;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY,
        label TEXT NOT NULL,
        purpose TEXT NOT NULL,
        parcel_id TEXT,
        actor TEXT NOT NULL,
        created REAL NOT NULL,
        outcome TEXT,
        decided REAL
    ) STRICT;
    CREATE INDEX intents_open ON intents(label) WHERE outcome IS NULL;
    CREATE TABLE inbox (
        command_id TEXT PRIMARY KEY,
        at REAL NOT NULL,
        reply TEXT NOT NULL
    ) STRICT;
    """,
    # 2: alarms a technician acknowledges
    """
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        target TEXT NOT NULL,
        raised REAL NOT NULL,
        data TEXT NOT NULL,
        acked REAL,
        acked_by TEXT
    ) STRICT;
    CREATE UNIQUE INDEX alarms_open ON alarms(type, target) WHERE acked IS NULL;
    """,
    # 3: the once-a-second expiry check reads only the parcels that are due
    """
    CREATE INDEX parcels_due ON parcels(collect_until) WHERE state = 'stored';
    """,
    # 4: the cloud link: replies waiting for the broker's PUBACK (inbox rows keep the
    # reply a redelivered command gets)
    """
    CREATE TABLE replies (
        n INTEGER PRIMARY KEY,
        command_id TEXT NOT NULL,
        reply TEXT NOT NULL
    ) STRICT;
    """,
    # 5: allocation reads the free compartments of one size through an index
    """
    CREATE INDEX compartments_free ON compartments(size, accessible, label)
        WHERE in_service=1 AND content='empty' AND op_purpose IS NULL AND door_open=0
        AND parcel_id IS NULL;
    """,
]

# a compartment a deposit may take (the partial index compartments_free covers it)
_FREE = (
    "in_service=1 AND content='empty' AND op_purpose IS NULL AND door_open=0 AND parcel_id IS NULL"
)

_INSERT_PARCEL = (
    "INSERT INTO parcels(id, kind, size, state, compartment, deposit_from, deposit_until, "
    "collect_window_s, collect_until, accessible, has_recall, created, updated) "
    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_PARCEL_BLOCK = 32  # new parcels a statement (one multi-row VALUES): see _insert_parcels
_INSERT_PARCEL_BLOCK = _INSERT_PARCEL + ",(?,?,?,?,?,?,?,?,?,?,?,?,?)" * (_PARCEL_BLOCK - 1)
_INSERT_CODE = "INSERT INTO codes(hash, parcel_id, purpose) VALUES(?,?,?)"

# door telemetry: not queued for the cloud once the outbox is past its quota
TELEMETRY_EVENTS = frozenset(
    {"door_open_requested", "door_opened", "door_shut", "service_door_shut", "board_online"}
)

# events that raise an alarm (one open alarm per type and target until acknowledged)
ALARM_EVENTS = frozenset(
    {
        "forced_open",
        "occupancy_mismatch",
        "outbox_quota_reached",
        "door_jammed",
        "door_left_open",
        "code_guessing",
        "code_guessing_hub_wide",
        "board_offline",
        "open_interrupted",
        "sensor_fault",
        "disk_full",
    }
)


class StoreError(Exception):
    """Base of the store's errors."""


class StoreCorrupt(StoreError):
    """The database file is damaged or not a lockerd database: stop, never recreate."""


class StoreFull(StoreError):
    """The disk is full: the change was rolled back; nothing stored before is lost."""


class StoreConflict(StoreError):
    """The change contradicts what is stored (a code already live, a duplicate id)."""


@dataclass(frozen=True)
class Intent:
    id: int
    label: str
    purpose: d.Purpose
    parcel_id: str | None
    actor: str
    created: float


@dataclass(frozen=True)
class Inbox:
    """A cloud command recorded with its effect, in the same transaction: a redelivered
    command finds it and gets ``reply`` again instead of acting twice. ``publish``:
    queue the reply for the cloud now (``False`` while an open is still under way)."""

    command_id: str
    reply: dict[str, Any]
    publish: bool = True


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    at: float
    data: dict[str, Any]


def _translate(exc: sqlite3.Error, path: Path) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("disk is full" in text or "full" in text):
        return StoreFull(f"{path}: the disk is full ({text}); free space on the device")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(text)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
    ):
        return StoreCorrupt(
            f"{path} is damaged ({text}). lockerd will not start on it and never recreates "
            "it: keep the file for analysis, restore the last backup, or move it away to "
            "start an empty hub (its parcels would be lost)"
        )
    return StoreError(f"{path}: {text}")


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # how long the last COMMIT took (writing the WAL and, with synchronous=FULL, the
        # disk's flush): benchmarks take the disk's part out of latency figures with it
        self.last_commit_s = 0.0
        # what committed transactions recorded, by kind (metrics read them): outbox
        # event types, and open intents' outcomes; counted only once committed
        self.committed_events: Counter[str] = Counter()
        self.open_outcomes: Counter[str] = Counter()
        self._tx_events: list[str] = []
        self._tx_outcomes: list[str] = []
        existed = self.path.exists()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            if existed:
                (check,) = self._db.execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise StoreCorrupt(
                        f"{self.path} failed its integrity check ({check}). lockerd will not "
                        "start on it and never recreates it: restore the last backup"
                    )
            self._migrate()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        self.outbox_quota: int | None = None  # bytes; set by the daemon from the config
        self._over_quota = False
        self._outbox_bytes = self.outbox_size()[1]

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ schema
    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(SCHEMA):
            raise StoreCorrupt(
                f"{self.path} has schema version {version}, newer than this lockerd "
                f"({len(SCHEMA)}): run the newer lockerd, or restore a backup"
            )
        if (
            version == 0
            and self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table'"
            ).fetchone()[0]
        ):
            raise StoreCorrupt(f"{self.path} is a database, but not lockerd's")
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            # statement by statement: executescript() would COMMIT first, and a migration
            # and its version number must land together or not at all
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change; ``BEGIN IMMEDIATE`` so writers never deadlock."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        self._tx_events.clear()
        self._tx_outcomes.clear()
        try:
            yield db
            started = time.perf_counter()
            db.execute("COMMIT")
            self.last_commit_s = time.perf_counter() - started
            self.committed_events.update(self._tx_events)
            self.open_outcomes.update(self._tx_outcomes)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise _translate(exc, self.path) from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def probe_write(self, now: float) -> None:
        """A tiny committed write (the watchdog's "is the store writable" check): takes
        the write lock, writes a page, flushes. Raises :class:`StoreError` if it cannot."""
        with self.transaction() as db:
            self._set_meta(db, "alive_at", str(int(now)))

    def _set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # ------------------------------------------------------------------ compartments
    def sync_compartments(self, compartments: Iterable[d.Compartment]) -> None:
        """Make the table match the config: add new doors, update size/accessible;
        a door that holds a parcel is never dropped (the config must keep it)."""
        wanted = {c.label: c for c in compartments}
        with self.transaction() as db:
            have = {r["label"] for r in db.execute("SELECT label FROM compartments")}
            for label, c in wanted.items():
                if label in have:
                    db.execute(
                        "UPDATE compartments SET size=?, accessible=? WHERE label=?",
                        (c.size.value, int(c.accessible), label),
                    )
                else:
                    db.execute(
                        "INSERT INTO compartments(label, size, accessible) VALUES(?, ?, ?)",
                        (label, c.size.value, int(c.accessible)),
                    )
            for label in have - wanted.keys():
                row = db.execute(
                    "SELECT parcel_id FROM compartments WHERE label=?", (label,)
                ).fetchone()
                if row["parcel_id"] is not None:
                    raise StoreConflict(
                        f"compartment {label} holds parcel {row['parcel_id']} but is no longer "
                        "in the config: put it back, or empty it first"
                    )
                db.execute("DELETE FROM compartments WHERE label=?", (label,))

    def compartments(self) -> list[d.Compartment]:
        return [
            _compartment(r) for r in self._db.execute("SELECT * FROM compartments ORDER BY label")
        ]

    def open_for_someone(self) -> list[d.Compartment]:
        """Compartments whose door is open for an operation (the left-open check)."""
        rows = self._db.execute(
            "SELECT * FROM compartments WHERE door_open=1 AND op_purpose IS NOT NULL"
        )
        return [_compartment(r) for r in rows]

    def allocation_candidates(
        self, size: d.Size, *, accessible: bool, fallback: bool, limit: int = 4
    ) -> list[d.Compartment]:
        """The few free compartments :func:`domain.allocate` would choose among, in its
        own order (smallest size, accessible ones kept for those who need them, label):
        a deposit reads a handful of rows through the ``compartments_free`` index, not
        every door of the hub."""
        sizes = [s for s in d.Size if s.rank >= size.rank] if fallback else [size]
        # accessible parcels take only accessible doors; others take the rest first
        kinds = [1] if accessible else [0, 1]
        found: list[d.Compartment] = []
        for s in sorted(sizes, key=lambda x: x.rank):
            for acc in kinds:
                rows = self._db.execute(
                    f"SELECT * FROM compartments WHERE {_FREE} "  # noqa: S608
                    "AND size=? AND accessible=? ORDER BY label LIMIT ?",
                    (s.value, acc, limit - len(found)),
                )
                found += [_compartment(r) for r in rows]
                if len(found) >= limit:
                    return found
        return found

    def compartment(self, label: str) -> d.Compartment | None:
        row = self._db.execute("SELECT * FROM compartments WHERE label=?", (label,)).fetchone()
        return None if row is None else _compartment(row)

    # ------------------------------------------------------------------ parcels and codes
    def parcel(self, parcel_id: str) -> d.Parcel | None:
        row = self._db.execute("SELECT * FROM parcels WHERE id=?", (parcel_id,)).fetchone()
        return None if row is None else _parcel(row)

    def code(self, code_hash: str) -> tuple[d.Parcel, d.Purpose] | None:
        row = self._db.execute(
            "SELECT p.*, c.purpose AS code_purpose FROM codes c JOIN parcels p "
            "ON p.id = c.parcel_id WHERE c.hash=?",
            (code_hash,),
        ).fetchone()
        return None if row is None else (_parcel(row), d.Purpose(row["code_purpose"]))

    def parcels(self, states: Iterable[d.ParcelState] | None = None) -> list[d.Parcel]:
        if states is None:
            rows = self._db.execute("SELECT * FROM parcels ORDER BY created")
        else:
            wanted = [s.value for s in states]
            marks = ",".join("?" * len(wanted))
            rows = self._db.execute(
                f"SELECT * FROM parcels WHERE state IN ({marks}) ORDER BY created",  # noqa: S608
                wanted,
            )
        return [_parcel(r) for r in rows]

    def parcels_due(self, now: float) -> list[d.Parcel]:
        """Stored parcels past their collect window (index ``parcels_due``)."""
        rows = self._db.execute(
            "SELECT * FROM parcels WHERE state='stored' AND collect_until < ?", (now,)
        )
        return [_parcel(r) for r in rows]

    def add_parcel(
        self,
        parcel: d.Parcel,
        codes: dict[d.Purpose, str],
        *,
        now: float,
        actor: str,
        events: Iterable[d.Event] = (),
        command: Inbox | None = None,
    ) -> None:
        """A new reservation with its code hashes, atomically; a code hash already live
        for another parcel is a :class:`StoreConflict` (nothing is stored)."""
        with self.transaction() as db:
            self._insert_parcels(db, [(parcel, codes)], now)
            self._record(db, events, now=now, actor=actor, action="reserve", target=parcel.id)
            self._inbox(db, command, now)

    def add_parcels(
        self,
        items: list[tuple[d.Parcel, dict[d.Purpose, str]]],
        *,
        now: float,
        actor: str,
        events: Iterable[d.Event] = (),
        command: Inbox | None = None,
    ) -> None:
        """Many reservations in one transaction (first sync, recovery, ``codes.bulk``)."""
        with self.transaction() as db:
            self._insert_parcels(db, items, now)
            if events:
                self._record(db, events, now=now, actor=actor, action="reserve", target="*")
            self._inbox(db, command, now)
            self._audit(
                db,
                now=now,
                actor=actor,
                action="reserve_bulk",
                target="*",
                detail={"parcels": len(items)},
            )

    def add_new_parcels(
        self, items: list[tuple[d.Parcel, dict[d.Purpose, str]]], *, now: float, actor: str
    ) -> dict[str, str]:
        """Reservations in one transaction, each kept only if its id and codes are new:
        ``{parcel id: "reserved" | "exists" | "code_conflict"}``.

        The ids are looked up first; the codes are not: they are inserted as if none were
        stored yet, the codes' unique index checking each on the way in (looking up
        random code hashes first was a second read of as many index pages). When one is
        already stored (rare: the cloud re-used a live code), that transaction is rolled
        back and done again with every code looked up first: the fates are the same
        either way (see :func:`_sort_out`)."""
        try:
            return self._add_new_parcels(items, now=now, actor=actor, look_up_codes=False)
        except StoreConflict:
            return self._add_new_parcels(items, now=now, actor=actor, look_up_codes=True)

    def _add_new_parcels(
        self,
        items: list[tuple[d.Parcel, dict[d.Purpose, str]]],
        *,
        now: float,
        actor: str,
        look_up_codes: bool,
    ) -> dict[str, str]:
        with self.transaction() as db:
            ids = [p.id for p, _ in items]
            # one lookup for the whole batch, not one per parcel
            taken_ids = {
                r[0]
                for r in db.execute(
                    f"SELECT id FROM parcels WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608
                    ids,
                )
            }
            taken: set[str] = set()
            if look_up_codes:
                hashes_in = [h for _, codes in items for h in codes.values()]
                taken = {
                    r[0]
                    for r in db.execute(
                        f"SELECT hash FROM codes WHERE hash IN ({','.join('?' * len(hashes_in))})",  # noqa: S608
                        hashes_in,
                    )
                }
            fate, accepted = _sort_out(items, taken_ids, taken)
            # without the lookup, a code already stored fails the insert: StoreConflict
            self._insert_parcels(db, accepted, now)
            self._audit(
                db,
                now=now,
                actor=actor,
                action="reserve_bulk",
                target="*",
                detail={"offered": len(items), "reserved": len(accepted)},
            )
        return fate

    def _insert_parcels(
        self,
        db: sqlite3.Connection,
        items: list[tuple[d.Parcel, dict[d.Purpose, str]]],
        now: float,
    ) -> None:
        # a recall code given with the reservation makes the parcel recallable
        rows = [
            _new_parcel_row(
                replace(p, has_recall_code=True) if d.Purpose.RECALL in codes else p, now
            )
            for p, codes in items
        ]
        # parcels in their order, _PARCEL_BLOCK rows a statement (run once per row, the
        # statement cost about as much again as the row's insert)
        whole = len(rows) - len(rows) % _PARCEL_BLOCK
        db.executemany(
            _INSERT_PARCEL_BLOCK,
            [
                tuple(v for row in rows[i : i + _PARCEL_BLOCK] for v in row)
                for i in range(0, whole, _PARCEL_BLOCK)
            ],
        )
        db.executemany(_INSERT_PARCEL, rows[whole:])
        # codes in hash order: the unique index on the (random) hash is walked once, leaf
        # after leaf, instead of jumping about and re-reading (and re-writing, once the
        # page cache spilled them) the same pages. One row a statement: a statement of
        # many rows journals every index page it touches, in case it must be undone
        db.executemany(
            _INSERT_CODE,
            sorted((h, p.id, purpose.value) for p, codes in items for purpose, h in codes.items()),
        )

    def set_codes(
        self,
        parcel_id: str,
        codes: dict[d.Purpose, str],
        *,
        now: float,
        actor: str,
        events: Iterable[d.Event] = (),
        command: Inbox | None = None,
    ) -> None:
        """Replace a parcel's codes of the given purposes (one live code per purpose)."""
        with self.transaction() as db:
            if events:
                self._record(db, events, now=now, actor=actor, action="set_codes", target=parcel_id)
            self._inbox(db, command, now)
            for purpose, code_hash in codes.items():
                db.execute(
                    "DELETE FROM codes WHERE parcel_id=? AND purpose=?", (parcel_id, purpose.value)
                )
                db.execute(
                    "INSERT INTO codes(hash, parcel_id, purpose) VALUES(?,?,?)",
                    (code_hash, parcel_id, purpose.value),
                )
            if d.Purpose.RECALL in codes:
                db.execute(
                    "UPDATE parcels SET has_recall=1, updated=? WHERE id=?", (now, parcel_id)
                )
            self._audit(
                db,
                now=now,
                actor=actor,
                action="set_codes",
                target=parcel_id,
                detail={"purposes": [p.value for p in codes]},
            )

    # ------------------------------------------------------------------ applying a change
    def apply(
        self,
        change: d.Change,
        *,
        now: float,
        actor: str,
        action: str,
        target: str,
        intent: tuple[str, d.Purpose, str | None] | None = None,
        resolve: tuple[int, str] | None = None,
        command: Inbox | None = None,
    ) -> int | None:
        """Commit a domain change with its events (outbox), an audit line, and the
        intent it opens or the intent outcome it records. Returns the new intent's id."""
        if change.refused:
            raise ValueError("a refused change is not applied")
        with self.transaction() as db:
            self._inbox(db, command, now)
            if change.parcel is not None:
                self._save_parcel(db, change.parcel, now)
            if change.compartment is not None:
                self._save_compartment(db, change.compartment)
            intent_id = None
            if intent is not None:
                label, purpose, parcel_id = intent
                cur = db.execute(
                    "INSERT INTO intents(label, purpose, parcel_id, actor, created) "
                    "VALUES(?,?,?,?,?)",
                    (label, purpose.value, parcel_id, actor, now),
                )
                intent_id = cur.lastrowid
            if resolve is not None:
                cur = db.execute(
                    "UPDATE intents SET outcome=?, decided=? WHERE id=? AND outcome IS NULL",
                    (resolve[1], now, resolve[0]),
                )
                if cur.rowcount:
                    self._tx_outcomes.append(resolve[1])
            self._record(db, change.events, now=now, actor=actor, action=action, target=target)
            return intent_id

    def _save_parcel(self, db: sqlite3.Connection, p: d.Parcel, now: float) -> None:
        db.execute(
            "UPDATE parcels SET state=?, compartment=?, collect_until=?, has_recall=?, "
            "updated=? WHERE id=?",
            (p.state.value, p.compartment, p.collect_until, int(p.has_recall_code), now, p.id),
        )
        if p.state in d.FINAL:
            db.execute("DELETE FROM codes WHERE parcel_id=?", (p.id,))  # spent: gone for good
        elif p.state not in (d.ParcelState.RESERVED, d.ParcelState.DEPOSITING):
            # the deposit is confirmed: its code is spent. (While depositing the rules
            # refuse it, and a jammed or abandoned deposit must be able to use it again.)
            db.execute(
                "DELETE FROM codes WHERE parcel_id=? AND purpose=?", (p.id, d.Purpose.DEPOSIT.value)
            )

    def _save_compartment(self, db: sqlite3.Connection, c: d.Compartment) -> None:
        op = c.operation
        db.execute(
            "UPDATE compartments SET in_service=?, content=?, parcel_id=?, door_open=?, "
            "op_purpose=?, op_parcel=?, op_started=?, op_seen_open=?, op_actor=? WHERE label=?",
            (
                int(c.in_service),
                c.content.value,
                c.parcel_id,
                int(c.door_open),
                op.purpose.value if op else None,
                op.parcel_id if op else None,
                op.started_at if op else None,
                int(op.seen_open) if op else None,
                op.actor if op else None,
                c.label,
            ),
        )

    def _record(
        self,
        db: sqlite3.Connection,
        events: Iterable[d.Event],
        *,
        now: float,
        actor: str,
        action: str,
        target: str,
    ) -> None:
        evts = list(events)
        dropped: list[str] = []
        if evts:
            row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq = int(row[0]) if row else 1
            for e in self._within_quota(evts, dropped):
                data = json.dumps(e.data, sort_keys=True)
                db.execute(
                    "INSERT INTO outbox(seq, id, type, at, data) VALUES(?,?,?,?,?)",
                    (seq, str(uuid.uuid4()), e.type, now, data),
                )
                self._tx_events.append(e.type)
                self._outbox_bytes += len(data) + len(e.type) + 64
                seq += 1
                if e.type in ALARM_EVENTS:
                    target = str(
                        e.data.get("compartment")
                        or e.data.get("board")
                        or e.data.get("terminal")
                        or "hub"
                    )
                    db.execute(
                        "INSERT INTO alarms(type, target, raised, data) VALUES(?,?,?,?) "
                        "ON CONFLICT DO NOTHING",
                        (e.type, target, now, data),
                    )
            self._set_meta(db, "next_seq", str(seq))
            self._tx_events.extend(dropped)  # not queued for the cloud, but they happened
        self._audit(
            db,
            now=now,
            actor=actor,
            action=action,
            target=target,
            detail={"events": [e.type for e in evts], **({"dropped": dropped} if dropped else {})},
        )

    def _within_quota(self, evts: list[d.Event], dropped: list[str]) -> list[d.Event]:
        """Past the outbox quota, door telemetry is no longer queued for the cloud (the
        audit keeps it); parcel events and alarms always are. Crossing the quota raises
        one alarm event. ``seq`` stays gapless: a dropped event never takes a number."""
        if self.outbox_quota is None or self._outbox_bytes < self.outbox_quota:
            return evts
        kept = []
        if not self._over_quota:
            self._over_quota = True
            kept.append(
                d.Event(
                    "outbox_quota_reached",
                    {"bytes": self._outbox_bytes, "quota": self.outbox_quota},
                )
            )
        for e in evts:
            if e.type in TELEMETRY_EVENTS:
                dropped.append(e.type)
            else:
                kept.append(e)
        return kept

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

    # ------------------------------------------------------------------ the cloud's commands
    def _inbox(self, db: sqlite3.Connection, command: Inbox | None, now: float) -> None:
        if command is None:
            return
        reply = json.dumps(command.reply, sort_keys=True)
        db.execute(
            "INSERT INTO inbox(command_id, at, reply) VALUES(?,?,?) "
            "ON CONFLICT(command_id) DO UPDATE SET reply=excluded.reply",
            (command.command_id, now, reply),
        )
        if command.publish:
            db.execute(
                "INSERT INTO replies(command_id, reply) VALUES(?,?)", (command.command_id, reply)
            )

    def answer(self, command: Inbox, *, now: float) -> None:
        """Record a command's reply alone (a refusal, or the final word on an open)."""
        with self.transaction() as db:
            self._inbox(db, command, now)

    def inbox(self, command_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT reply FROM inbox WHERE command_id=?", (command_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def unfinished_commands(self) -> list[tuple[str, dict[str, Any]]]:
        """Commands whose effect began (an open) but whose final reply was never made:
        the daemon stopped in between."""
        rows = self._db.execute(
            "SELECT command_id, reply FROM inbox WHERE json_extract(reply, '$.status') = ?",
            ("opening",),
        )
        return [(r[0], dict(json.loads(r[1]))) for r in rows]

    def replies(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        return [
            (r[0], dict(json.loads(r[1])))
            for r in self._db.execute("SELECT n, reply FROM replies ORDER BY n LIMIT ?", (limit,))
        ]

    def delete_replies(self, ns: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM replies WHERE n=?", [(n,) for n in ns])

    def next_boot(self) -> int:
        """This start's boot number (``boot_seq`` of the cloud link's birth and will)."""
        with self.transaction() as db:
            boot = int(self.get_meta("boot_seq") or 0) + 1
            self._set_meta(db, "boot_seq", str(boot))
            return boot

    def outbox_size(self) -> tuple[int, int]:
        """Events waiting for the cloud, and the bytes they take (roughly, on disk)."""
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(data) + length(type) + 64), 0) FROM outbox"
        ).fetchone()
        return int(count), int(size)

    def oldest_event_at(self) -> float | None:
        row = self._db.execute("SELECT at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    # ------------------------------------------------------------------ intents, outbox, audit
    def open_intents(self, label: str | None = None) -> list[Intent]:
        """Intents without an outcome, all or one compartment's (index ``intents_open``)."""
        if label is None:
            rows = self._db.execute("SELECT * FROM intents WHERE outcome IS NULL ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT * FROM intents WHERE outcome IS NULL AND label=? ORDER BY id", (label,)
            )
        return [
            Intent(
                r["id"],
                r["label"],
                d.Purpose(r["purpose"]),
                r["parcel_id"],
                r["actor"],
                r["created"],
            )
            for r in rows
        ]

    def outbox(self, after_seq: int = 0, limit: int = 1000) -> list[OutboxRow]:
        return [
            OutboxRow(r["seq"], r["id"], r["type"], r["at"], json.loads(r["data"]))
            for r in self._db.execute(
                "SELECT * FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
        ]

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

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def _compartment(r: sqlite3.Row) -> d.Compartment:
    op = None
    if r["op_purpose"] is not None:
        op = d.Operation(
            d.Purpose(r["op_purpose"]),
            r["op_parcel"],
            r["op_started"],
            bool(r["op_seen_open"]),
            r["op_actor"] or "",
        )
    return d.Compartment(
        r["label"],
        d.Size(r["size"]),
        bool(r["accessible"]),
        bool(r["in_service"]),
        d.Content(r["content"]),
        r["parcel_id"],
        op,
        bool(r["door_open"]),
    )


def _parcel(r: sqlite3.Row) -> d.Parcel:
    return d.Parcel(
        r["id"],
        d.Kind(r["kind"]),
        d.Size(r["size"]),
        d.ParcelState(r["state"]),
        r["compartment"],
        r["deposit_from"],
        r["deposit_until"],
        r["collect_window_s"],
        r["collect_until"],
        bool(r["accessible"]),
        bool(r["has_recall"]),
    )


def _new_parcel_row(p: d.Parcel, now: float) -> tuple[Any, ...]:
    """A new parcel's row for :data:`_INSERT_PARCEL` (created and updated now)."""
    return (
        p.id,
        p.kind.value,
        p.size.value,
        p.state.value,
        p.compartment,
        p.deposit_from,
        p.deposit_until,
        p.collect_window_s,
        p.collect_until,
        int(p.accessible),
        int(p.has_recall_code),
        now,
        now,
    )


def _sort_out(
    items: list[tuple[d.Parcel, dict[d.Purpose, str]]], taken_ids: set[str], taken: set[str]
) -> tuple[dict[str, str], list[tuple[d.Parcel, dict[d.Purpose, str]]]]:
    """Each parcel's fate, in the batch's order, and the parcels to insert. ``taken_ids``:
    the batch's ids already stored; ``taken``: its code hashes already stored, or an
    empty set when they were not looked up. Then a parcel accepted here may hold a
    stored code, and its insert fails; if none does, every fate is the one the lookup
    would have given (a stored code only ever turns an accepted parcel away: one turned
    away here is turned away with it too, and the parcels accepted before are the same)."""
    fate: dict[str, str] = {}
    accepted: list[tuple[d.Parcel, dict[d.Purpose, str]]] = []
    for parcel, codes in items:
        if parcel.id in fate:
            continue  # twice in one batch: the first one's fate stands
        if parcel.id in taken_ids:
            fate[parcel.id] = "exists"
            continue
        mine = list(codes.values())
        if len(set(mine)) != len(mine) or taken.intersection(mine):
            fate[parcel.id] = "code_conflict"
            continue
        taken.update(mine)
        accepted.append((parcel, codes))
        fate[parcel.id] = "reserved"
    return fate, accepted
