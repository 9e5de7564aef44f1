"""The local history: every event the hub recorded, kept at the hub as long as its
audit, whether or not the cloud took it.

The outbox is emptied as the cloud takes its events; the ``history`` table is not. Each
change's events are written to it in the change's own transaction (by
:meth:`~lockerd.hub.store.outbox.OutboxMixin._record`), all of them: those past the
outbox quota that the cloud never gets, a service flag flipped twice before the cloud
took the first flip, the quota's own notices. Each row says who (``actor``) changed
what (``target``). It is pruned with the audit (``retention.audit_days``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from lockerd.hub.store.base import StoreBase
from lockerd.hub.store.rows import HistoryRow, to_history_row

# one event of the history as it is written: (at, type, data as JSON, actor, target)
HistoryEntry = tuple[float, str, str, str, str]


class HistoryMixin(StoreBase):
    """The ``history`` table: written inside a change's transaction, read newest first."""

    def _write_history(self, db: sqlite3.Connection, entries: Iterable[HistoryEntry]) -> None:
        db.executemany(
            "INSERT INTO history(at, type, data, actor, target) VALUES(?,?,?,?,?)", entries
        )

    def history(
        self,
        *,
        limit: int,
        since: float | None = None,
        before_seq: int | None = None,
        types: list[str] | None = None,
    ) -> list[HistoryRow]:
        """The newest ``limit`` events, newest first: those at or after ``since`` (a
        time), before ``before_seq`` (the page after one ending there), of ``types``."""
        if limit <= 0:
            return []
        where: list[str] = []
        args: list[object] = []
        if since is not None:
            # the first row of `since` or later, through the index on the time; then
            # only the rows from there on are read (the time checked on each as well)
            first = self._db.execute(
                "SELECT seq FROM history WHERE at >= ? ORDER BY at, seq LIMIT 1", (since,)
            ).fetchone()
            if first is None:
                return []
            where += ["seq >= ?", "+at >= ?"]
            args += [first[0], since]
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        if types is not None:
            if not types:
                return []
            where.append(f"type IN ({','.join('?' * len(types))})")
            args += types
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT * FROM history {clause} ORDER BY seq DESC LIMIT ?",  # noqa: S608 - our own clauses
            (*args, limit),
        )
        return [to_history_row(r) for r in rows]
