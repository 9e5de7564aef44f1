"""The file itself: the schema's migrations in order, and how the file is opened.

:data:`SCHEMA` holds one script per schema version (``PRAGMA user_version`` says how
many a file has had); a new version is a new script at the end, never an edit of an
old one. :func:`connect` opens the file with lockerd's PRAGMAs (WAL,
``synchronous=FULL``, foreign keys, a busy timeout) and checks a file that was there
already; :func:`migrate` brings it up to date, each script and its version number in
one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from lockerd.hub.store.errors import StoreCorrupt

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
    # 8: the local history: every event the hub recorded, with who (actor) and what
    # (target) of the change behind it, whether the cloud took it or not (the outbox is
    # emptied as it does), kept as long as the audit (Store.history, pruned with
    # retention.audit_days). Events still in the outbox are its first rows (who is not
    # known for them: actor '-')
    """
    CREATE TABLE history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        actor TEXT NOT NULL,
        target TEXT NOT NULL
    ) STRICT;
    CREATE INDEX history_at ON history(at);
    INSERT INTO history(at, type, data, actor, target)
        SELECT at, type, data, '-', coalesce(json_extract(data, '$.parcel'),
            json_extract(data, '$.compartment'), json_extract(data, '$.board'), '-')
        FROM outbox ORDER BY seq;
    """,
    # 9: reservations end when their deposit window passes (domain.expire): found by
    # the tick, once a second, without a scan
    """
    CREATE INDEX parcels_lapsing ON parcels(deposit_until) WHERE state = 'reserved';
    """,
]


def connect(path: Path) -> sqlite3.Connection:
    """Open the store's file (made if missing) with lockerd's PRAGMAs. A file that was
    there already must pass SQLite's quick check, or :class:`StoreCorrupt`. SQLite's
    own errors are raised as they are (the caller translates them)."""
    existed = path.exists()
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=5000")
    if existed:
        (check,) = db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise StoreCorrupt(
                f"{path} failed its integrity check ({check}). lockerd will not "
                "start on it and never recreates it: restore the last backup"
            )
    return db


def migrate(
    db: sqlite3.Connection,
    path: Path,
    schema: Sequence[str],
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
) -> None:
    """Run the scripts of ``schema`` the file has not had yet, each in a ``transaction``
    of the store's. A file of a newer lockerd, or a database that is not lockerd's, is
    :class:`StoreCorrupt`."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > len(schema):
        raise StoreCorrupt(
            f"{path} has schema version {version}, newer than this lockerd "
            f"({len(schema)}): run the newer lockerd, or restore a backup"
        )
    if (
        version == 0
        and db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
    ):
        raise StoreCorrupt(f"{path} is a database, but not lockerd's")
    for number, script in enumerate(schema[version:], start=version + 1):
        # statement by statement: executescript() would COMMIT first, and a migration
        # and its version number must land together or not at all
        with transaction() as tx:
            for statement in script.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute(f"PRAGMA user_version={number}")
