"""The hub's rules through the real store, with restarts between steps.

Codes are typed the way the keypad will type them: by hash, through the store's
code index; objects are always read back from SQLite; and the store is closed and
reopened at random. After every step the invariants hold on what SQLite holds.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockerd.hub import domain as d
from lockerd.hub.store import Store

LABELS = [("A01", d.Size.S), ("A02", d.Size.M), ("A03", d.Size.L)]


class StoredHub(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lockerd-sm-"))
        self.store = Store(self.dir / "hub.db")
        self.store.sync_compartments(d.Compartment(lbl, size) for lbl, size in LABELS)
        self.now = 100_000.0
        self.n = 0
        self.all_codes: list[tuple[str, str, d.Purpose]] = []  # (hash, parcel, purpose)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def apply(self, change: d.Change, target: str, **kw: object) -> None:
        if not change.refused and (change.parcel or change.compartment or change.events):
            self.store.apply(change, now=self.now, actor="test", action="step", target=target, **kw)  # type: ignore[arg-type]

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.dir / "hub.db")

    @rule(size=st.sampled_from([d.Size.S, d.Size.M, d.Size.L]))
    def reserve(self, size: d.Size) -> None:
        self.n += 1
        pid = f"P{self.n}"
        codes = {d.Purpose.DEPOSIT: f"dep{self.n}", d.Purpose.COLLECT: f"col{self.n}"}
        parcel = d.Parcel(
            pid,
            d.Kind.DELIVERY,
            size,
            deposit_from=self.now - 1,
            deposit_until=self.now + 10_000,
            collect_window_s=500,
        )
        self.store.add_parcel(parcel, codes, now=self.now, actor="cloud")
        self.all_codes += [(h, pid, p) for p, h in codes.items()]

    @precondition(lambda self: self.all_codes)
    @rule(data=st.data())
    def type_a_code(self, data: st.DataObject) -> None:
        code_hash, pid, purpose = data.draw(st.sampled_from(self.all_codes))
        found = self.store.code(code_hash)
        if found is None:
            # spent, cancelled or never live: nothing may open
            parcel = self.store.parcel(pid)
            assert parcel is not None
            if purpose is d.Purpose.DEPOSIT:
                assert parcel.state not in (d.ParcelState.RESERVED, d.ParcelState.DEPOSITING)
            else:
                assert parcel.state in d.FINAL
            return
        parcel, purpose = found
        if purpose is d.Purpose.DEPOSIT:
            comp = d.allocate(
                self.store.compartments(), parcel.size, accessible=False, fallback=True
            )
            if comp is None:
                return
        else:
            if parcel.compartment is None:
                return
            comp = self.store.compartment(parcel.compartment)
            assert comp is not None
        change = d.start(parcel, purpose, comp, self.now, actor="keypad")
        if not change.refused:
            assert d.check_code(parcel, purpose, self.now) is None
            self.apply(change, comp.label, intent=(comp.label, purpose, parcel.id))

    def _full_visit(self, code_hash: str, sensor: bool | None) -> None:
        """A whole visit: the code, the door seen open, the door seen shut."""
        found = self.store.code(code_hash)
        if found is None:
            return
        parcel, purpose = found
        if purpose is d.Purpose.DEPOSIT:
            comp = d.allocate(
                self.store.compartments(), parcel.size, accessible=False, fallback=True
            )
        else:
            comp = self.store.compartment(parcel.compartment) if parcel.compartment else None
        if comp is None:
            return
        started = d.start(parcel, purpose, comp, self.now, actor="keypad")
        if started.refused:
            return
        self.apply(started, comp.label, intent=(comp.label, purpose, parcel.id))
        opened_comp = self.store.compartment(comp.label)
        assert opened_comp is not None
        self.apply(d.door_opened(opened_comp, self.now), comp.label)
        shut_comp = self.store.compartment(comp.label)
        assert shut_comp is not None
        self.apply(
            d.door_shut(shut_comp, self._parcel_of(shut_comp), self.now + 5, occupied=sensor),
            comp.label,
        )

    @precondition(lambda self: self.all_codes)
    @rule(data=st.data(), sensor=st.sampled_from([None, None, True, False]))
    def carrier_deposits(self, data: st.DataObject, sensor: bool | None) -> None:
        deposits = [h for h, _, p in self.all_codes if p is d.Purpose.DEPOSIT]
        self._full_visit(data.draw(st.sampled_from(deposits)), sensor)

    @precondition(lambda self: self.all_codes)
    @rule(data=st.data(), sensor=st.sampled_from([None, None, True, False]))
    def resident_collects(self, data: st.DataObject, sensor: bool | None) -> None:
        collects = [h for h, _, p in self.all_codes if p is d.Purpose.COLLECT]
        self._full_visit(data.draw(st.sampled_from(collects)), sensor)

    @precondition(lambda self: self.all_codes)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        _, pid, _ = data.draw(st.sampled_from(self.all_codes))
        parcel = self.store.parcel(pid)
        assert parcel is not None
        self.apply(d.cancel(parcel), pid)

    def _pick(self, data: st.DataObject, want: str) -> d.Compartment | None:
        comps = self.store.compartments()
        pool = {
            "opening": [c for c in comps if c.operation and not c.operation.seen_open],
            "open": [c for c in comps if c.door_open],
            "closed": [c for c in comps if not c.door_open],
        }[want]
        return data.draw(st.sampled_from(pool)) if pool else None

    def _parcel_of(self, comp: d.Compartment) -> d.Parcel | None:
        pid = comp.operation.parcel_id if comp.operation else comp.parcel_id
        return self.store.parcel(pid) if pid else None

    @rule(data=st.data())
    def door_seen_open(self, data: st.DataObject) -> None:
        if (comp := self._pick(data, "opening")) is not None:
            self.apply(d.door_opened(comp, self.now), comp.label)

    @rule(data=st.data())
    def jammed(self, data: st.DataObject) -> None:
        if (comp := self._pick(data, "opening")) is not None:
            self.apply(d.open_not_seen(comp, self._parcel_of(comp), self.now), comp.label)

    @rule(data=st.data())
    def forced(self, data: st.DataObject) -> None:
        comp = self._pick(data, "closed")
        if comp is not None and comp.operation is None:
            self.apply(d.door_opened(comp, self.now), comp.label)

    @rule(data=st.data(), sensor=st.sampled_from([None, True, False]))
    def door_seen_shut(self, data: st.DataObject, sensor: bool | None) -> None:
        if (comp := self._pick(data, "open")) is not None:
            self.apply(
                d.door_shut(comp, self._parcel_of(comp), self.now, occupied=sensor), comp.label
            )

    @rule(seconds=st.sampled_from([10.0, 600.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for parcel in self.store.parcels([d.ParcelState.STORED]):
            self.apply(d.expire(parcel, self.now), parcel.id)

    @rule(data=st.data(), holds=st.booleans())
    def technician(self, data: st.DataObject, holds: bool) -> None:
        comp = data.draw(st.sampled_from(self.store.compartments()))
        self.apply(d.set_service(comp, True, actor="tech"), comp.label)
        fresh = self.store.compartment(comp.label)
        assert fresh is not None
        self.apply(d.inspected(fresh, holds_parcel=holds, actor="tech"), comp.label)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def what_sqlite_holds_is_true(self) -> None:
        comps = {c.label: c for c in self.store.compartments()}
        parcels = {p.id: p for p in self.store.parcels()}
        for p in parcels.values():
            if p.state in d.IN_COMPARTMENT:
                assert p.compartment is not None
                assert comps[p.compartment].parcel_id == p.id, (p, comps[p.compartment])
        for c in comps.values():
            if c.parcel_id is not None:
                assert parcels[c.parcel_id].state in d.IN_COMPARTMENT
                assert parcels[c.parcel_id].compartment == c.label
            if c.state is d.CompartmentState.FREE:
                assert c.parcel_id is None
            if c.content is d.Content.PARCEL:
                assert c.parcel_id is not None

    @invariant()
    def only_live_parcels_have_live_codes(self) -> None:
        for code_hash, _, _ in self.all_codes:
            found = self.store.code(code_hash)
            if found is None:
                continue
            parcel, purpose = found
            assert parcel.state not in d.FINAL
            if purpose is d.Purpose.DEPOSIT:  # spent only once the deposit is confirmed
                assert parcel.state in (d.ParcelState.RESERVED, d.ParcelState.DEPOSITING)

    @invariant()
    def outbox_seq_is_gapless(self) -> None:
        seqs = [r.seq for r in self.store.outbox(limit=100_000)]
        assert seqs == list(range(1, len(seqs) + 1))


StoredHub.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
TestStoredHub = StoredHub.TestCase
