"""A hypothesis state machine over the hub's rules, checking the invariants of PRODUCT.md.

Every step is something that can happen at a hub: the cloud reserves or cancels, a
code is typed (right or wrong purpose), a door opens, jams, is forced, shuts with
or without an occupancy sensor, time passes, a technician acts. After every step:
at most one parcel per compartment, parcels and compartments point at each other,
"empty" never holds a parcel and "full" always does, and no door ever opened for a
code the rules refuse.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockerd.hub import domain as d

SIZES = [d.Size.S, d.Size.M, d.Size.L, d.Size.XL]


class Hub(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.comps = {
            f"A{i:02d}": d.Compartment(f"A{i:02d}", size, accessible=i == 1)
            for i, size in enumerate([d.Size.S, d.Size.S, d.Size.M, d.Size.L, d.Size.XL], 1)
        }
        self.parcels: dict[str, d.Parcel] = {}
        self.opened_for: list[tuple[str, d.Purpose, d.ParcelState]] = []
        self.counter = 0

    # ---------------------------------------------------------------- helpers
    def apply(self, change: d.Change) -> None:
        if change.parcel is not None:
            self.parcels[change.parcel.id] = change.parcel
        if change.compartment is not None:
            self.comps[change.compartment.label] = change.compartment

    def pick(self, data: st.DataObject, items: list[str]) -> str:
        return data.draw(st.sampled_from(sorted(items)))

    # ---------------------------------------------------------------- the cloud
    @rule(
        size=st.sampled_from(SIZES),
        ret=st.booleans(),
        accessible=st.booleans(),
        window=st.sampled_from([60.0, 3600.0]),
    )
    def reserve(self, size: d.Size, ret: bool, accessible: bool, window: float) -> None:
        self.counter += 1
        pid = f"P{self.counter}"
        self.parcels[pid] = d.Parcel(
            pid,
            d.Kind.RETURN if ret else d.Kind.DELIVERY,
            size,
            deposit_from=self.now - 1,
            deposit_until=self.now + 7200,
            collect_window_s=window,
            accessible=accessible,
        )

    @precondition(lambda self: self.parcels)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        parcel = self.parcels[self.pick(data, list(self.parcels))]
        change = d.cancel(parcel)
        if parcel.state not in (d.ParcelState.RESERVED, d.ParcelState.CANCELLED):
            assert change.refused
        self.apply(change)

    @precondition(lambda self: self.parcels)
    @rule(data=st.data())
    def give_recall_code(self, data: st.DataObject) -> None:
        pid = self.pick(data, list(self.parcels))
        self.parcels[pid] = replace(self.parcels[pid], has_recall_code=True)

    # ---------------------------------------------------------------- codes typed
    @precondition(lambda self: self.parcels)
    @rule(
        data=st.data(),
        purpose=st.sampled_from([d.Purpose.DEPOSIT, d.Purpose.COLLECT, d.Purpose.RECALL]),
    )
    def enter_code(self, data: st.DataObject, purpose: d.Purpose) -> None:
        parcel = self.parcels[self.pick(data, list(self.parcels))]
        refusal = d.check_code(parcel, purpose, self.now)
        if purpose is d.Purpose.DEPOSIT:
            comp = d.allocate(
                self.comps.values(), parcel.size, accessible=parcel.accessible, fallback=True
            )
            if comp is None:
                return
        else:
            if parcel.compartment is None:
                assert refusal is not None  # nothing to open for it
                return
            comp = self.comps[parcel.compartment]
        change = d.start(parcel, purpose, comp, self.now, actor="terminal:1")
        if refusal is not None:
            assert change.refusal is refusal or change.refused  # never opens
            assert not change.events
        if not change.refused:
            self.opened_for.append((parcel.id, purpose, parcel.state))
            assert refusal is None
        self.apply(change)

    # ---------------------------------------------------------------- doors
    @precondition(
        lambda self: any(c.operation and not c.operation.seen_open for c in self.comps.values())
    )
    @rule(data=st.data())
    def door_seen_open(self, data: st.DataObject) -> None:
        label = self.pick(
            data, [k for k, c in self.comps.items() if c.operation and not c.operation.seen_open]
        )
        self.apply(d.door_opened(self.comps[label], self.now))

    @precondition(
        lambda self: any(c.operation and not c.operation.seen_open for c in self.comps.values())
    )
    @rule(data=st.data())
    def jammed(self, data: st.DataObject) -> None:
        label = self.pick(
            data, [k for k, c in self.comps.items() if c.operation and not c.operation.seen_open]
        )
        comp = self.comps[label]
        assert comp.operation is not None
        pid = comp.operation.parcel_id
        change = d.open_not_seen(comp, self.parcels.get(pid) if pid else None, self.now)
        # jammed: never reported as opened; the operation ends; the lock is taken out
        assert [e.type for e in change.events] == ["door_jammed"]
        assert change.compartment is not None
        assert change.compartment.operation is None
        assert not change.compartment.in_service
        self.apply(change)

    @precondition(
        lambda self: any(c.operation and not c.operation.seen_open for c in self.comps.values())
    )
    @rule(data=st.data())
    def pulse_never_went_out(self, data: st.DataObject) -> None:
        label = self.pick(
            data, [k for k, c in self.comps.items() if c.operation and not c.operation.seen_open]
        )
        comp = self.comps[label]
        assert comp.operation is not None
        pid = comp.operation.parcel_id
        change = d.not_pulsed(comp, self.parcels.get(pid) if pid else None, self.now)
        assert [e.type for e in change.events] == ["door_not_opened"]
        self.apply(change)

    @precondition(lambda self: any(c.operation and not c.door_open for c in self.comps.values()))
    @rule(data=st.data())
    def daemon_restarts_mid_operation(self, data: st.DataObject) -> None:
        label = self.pick(
            data, [k for k, c in self.comps.items() if c.operation and not c.door_open]
        )
        comp = self.comps[label]
        assert comp.operation is not None
        pid = comp.operation.parcel_id
        change = d.interrupted(comp, self.parcels.get(pid) if pid else None, self.now)
        assert change.compartment is not None
        assert change.compartment.state is not d.CompartmentState.FREE  # someone must look
        self.apply(change)

    @precondition(lambda self: not all(c.door_open for c in self.comps.values()))
    @rule(data=st.data())
    def forced_open(self, data: st.DataObject) -> None:
        label = self.pick(data, [k for k, c in self.comps.items() if not c.door_open])
        if self.comps[label].operation is None:
            self.apply(d.door_opened(self.comps[label], self.now))

    @precondition(lambda self: any(c.door_open for c in self.comps.values()))
    @rule(data=st.data(), sensor=st.sampled_from([None, True, False]))
    def door_seen_shut(self, data: st.DataObject, sensor: bool | None) -> None:
        label = self.pick(data, [k for k, c in self.comps.items() if c.door_open])
        comp = self.comps[label]
        pid = comp.operation.parcel_id if comp.operation else comp.parcel_id
        parcel = self.parcels.get(pid) if pid else None
        self.apply(d.door_shut(comp, parcel, self.now, occupied=sensor))

    # ---------------------------------------------------------------- time and technician
    @rule(seconds=st.sampled_from([1.0, 30.0, 120.0, 4000.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for pid, parcel in list(self.parcels.items()):
            self.apply(d.expire(parcel, self.now))
            assert (
                self.parcels[pid].state is not d.ParcelState.STORED
                or (self.parcels[pid].collect_until or 0) >= self.now
            )
        for comp in self.comps.values():
            d.left_open(comp, self.now, 60.0)

    @rule(data=st.data(), in_service=st.booleans())
    def technician_service(self, data: st.DataObject, in_service: bool) -> None:
        label = self.pick(data, list(self.comps))
        self.apply(d.set_service(self.comps[label], in_service, actor="tech:ana"))

    @rule(data=st.data(), holds=st.booleans())
    def technician_inspects(self, data: st.DataObject, holds: bool) -> None:
        label = self.pick(data, list(self.comps))
        self.apply(d.inspected(self.comps[label], holds_parcel=holds, actor="tech:ana"))

    @rule(data=st.data())
    def technician_opens(self, data: st.DataObject) -> None:
        label = self.pick(data, list(self.comps))
        self.apply(d.service_open(self.comps[label], self.now, actor="tech:ana", reason="check"))

    # ---------------------------------------------------------------- invariants
    @invariant()
    def one_parcel_per_compartment(self) -> None:
        holders: dict[str, list[str]] = {}
        for p in self.parcels.values():
            if p.state in d.IN_COMPARTMENT:
                assert p.compartment is not None
                holders.setdefault(p.compartment, []).append(p.id)
        for label, ids in holders.items():
            assert len(ids) == 1, (label, ids)
            assert self.comps[label].parcel_id == ids[0], (label, self.comps[label])

    @invariant()
    def compartments_tell_the_truth(self) -> None:
        for comp in self.comps.values():
            assert comp.state in d.CompartmentState  # exactly one state, by construction
            if comp.parcel_id is not None:
                parcel = self.parcels[comp.parcel_id]
                assert parcel.state in d.IN_COMPARTMENT, (comp, parcel)
                assert parcel.compartment == comp.label
            if comp.content is d.Content.PARCEL:
                assert comp.parcel_id is not None  # "full" always names its parcel
            if comp.content is d.Content.EMPTY and comp.operation is None:
                assert comp.parcel_id is None  # "empty" never holds a parcel
            if comp.state is d.CompartmentState.FREE:
                assert comp.parcel_id is None

    @invariant()
    def parcels_outside_compartments_point_nowhere(self) -> None:
        for p in self.parcels.values():
            if p.state in (d.ParcelState.RESERVED, *d.FINAL):
                assert p.compartment is None or p.state in d.FINAL, p
                assert all(c.parcel_id != p.id for c in self.comps.values()), p


Hub.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestHub = Hub.TestCase
