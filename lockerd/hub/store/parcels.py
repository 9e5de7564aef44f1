"""Parcels and their code hashes: reservations (one, many, or only the new ones of a
batch), replaced codes, and the tombstones of codes spent or replaced here, which are
never accepted again. The bulk paths' tuning lives with them: parcels inserted a block
of rows a statement, codes and tombstone lookups in hash order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from lockerd.hub import domain as d
from lockerd.hub.jsonsafe import MAX_STR, text
from lockerd.hub.store.errors import CodeSpent, StoreConflict
from lockerd.hub.store.inbox import Inbox, InboxMixin
from lockerd.hub.store.rows import to_parcel

_INSERT_PARCEL = (
    "INSERT INTO parcels(id, kind, size, state, compartment, deposit_from, deposit_until, "
    "collect_window_s, collect_until, accessible, has_recall, created, updated) "
    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_PARCEL_BLOCK = 32  # new parcels a statement (one multi-row VALUES): see _insert_parcels
_INSERT_PARCEL_BLOCK = _INSERT_PARCEL + ",(?,?,?,?,?,?,?,?,?,?,?,?,?)" * (_PARCEL_BLOCK - 1)
_INSERT_CODE = "INSERT INTO codes(hash, parcel_id, purpose) VALUES(?,?,?)"


def reserved_event(parcel: d.Parcel) -> d.Event:
    """The event of a stored reservation: ``parcel.reserve`` and ``return.reserve``
    (:meth:`HubService.reserve`), and each reservation a ``codes.bulk`` kept
    (:meth:`ParcelsMixin.add_new_parcels`). Its data is clean already
    (:func:`lockerd.hub.jsonsafe.clean` leaves it as it is): the id is the one part
    that came from outside, and a plain one is taken as it is."""
    pid = parcel.id
    if not (len(pid) <= MAX_STR and pid.isascii() and pid.isprintable()):
        pid = text(pid)
    return d.Event(
        "parcel_reserved", {"parcel": pid, "kind": parcel.kind.value, "size": parcel.size.value}
    )


class ParcelsMixin(InboxMixin):
    """The ``parcels``, ``codes`` and ``spent_codes`` tables. A reservation commits with
    its events and the command that asked for it (:class:`InboxMixin`)."""

    def parcel(self, parcel_id: str) -> d.Parcel | None:
        row = self._db.execute("SELECT * FROM parcels WHERE id=?", (parcel_id,)).fetchone()
        return None if row is None else to_parcel(row)

    def code(self, code_hash: str) -> tuple[d.Parcel, d.Purpose] | None:
        row = self._db.execute(
            "SELECT p.*, c.purpose AS code_purpose FROM codes c JOIN parcels p "
            "ON p.id = c.parcel_id WHERE c.hash=?",
            (code_hash,),
        ).fetchone()
        return None if row is None else (to_parcel(row), d.Purpose(row["code_purpose"]))

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
        return [to_parcel(r) for r in rows]

    def parcels_due(self, now: float) -> list[d.Parcel]:
        """Stored parcels past their collect window, and reservations past their
        deposit window (indexes ``parcels_due``, ``parcels_lapsing``)."""
        rows = self._db.execute(
            "SELECT * FROM parcels WHERE state='stored' AND collect_until < ? "
            "UNION ALL SELECT * FROM parcels WHERE state='reserved' AND deposit_until < ?",
            (now, now),
        )
        return [to_parcel(r) for r in rows]

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
        (``code_used``: a code hash spent or replaced here before, a tombstone). Each
        one kept commits with its ``parcel_reserved`` event (``codes.bulk`` tells the
        cloud what ``parcel.reserve`` does); one audit line for the batch.

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
            # one parcel_reserved each, as parcel.reserve has (written after the insert:
            # a conflict above leaves the outbox's bookkeeping untouched)
            events = [reserved_event(p) for p, _ in accepted]
            targets = [e.data["parcel"] for e in events]
            self._queue(db, events, now=now, actor=actor, targets=targets)
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
