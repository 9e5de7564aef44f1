"""The compartments as the store keeps them: the config's doors, what each holds, and
the operation under way at its door; read for allocation through the partial index
``compartments_free``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from lockerd.hub import domain as d
from lockerd.hub.store.base import StoreBase
from lockerd.hub.store.errors import StoreConflict
from lockerd.hub.store.rows import to_compartment

# a compartment a deposit may take (the partial index compartments_free covers it)
_FREE = (
    "in_service=1 AND content='empty' AND op_purpose IS NULL AND door_open=0 AND parcel_id IS NULL"
)


class CompartmentsMixin(StoreBase):
    """The ``compartments`` table."""

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
            to_compartment(r) for r in self._db.execute("SELECT * FROM compartments ORDER BY label")
        ]

    def open_for_someone(self) -> list[d.Compartment]:
        """Compartments whose door is open for an operation (the left-open check)."""
        rows = self._db.execute(
            "SELECT * FROM compartments WHERE door_open=1 AND op_purpose IS NOT NULL"
        )
        return [to_compartment(r) for r in rows]

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
                found += [to_compartment(r) for r in rows]
                if len(found) >= limit:
                    return found
        return found

    def compartment(self, label: str) -> d.Compartment | None:
        row = self._db.execute("SELECT * FROM compartments WHERE label=?", (label,)).fetchone()
        return None if row is None else to_compartment(row)

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
