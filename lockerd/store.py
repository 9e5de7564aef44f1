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
from lockerd.jsonsafe import clean

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
    # 6: tombstones: a code hash spent or replaced at this hub is never accepted again
    # (pruned after the longest validity window: Store.prune('tombstones'))
    """
    CREATE TABLE spent_codes (
        hash TEXT PRIMARY KEY,
        at REAL NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX spent_codes_at ON spent_codes(at);
    """,
    # 7: messages the hub could not handle, set aside with an alarm (never retried
    # forever, never able to stop the hub); final parcels found by age for pruning
    """
    CREATE TABLE quarantine (
        n INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        ref TEXT,
        error TEXT NOT NULL,
        body BLOB NOT NULL
    ) STRICT;
    CREATE INDEX parcels_final ON parcels(updated)
        WHERE state IN ('collected', 'recalled', 'cancelled');
    """,
]

QUARANTINE_BODY_MAX = 64 * 1024  # bytes of a quarantined message kept for analysis


# Each prune deletes at most ``limit`` rows in one short transaction (the caller
# loops, letting door events in between) and returns how many it deleted. Tables
# kept in time order (audit, inbox, intents, quarantine) are pruned from their
# oldest rows only, so a prune never scans the whole table.
def _oldest_first(table: str, key: str, at: str, keep: str = "0") -> str:
    """Delete up to :limit of ``table``'s rows older than :before, oldest first, never
    one that ``keep`` holds. Rows are in ``key`` order as in time: the rows to look at
    are those before the first one of :before or later, found by walking from the
    oldest (no index on the time needed); the few kept ones are stepped over."""
    first_new = f"(SELECT {key} FROM {table} WHERE {at} >= :before ORDER BY {key} LIMIT 1)"  # noqa: S608
    return (  # (our own names only: no input reaches this text)
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608
        f"WHERE {key} < coalesce({first_new}, 9223372036854775807) AND NOT ({keep}) "
        f"ORDER BY {key} LIMIT :limit)"
    )


_PRUNE: dict[str, str] = {
    "audit": _oldest_first("audit", "id", "at"),
    "inbox": _oldest_first(
        "inbox", "rowid", "at", keep="json_extract(reply, '$.status') IS 'opening'"
    ),
    "intents": _oldest_first("intents", "id", "created", keep="outcome IS NULL"),
    "quarantine": _oldest_first("quarantine", "n", "at"),
    # (few rows: alarms, and the outbox of a hub with no cloud to take it)
    "alarms": "DELETE FROM alarms WHERE id IN (SELECT id FROM alarms "
    "WHERE acked IS NOT NULL AND acked < :before ORDER BY id LIMIT :limit)",
    "outbox": _oldest_first("outbox", "seq", "at"),
    "parcels": "DELETE FROM parcels WHERE rowid IN (SELECT rowid FROM parcels "
    "WHERE state IN ('collected', 'recalled', 'cancelled') AND updated < :before "
    "LIMIT :limit)",
    "tombstones": "DELETE FROM spent_codes WHERE hash IN "
    "(SELECT hash FROM spent_codes WHERE at < :before ORDER BY at LIMIT :limit)",
}


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

# not queued for the cloud once the outbox is past its quota (the audit keeps them):
# door telemetry, and reports whose news the retained state snapshot or the command's
# reply also carries
TELEMETRY_EVENTS = frozenset(
    {
        "door_open_requested",
        "door_opened",
        "door_shut",
        "service_door_shut",
        "board_online",
        "compartment_service",
        "command_refused",
    }
)
# the outbox's hard ceiling, as a multiple of its quota: past it the hub also refuses
# what would add events without a person or a parcel behind them (new reservations,
# technicians' service changes) until the cloud has taken its events
CEILING_FACTOR = 2

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
        "message_quarantined",
        "outbox_full",
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


class CodeSpent(StoreConflict):
    """A code hash that was spent or replaced at this hub (a tombstone): never again."""


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
    queue the reply for the cloud now (``False`` while an open is still under way).
    ``remember``: ``False`` for a refusal before the command was authenticated: only
    the reply is queued, and the id stays free for the command done right."""

    command_id: str
    reply: dict[str, Any]
    publish: bool = True
    remember: bool = True


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
        self._over_ceiling = False
        # the newest outbox seq the cloud link has read to publish (it may be on the way;
        # what a previous run left may have been sent already)
        (last,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
        self._handed_out = int(last)
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
        ``{parcel id: "reserved" | "exists" | "code_conflict" | "code_used"}``
        (``code_used``: a code hash spent or replaced here before, a tombstone).

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
            hashes_in = [h for _, codes in items for h in codes.values()]
            spent = _spent(db, hashes_in)
            if look_up_codes:
                taken = {
                    r[0]
                    for r in db.execute(
                        f"SELECT hash FROM codes WHERE hash IN ({','.join('?' * len(hashes_in))})",  # noqa: S608
                        hashes_in,
                    )
                }
            fate, accepted = _sort_out(items, taken_ids, taken, spent)
            # without the lookup, a code already stored fails the insert: StoreConflict
            self._insert_parcels(db, accepted, now, spent_checked=True)
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
        *,
        spent_checked: bool = False,
    ) -> None:
        if not spent_checked and (spent := _spent(db, [h for _, c in items for h in c.values()])):
            raise CodeSpent(f"{len(spent)} code hash(es) used before at this hub")
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
        """Replace a parcel's codes of the given purposes (one live code per purpose).
        A replaced code is tombstoned; a code hash used before at this hub is a
        :class:`CodeSpent` (nothing is stored). The same hash again for the same
        purpose is no change."""
        with self.transaction() as db:
            if spent := _spent(db, list(codes.values())):
                raise CodeSpent(f"{len(spent)} code hash(es) used before at this hub")
            if events:
                self._record(db, events, now=now, actor=actor, action="set_codes", target=parcel_id)
            self._inbox(db, command, now)
            for purpose, code_hash in codes.items():
                key = (parcel_id, purpose.value)
                live = db.execute(
                    "SELECT hash FROM codes WHERE parcel_id=? AND purpose=?", key
                ).fetchone()
                if live is not None and live[0] == code_hash:
                    continue  # the same code again: nothing is replaced
                if live is not None:  # replaced: spent for good
                    self._spend(db, "hash=?", (live[0],), now)
                db.execute(_INSERT_CODE, (code_hash, *key))
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

    def spent(self, code_hash: str) -> bool:
        """Whether a code hash is tombstoned: spent or replaced here, never again."""
        return bool(_spent(self._db, [code_hash]))

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
            self._spend(db, "parcel_id=?", (p.id,), now)  # spent: gone for good
        elif p.state not in (d.ParcelState.RESERVED, d.ParcelState.DEPOSITING):
            # the deposit is confirmed: its code is spent. (While depositing the rules
            # refuse it, and a jammed or abandoned deposit must be able to use it again.)
            self._spend(db, "parcel_id=? AND purpose=?", (p.id, d.Purpose.DEPOSIT.value), now)

    def _spend(self, db: sqlite3.Connection, where: str, args: tuple[Any, ...], now: float) -> None:
        """Delete the codes ``where`` says, each tombstoned: never accepted again."""
        db.execute(
            f"INSERT OR REPLACE INTO spent_codes(hash, at) SELECT hash, ? FROM codes WHERE {where}",  # noqa: S608 - our own clauses
            (now, *args),
        )
        db.execute(f"DELETE FROM codes WHERE {where}", args)  # noqa: S608

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
        # what came from outside (a command's type, a terminal's name) is in some
        # events: stored (and compared) only as text any JSON encoder can send
        evts = [d.Event(e.type, clean(e.data)) for e in events]
        dropped: list[str] = []
        if evts:
            row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seq = int(row[0]) if row else 1
            for e in self._within_quota(db, evts, dropped):
                data = json.dumps(e.data, sort_keys=True)
                if self._coalesced(db, e.type, e.data, data, now, seq):
                    self._tx_events.append(e.type)
                    continue
                db.execute(
                    "INSERT INTO outbox(seq, id, type, at, data) VALUES(?,?,?,?,?)",
                    (seq, str(uuid.uuid4()), e.type, now, data),
                )
                self._tx_events.append(e.type)
                self._outbox_bytes += len(data) + len(e.type) + 64
                seq += 1
                if e.type in ALARM_EVENTS:
                    db.execute(
                        "INSERT INTO alarms(type, target, raised, data) VALUES(?,?,?,?) "
                        "ON CONFLICT DO NOTHING",
                        (e.type, _alarm_target(e.data), now, data),
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
        self, db: sqlite3.Connection, evts: list[d.Event], dropped: list[str]
    ) -> list[d.Event]:
        """Past the outbox quota, door telemetry (and reports the state snapshot also
        carries) is no longer queued for the cloud (the audit keeps it), nor is an
        alarm whose alarm is still open (a door forced again and again, a board that
        flaps: the cloud knows of it already); parcel events and new alarms always are.
        Crossing the quota raises one alarm event, crossing the hard ceiling another.
        ``seq`` stays gapless: a dropped event never takes a number."""
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
        if self.outbox_full and not self._over_ceiling:
            self._over_ceiling = True
            kept.append(
                d.Event(
                    "outbox_full",
                    {
                        "bytes": self._outbox_bytes,
                        "ceiling": self.outbox_quota * CEILING_FACTOR,
                    },
                )
            )
        for e in evts:
            if e.type in TELEMETRY_EVENTS or (
                e.type in ALARM_EVENTS
                and db.execute(
                    "SELECT 1 FROM alarms WHERE type=? AND target=? AND acked IS NULL",
                    (e.type, _alarm_target(e.data)),
                ).fetchone()
            ):
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
        if command.remember:
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

    def quarantine(
        self,
        source: str,
        ref: str | None,
        error: str,
        body: bytes,
        *,
        now: float,
        command: Inbox | None = None,
    ) -> None:
        """Set a message the hub could not handle aside (its first
        :data:`QUARANTINE_BODY_MAX` bytes, for analysis), with a ``message_quarantined``
        alarm and, when it had a usable id, the reply a redelivery gets."""
        event = d.Event(
            "message_quarantined",
            {"source": source, "ref": ref, "error": error[:200], "bytes": len(body)},
        )
        with self.transaction() as db:
            db.execute(
                "INSERT INTO quarantine(at, source, ref, error, body) VALUES(?,?,?,?,?)",
                (now, source, ref, error[:1000], bytes(body[:QUARANTINE_BODY_MAX])),
            )
            self._inbox(db, command, now)
            self._record(db, [event], now=now, actor=source, action="quarantine", target=ref or "-")

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest messages set aside (without their bodies)."""
        return [
            dict(r)
            for r in self._db.execute(
                "SELECT n, at, source, ref, error, length(body) AS bytes FROM quarantine "
                "ORDER BY n DESC LIMIT ?",
                (limit,),
            )
        ]

    # ------------------------------------------------------------------ retention
    def prune(self, table: str, before: float, limit: int = 500) -> int:
        """Delete up to ``limit`` of ``table``'s rows older than ``before`` (see above:
        audit lines, command replies, settled intents, quarantined messages,
        acknowledged alarms, parcels that ended, code tombstones, the outbox of a hub
        without a cloud). Tombstones must outlive any signed command that could carry
        their hash: ``cloud.grant_max_life_s`` plus twice ``command_skew_s``."""
        with self.transaction() as db:
            return int(db.execute(_PRUNE[table], {"limit": limit, "before": before}).rowcount)

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

    def outbox(
        self, after_seq: int = 0, limit: int = 1000, *, publishing: bool = False
    ) -> list[OutboxRow]:
        """Events waiting for the cloud, oldest first. ``publishing``: the cloud link
        reads them to send; from then on they are never changed (see _coalesced)."""
        rows = [
            OutboxRow(r["seq"], r["id"], r["type"], r["at"], json.loads(r["data"]))
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

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def _alarm_target(data: dict[str, Any]) -> str:
    """What an alarm is about: one open alarm per type and target."""
    return str(data.get("compartment") or data.get("board") or data.get("terminal") or "hub")


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


_SPENT_BATCH = 500  # hashes a lookup (well under SQLite's limit on parameters)


def _spent(db: sqlite3.Connection, hashes: list[str]) -> set[str]:
    """Which of ``hashes`` are tombstoned (spent or replaced here before). Looked up in
    hash order, a batch a statement: the index is walked once, leaf after leaf."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for i in range(0, len(wanted), _SPENT_BATCH):
        part = wanted[i : i + _SPENT_BATCH]
        found.update(
            r[0]
            for r in db.execute(
                f"SELECT hash FROM spent_codes WHERE hash IN ({','.join('?' * len(part))})",  # noqa: S608
                part,
            )
        )
    return found


def _sort_out(
    items: list[tuple[d.Parcel, dict[d.Purpose, str]]],
    taken_ids: set[str],
    taken: set[str],
    spent: set[str] | None = None,
) -> tuple[dict[str, str], list[tuple[d.Parcel, dict[d.Purpose, str]]]]:
    """Each parcel's fate, in the batch's order, and the parcels to insert. ``taken_ids``:
    the batch's ids already stored; ``taken``: its code hashes already stored, or an
    empty set when they were not looked up. Then a parcel accepted here may hold a
    stored code, and its insert fails; if none does, every fate is the one the lookup
    would have given (a stored code only ever turns an accepted parcel away: one turned
    away here is turned away with it too, and the parcels accepted before are the same).
    ``spent``: its code hashes that are tombstoned (always looked up): ``code_used``."""
    fate: dict[str, str] = {}
    accepted: list[tuple[d.Parcel, dict[d.Purpose, str]]] = []
    for parcel, codes in items:
        if parcel.id in fate:
            continue  # twice in one batch: the first one's fate stands
        if parcel.id in taken_ids:
            fate[parcel.id] = "exists"
            continue
        mine = list(codes.values())
        if spent and spent.intersection(mine):
            fate[parcel.id] = "code_used"
            continue
        if len(set(mine)) != len(mine) or taken.intersection(mine):
            fate[parcel.id] = "code_conflict"
            continue
        taken.update(mine)
        accepted.append((parcel, codes))
        fate[parcel.id] = "reserved"
    return fate, accepted
