"""Retention: what the store no longer keeps is deleted a small batch at a time.

Each prune deletes at most ``limit`` rows in one short transaction (the caller
loops, letting door events in between) and returns how many it deleted. Tables kept
in time order (audit, history, inbox, intents, quarantine) are pruned from their
oldest rows only, so a prune never scans the whole table.
"""

from __future__ import annotations

from lockerd.hub.store.base import StoreBase


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
    "history": _oldest_first("history", "seq", "at"),
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


class RetentionMixin(StoreBase):
    """Pruning every table that grows (the statements are :data:`_PRUNE`'s)."""

    def prune(self, table: str, before: float, limit: int = 500) -> int:
        """Delete up to ``limit`` of ``table``'s rows older than ``before`` (the tables:
        audit lines, the local history's events, command replies, settled intents,
        quarantined messages, acknowledged alarms, parcels that ended, code tombstones,
        the outbox of a hub without a cloud). Tombstones must outlive any signed command
        that could carry their hash: ``cloud.grant_max_life_s`` plus twice
        ``command_skew_s``."""
        with self.transaction() as db:
            return int(db.execute(_PRUNE[table], {"limit": limit, "before": before}).rowcount)
