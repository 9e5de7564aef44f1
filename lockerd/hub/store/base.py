"""What every part of the store builds on: the open connection, one transaction at a
time, what committed transactions recorded, and the ``meta`` table.

:class:`StoreBase` opens the file (:mod:`.schema`) and gives the other parts
:meth:`~StoreBase.transaction`; they add the tables' reads and writes on top of it.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lockerd.hub.store.errors import translate
from lockerd.hub.store.schema import connect, migrate
from lockerd.hub.vocab import IntentOutcome


class StoreBase:
    """The connection to the store's file and its transactions. Not thread-safe: one
    thread uses a store at a time (the service's store thread)."""

    def __init__(self, path: str | Path, schema: Sequence[str]) -> None:
        self.path = Path(path)
        # how long the last COMMIT took (writing the WAL and, with synchronous=FULL, the
        # disk's flush): benchmarks take the disk's part out of latency figures with it
        self.last_commit_s = 0.0
        # what committed transactions recorded, by kind (metrics read them): outbox
        # event types, and open intents' outcomes; counted only once committed
        self.committed_events: Counter[str] = Counter()
        self.open_outcomes: Counter[IntentOutcome] = Counter()
        self._tx_events: list[str] = []
        self._tx_outcomes: list[IntentOutcome] = []
        try:
            self._db = connect(self.path)
            migrate(self._db, self.path, schema, self.transaction)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change; ``BEGIN IMMEDIATE`` so writers never deadlock."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
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
            raise translate(exc, self.path) from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def probe_write(self, now: float) -> None:
        """A tiny committed write (the watchdog's "is the store writable" check): takes
        the write lock, writes a page, flushes. Raises :class:`StoreError` if it cannot."""
        with self.transaction() as db:
            self._set_meta(db, "alive_at", str(int(now)))

    def next_boot(self) -> int:
        """This start's boot number (``boot_seq`` of the cloud link's birth and will)."""
        with self.transaction() as db:
            boot = int(self.get_meta("boot_seq") or 0) + 1
            self._set_meta(db, "boot_seq", str(boot))
            return boot

    def _set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )
