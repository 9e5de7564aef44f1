"""Applying a domain change: the parcel and compartment it changes, the open intent
it records before a pulse (or the outcome it settles after), its events and audit
line and the cloud command that asked for it, all in one transaction.
"""

from __future__ import annotations

from typing import Any

from lockerd.hub import domain as d
from lockerd.hub.store.compartments import CompartmentsMixin
from lockerd.hub.store.inbox import Inbox
from lockerd.hub.store.parcels import ParcelsMixin
from lockerd.hub.store.rows import Intent, to_intent
from lockerd.hub.vocab import IntentOutcome


class ChangesMixin(ParcelsMixin, CompartmentsMixin):
    """The ``intents`` table, and :meth:`apply`, which writes a change across the
    others."""

    def apply(
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
        """Commit a domain change with its events (outbox), an audit line (with
        ``detail``: why, beside the events), and the intent it opens or the intent
        outcome it records. Returns the new intent's id."""
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
            self._record(
                db,
                change.events,
                now=now,
                actor=actor,
                action=action,
                target=target,
                detail=detail,
            )
            return intent_id

    def open_intents(self, label: str | None = None) -> list[Intent]:
        """Intents without an outcome, all or one compartment's (index ``intents_open``)."""
        if label is None:
            rows = self._db.execute("SELECT * FROM intents WHERE outcome IS NULL ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT * FROM intents WHERE outcome IS NULL AND label=? ORDER BY id", (label,)
            )
        return [to_intent(r) for r in rows]
