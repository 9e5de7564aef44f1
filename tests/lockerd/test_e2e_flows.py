"""End to end over a real pty: ``lockerd run`` on a hub config, its bus served by a
separate ``lockerd-sim`` process, reservations seeded in the store as the cloud would
sync them, people played at the simulator's control stdin, the hub driven with
``lockerctl --json``.

The simulated boards outlive the daemon: a SIGKILL of ``lockerd`` leaves the doors as
they are, and a person may shut one while nobody watches. After every restart the
store must tell the truth: integrity ok, no open intent, every parcel where its
compartment says it is, a gapless outbox, and no lock pulsed twice.

Waiting is always polling with a deadline (tests.support.waiting.until_result); the only
fixed windows are where a test proves that something does *not* happen.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from lockerd.api.server import call
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher, create_key, load_key, new_code
from lockerd.hub.store import Store
from tests.support.daemon import api_up, lockerctl, spawn
from tests.support.e2e import THROTTLE, SimProcess, e2e_config, keypad_sockets, stop_process
from tests.support.waiting import until_result

LOCKERD = "from lockerd.cli.main import main; raise SystemExit(main())"

TIMERS: dict[str, float] = {
    "open_confirm_s": 2.0,  # generous: the same tests run on a loaded machine
    "left_open_alarm_s": 60.0,
    "pickup_window_h": 72.0,
    "poll_interval_s": 0.05,
    "debounce_reads": 2,
}

Json = Any  # what lockerctl --json and the API answer


# ======================================================================================
# Reservations as the cloud syncs them (with the plain codes the test plays with)
# ======================================================================================


@dataclass(frozen=True)
class Reservation:
    id: str
    size: d.Size = d.Size.S
    kind: d.Kind = d.Kind.DELIVERY
    window_s: float = 3600.0
    recall: bool = False  # the carrier gets a recall code (set_codes, as a later sync)
    cancelled: bool = False  # the cloud cancelled it before it was deposited
    codes: dict[d.Purpose, str] = field(default_factory=dict)


_ISSUED: set[str] = set()


def fresh_code() -> str:
    """A random 8-digit code never issued before in this run (codes are unique per hub)."""
    while (code := new_code(8)) in _ISSUED:
        pass
    _ISSUED.add(code)
    return code


def reservation(pid: str, **kw: Any) -> Reservation:
    codes = {d.Purpose.DEPOSIT: fresh_code(), d.Purpose.COLLECT: fresh_code()}
    if kw.get("recall"):
        codes[d.Purpose.RECALL] = fresh_code()
    return Reservation(pid, codes=codes, **kw)


# ======================================================================================
# The hub: lockerd run --config FILE, restarted and killed at will
# ======================================================================================


@dataclass
class Hub:
    root: Path
    sock: Path
    config: Path
    db: Path
    sim: SimProcess
    logs: list[Path]
    reservations: dict[str, Reservation] = field(default_factory=dict)
    terminals: dict[str, Path] = field(default_factory=dict)  # keypad name -> its socket
    proc: asyncio.subprocess.Process | None = None
    typed: list[str] = field(default_factory=list)  # every code typed, right or wrong
    _files: list[IO[bytes]] = field(default_factory=list)

    # ------------------------------------------------------------------ the daemon
    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        out = self.logs[0].open("ab")
        err = self.logs[1].open("ab")
        self._files += [out, err]
        self.proc = await spawn(self.config, out, err)
        try:
            await api_up(self.sock, self.proc)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {self.log_text()[-3000:]}") from None

    async def kill(self) -> None:
        """A crash (SIGKILL: no clean-up at all); the boards, and the doors, stay as
        they are."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> int:
        assert self.proc is not None
        return await stop_process(self.proc)

    async def restart_after_kill(self) -> None:
        await self.kill()
        await self.start()

    async def close(self) -> None:
        try:
            if self.proc is not None:
                await stop_process(self.proc)
        finally:
            try:
                await self.sim.stop()
            finally:
                for f in self._files:
                    f.close()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    # ------------------------------------------------------------------ lockerctl
    async def ctl(self, *args: str) -> tuple[int, Json]:
        rc, out, err = await lockerctl(self.sock, "--json", *args)
        assert out, f"lockerctl {' '.join(args)}: rc {rc}: {err}"
        return rc, json.loads(out)

    async def enter(self, code: str, terminal: str = "keypad:1") -> Json:
        """``lockerctl enter-code`` on the terminal socket of ``terminal``: what that
        keypad does; its exit code matches."""
        self.typed.append(code)
        rc, out, err = await lockerctl(self.terminals[terminal], "--json", "enter-code", code)
        assert out, f"lockerctl enter-code on {terminal}: rc {rc}: {err}"
        result = json.loads(out)
        assert rc == (0 if result["status"] in ("opened", "already_open") else 1), (rc, result)
        return result

    async def code(self, pid: str, purpose: d.Purpose, terminal: str = "keypad:1") -> Json:
        return await self.enter(self.reservations[pid].codes[purpose], terminal)

    async def opened(self, pid: str, purpose: d.Purpose) -> str:
        """The code opens a door; its label."""
        result = await self.code(pid, purpose)
        assert result["status"] == "opened", result
        return str(result["compartment"])

    async def refused(self, pid: str, purpose: d.Purpose, terminal: str = "keypad:1") -> None:
        result = await self.code(pid, purpose, terminal)
        assert result["status"] == "refused", result
        assert result["compartment"] is None
        assert result["message"] == "This code cannot be used. Please check it and try again."

    # ------------------------------------------------------------------ the API, polled
    async def api(self, op: str, **kw: Any) -> Json:
        reply = await call(self.sock, {"op": op, **kw})
        assert reply["ok"], reply
        return reply["result"]

    async def parcel(self, pid: str) -> dict[str, Any]:
        parcels = await self.api("parcels")
        found: dict[str, Any] = next(p for p in parcels if p["id"] == pid)
        return found

    async def compartments(self) -> dict[str, dict[str, Any]]:
        status = await self.api("status")
        return {c["label"]: c for c in status["compartments"]}

    async def events(self, after: int = 0) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.api("events", after_seq=after, limit=10_000)
        return rows

    async def types_after(self, mark: int) -> list[str]:
        return [e["type"] for e in await self.events(mark)]

    async def mark(self) -> int:
        rows = await self.events()
        return int(rows[-1]["seq"]) if rows else 0

    async def alarms(self) -> list[tuple[str, str]]:
        return [(a["type"], a["target"]) for a in await self.api("alarms")]

    async def until_parcel(self, pid: str, state: str, within: float = 10) -> dict[str, Any]:
        return await until_result(
            lambda: self.parcel(pid), lambda p: p["state"] == state, within=within, what=state
        )

    async def until_compartment(
        self, label: str, accept: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any]:
            return (await self.compartments())[label]

        return await until_result(probe, accept, within=10, what=f"{label} {what}")

    async def until_alarm(self, alarm: tuple[str, str]) -> None:
        await until_result(self.alarms, lambda a: alarm in a, within=10, what=str(alarm))

    async def door_seen(self, label: str, is_open: bool) -> None:
        await self.until_compartment(label, lambda c: c["door_open"] is is_open, "door seen")

    # ------------------------------------------------------------------ the truth
    async def assert_true_state(self, unlocks: dict[str, int], *, at_rest: bool = True) -> None:
        """What must hold after every restart, and whenever the hub is at rest (no door
        open for anyone). ``unlocks``: every pulse the board ever received, by label."""
        assert await self.sim.unlocks() == Counter(unlocks), "a lock pulsed once too often"
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            open_intents = db.execute("SELECT * FROM intents WHERE outcome IS NULL").fetchall()
            assert open_intents == [], "an intent left open"
            seqs = [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
            assert seqs == list(range(1, len(seqs) + 1)), "outbox seq has a gap"
            (next_seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            assert int(next_seq) == len(seqs) + 1
            if at_rest:
                ops = db.execute("SELECT label FROM compartments WHERE op_purpose IS NOT NULL")
                assert ops.fetchall() == [], "an operation left under way at rest"
            held = dict(
                db.execute(
                    "SELECT parcel_id, label FROM compartments WHERE parcel_id IS NOT NULL"
                ).fetchall()
            )
            in_comp = {s.value for s in d.IN_COMPARTMENT}
            for pid, state, comp in db.execute("SELECT id, state, compartment FROM parcels"):
                purposes = {
                    r[0] for r in db.execute("SELECT purpose FROM codes WHERE parcel_id=?", (pid,))
                }
                if state in in_comp:
                    assert held.pop(pid, None) == comp, f"{pid} {state} in {comp}: not there"
                if state in in_comp - {"depositing"}:  # confirmed: the deposit code is spent
                    assert "deposit" not in purposes, f"{pid} {state} keeps its deposit code"
                if state not in in_comp:
                    assert pid not in held, f"{pid} {state} but {held.get(pid)} holds it"
                if d.ParcelState(state) in d.FINAL:
                    assert purposes == set(), f"{pid} {state} keeps codes {purposes}"
            assert held == {}, f"compartments hold unknown parcels {held}"
        finally:
            db.close()
        self.assert_no_plain_codes()

    def assert_no_plain_codes(self) -> None:
        """No code, right or wrong, in the daemon's logs or in the store's files."""
        codes = {c for r in self.reservations.values() for c in r.codes.values()}
        codes |= set(self.typed)
        logs = self.log_text()
        assert "api_request" in logs  # the log is really there
        stored = b"".join(
            p.read_bytes() for p in self.db.parent.glob(f"{self.db.name}*") if p.is_file()
        )
        for code in codes:
            assert code not in logs, "a code in the daemon's log"
            assert code.encode() not in stored, "a code in the store's files"


def _seed(store: Store, hasher: CodeHasher, reservations: list[Reservation]) -> None:
    """The cloud's sync, while the daemon is not running."""
    now = time.time()
    for r in reservations:
        parcel = d.Parcel(
            r.id,
            r.kind,
            r.size,
            deposit_from=now - 60,
            deposit_until=now + 86_400,
            collect_window_s=r.window_s,
        )
        hashes: dict[d.Purpose, str] = {
            p: hasher.hash(c) for p, c in r.codes.items() if p is not d.Purpose.RECALL
        }
        event = d.Event(
            "parcel_reserved", {"parcel": r.id, "kind": r.kind.value, "size": r.size.value}
        )
        store.add_parcel(parcel, hashes, now=now, actor="cloud", events=[event])
        if r.recall:
            recall = {d.Purpose.RECALL: hasher.hash(r.codes[d.Purpose.RECALL])}
            store.set_codes(r.id, recall, now=now, actor="cloud")
        if r.cancelled:
            stored = store.parcel(r.id)
            assert stored is not None
            store.apply(d.cancel(stored), now=now, actor="cloud", action="cancel", target=r.id)


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """``await make_hub([reservation(...), ...], timers={...}, throttle={...})``: a hub
    with its simulator, its key and its seeded reservations, started."""
    hubs: list[Hub] = []
    short = Path(tempfile.mkdtemp(prefix="lk-"))  # a Unix socket path is short

    async def make(
        reservations: list[Reservation],
        *,
        timers: dict[str, float] | None = None,
        throttle: dict[str, float] | None = None,
    ) -> Hub:
        root = tmp_path / f"hub{len(hubs)}"
        root.mkdir()
        sock, link = short / f"api{len(hubs)}.sock", root / "ttyA"
        config = root / "hub.toml"
        config.write_text(
            e2e_config(
                root, sock, link, {**TIMERS, **(timers or {})}, {**THROTTLE, **(throttle or {})}
            )
        )
        key = root / "state" / "keys" / "code-hmac.key"
        create_key(key)
        db = root / "state" / "lockerd.db"
        store = Store(db)
        try:
            _seed(store, CodeHasher(load_key(key)), reservations)
        finally:
            store.close()
        sim_log = (root / "sim.log").open("ab")
        try:
            sim = await SimProcess.start(link, sim_log)
        finally:
            sim_log.close()  # the simulator holds its own copy
        hub = Hub(
            root=root,
            sock=sock,
            config=config,
            db=db,
            sim=sim,
            logs=[root / "lockerd.out", root / "lockerd.err"],
            reservations={r.id: r for r in reservations},
            terminals=keypad_sockets(sock),
        )
        hubs.append(hub)
        await hub.start()
        return hub

    try:
        yield make
    finally:
        for hub in hubs:
            await hub.close()
        shutil.rmtree(short, ignore_errors=True)


async def _no_change_for(probe: Callable[[], Awaitable[Any]], seconds: float, what: str) -> None:
    """``probe`` answers the same for ``seconds`` (proving that something does not happen)."""
    first = await probe()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await probe() == first, f"{what} changed"
        await asyncio.sleep(0.05)


DEPOSIT, COLLECT, RECALL = d.Purpose.DEPOSIT, d.Purpose.COLLECT, d.Purpose.RECALL


# ======================================================================================
# The flows
# ======================================================================================


async def test_a_carrier_deposits_and_the_resident_collects(make_hub: HubFactory) -> None:
    hub = await make_hub([reservation("P-1"), reservation("P-2", size=d.Size.M)])
    mark = await hub.mark()
    label = await hub.opened("P-1", DEPOSIT)
    assert label == "A01"  # the smallest fitting size, accessible ones kept, by label
    assert (await hub.parcel("P-1"))["state"] == "depositing"
    await hub.door_seen(label, True)
    await hub.sim.shut(label)
    stored = await hub.until_parcel("P-1", "stored")
    assert stored["compartment"] == "A01"
    assert stored["collect_until"] is not None
    assert await hub.types_after(mark) == [
        "door_open_requested",
        "door_opened",
        "deposited",
        "door_shut",
    ]
    await hub.refused("P-1", DEPOSIT)  # the deposit code was spent

    mark = await hub.mark()
    assert await hub.opened("P-1", COLLECT) == "A01"
    await hub.sim.shut("A01")
    await hub.until_parcel("P-1", "collected")
    events = await hub.events(mark)
    assert [e["type"] for e in events] == [
        "door_open_requested",
        "door_opened",
        "collected",
        "door_shut",
    ]
    assert events[0]["data"] == {
        "compartment": "A01",
        "parcel": "P-1",
        "purpose": "collect",
        "by": "keypad:1",
    }
    await hub.refused("P-1", COLLECT)  # and so was the pickup code

    rc, status = await hub.ctl("status")
    assert rc == 0
    states = {c["label"]: (c["state"], c["door_open"], c["parcel"]) for c in status["compartments"]}
    assert states["A01"] == ("free", False, None)
    assert {s for label, s in states.items() if label != "A01"} == {("free", False, None)}
    assert status["alarms"] == []
    assert (await hub.parcel("P-2"))["state"] == "reserved"
    await hub.assert_true_state({"A01": 2})  # one pulse per visit
    assert await hub.stop() == 0


async def test_a_jammed_lock_is_reported_and_the_retry_gets_another_compartment(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub([reservation("P-1")])
    await hub.sim.jam("A01")
    mark = await hub.mark()
    result = await hub.code("P-1", DEPOSIT)
    assert result == {
        "status": "jammed",
        "message": "The compartment did not open. Please contact support.",
        "compartment": "A01",
        "wait_s": 0.0,
    }
    parcel = await hub.parcel("P-1")
    assert (parcel["state"], parcel["compartment"]) == ("reserved", None)
    assert (await hub.compartments())["A01"]["state"] == "out_of_service"
    assert await hub.alarms() == [("door_jammed", "A01")]
    assert await hub.types_after(mark) == ["door_open_requested", "door_jammed"]
    assert await hub.sim.unlocks() == Counter({"A01": 1})

    mark = await hub.mark()
    assert await hub.opened("P-1", DEPOSIT) == "A02"  # the same code, another door
    await hub.sim.shut("A02")
    assert (await hub.until_parcel("P-1", "stored"))["compartment"] == "A02"
    assert await hub.types_after(mark) == [
        "door_open_requested",
        "door_opened",
        "deposited",
        "door_shut",
    ]

    # the technician frees the lock and puts the compartment back in service
    await hub.sim.jam("A01", False)
    rc, back = await hub.ctl("service", "A01", "in")
    assert (rc, back["status"]) == (0, "ok")
    assert (await hub.compartments())["A01"]["state"] == "free"
    await hub.assert_true_state({"A01": 1, "A02": 1})


async def test_a_forced_door_raises_an_alarm_and_needs_an_inspection(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub([reservation("P-1")])
    mark = await hub.mark()
    await hub.sim.open("A01")  # no command: pulled open
    await hub.until_alarm(("forced_open", "A01"))
    assert (await hub.compartments())["A01"].items() >= {
        "label": "A01",
        "size": "S",
        "state": "attention",
        "door_open": True,
        "parcel": None,
    }.items()  # and where it is (bus, board, reachable: lockerctl status)
    rc, busy = await hub.ctl("inspect", "A01", "empty")
    assert (rc, busy["status"]) == (1, "refused")  # not while the door is open

    assert await hub.opened("P-1", DEPOSIT) == "A02"  # never into a compartment in doubt
    await hub.sim.shut("A02")
    await hub.until_parcel("P-1", "stored")
    await hub.sim.shut("A01")
    await hub.door_seen("A01", False)
    assert (await hub.compartments())["A01"]["state"] == "attention"  # shut is not "empty"

    rc, done = await hub.ctl("inspect", "A01", "empty")
    assert (rc, done["status"]) == (0, "ok")
    assert (await hub.compartments())["A01"]["state"] == "free"
    assert await hub.types_after(mark) == [
        "forced_open",
        "door_open_requested",
        "door_opened",
        "deposited",
        "door_shut",
        "compartment_inspected",
    ]
    (alarm,) = await hub.api("alarms")
    rc, acked = await hub.ctl("ack", str(alarm["id"]))
    assert (rc, acked["status"]) == (0, "ok")
    assert await hub.alarms() == []

    # a door forced while lockerd was down is still a forced door
    await hub.kill()
    await hub.sim.open("A04")
    await hub.start()
    await hub.until_alarm(("forced_open", "A04"))
    assert (await hub.compartments())["A04"]["state"] == "attention"
    await hub.sim.shut("A04")
    await hub.door_seen("A04", False)
    types = [e["type"] for e in await hub.events()]
    assert types.count("forced_open") == 2
    assert await hub.alarms() == [("forced_open", "A04")]
    await hub.assert_true_state({"A02": 1})


async def test_a_door_left_open_alarms_once(make_hub: HubFactory) -> None:
    hub = await make_hub([reservation("P-1")], timers={"left_open_alarm_s": 1.0})
    assert await hub.opened("P-1", DEPOSIT) == "A01"
    await hub.until_alarm(("door_left_open", "A01"))

    async def left_open_events() -> int:
        return [e["type"] for e in await hub.events()].count("door_left_open")

    assert await left_open_events() == 1
    await _no_change_for(left_open_events, 2.2, "door_left_open events")  # 2 ticks
    (alarm,) = await hub.api("alarms")
    assert (alarm["type"], alarm["target"]) == ("door_left_open", "A01")
    (event,) = [e for e in await hub.events() if e["type"] == "door_left_open"]
    assert event["data"]["compartment"] == "A01"
    assert event["data"]["purpose"] == "deposit"
    assert event["data"]["open_s"] > 1.0

    # lockerd dies and comes back while the door still stands open: the same one alarm
    # (the outbox does get a second door_left_open event: see the report)
    await hub.restart_after_kill()
    await hub.assert_true_state({"A01": 1}, at_rest=False)

    async def alarm_ids() -> list[tuple[int, str, str]]:
        return [(a["id"], a["type"], a["target"]) for a in await hub.api("alarms")]

    await _no_change_for(alarm_ids, 1.5, "open alarms")  # the tick after the start
    assert await alarm_ids() == [(alarm["id"], "door_left_open", "A01")]
    comp = (await hub.compartments())["A01"]
    assert (comp["state"], comp["door_open"], comp["parcel"]) == ("in_use", True, "P-1")

    await hub.sim.shut("A01")
    await hub.until_parcel("P-1", "stored")  # late, but deposited
    assert await alarm_ids() == [(alarm["id"], "door_left_open", "A01")]  # until acked
    assert [e["type"] for e in await hub.events()].count("deposited") == 1
    await hub.assert_true_state({"A01": 1})


async def test_an_expired_parcel_is_recalled_by_its_carrier_or_emptied_by_a_technician(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        [reservation("P-1", window_s=1.0, recall=True), reservation("P-2", window_s=1.0)]
    )
    for pid, label in (("P-1", "A01"), ("P-2", "A02")):
        assert await hub.opened(pid, DEPOSIT) == label
        await hub.sim.shut(label)
        await hub.until_parcel(pid, "stored")
    for pid in ("P-1", "P-2"):
        await hub.until_parcel(pid, "expired")
    rc, expired = await hub.ctl("expired")
    assert rc == 0
    assert [(p["id"], p["compartment"]) for p in expired] == [("P-1", "A01"), ("P-2", "A02")]
    await hub.refused("P-1", COLLECT)  # too late for the resident

    # the carrier takes P-1 back with its recall code; lockerd dies with the door open
    # and the carrier shuts it while nobody watches
    mark = await hub.mark()
    assert await hub.opened("P-1", RECALL) == "A01"
    await hub.kill()
    await hub.sim.shut("A01")
    await hub.start()
    await hub.until_parcel("P-1", "recalled")
    assert await hub.types_after(mark) == [
        "door_open_requested",
        "door_opened",
        "recalled",
        "door_shut",
    ]
    await hub.refused("P-1", RECALL)  # spent

    # P-2 has no recall code: a technician empties the expired parcels
    mark = await hub.mark()
    rc, outcomes = await hub.ctl("empty-expired")
    assert rc == 0
    assert [(o["status"], o["compartment"]) for o in outcomes] == [("opened", "A02")]
    await hub.sim.shut("A02")
    await hub.until_parcel("P-2", "recalled")
    events = await hub.events(mark)
    assert [e["type"] for e in events] == [
        "door_open_requested",
        "door_opened",
        "recalled",
        "door_shut",
    ]
    assert events[0]["data"]["purpose"] == "recall"
    assert events[0]["data"]["by"].startswith("tech:")
    rc, none_left = await hub.ctl("empty-expired")
    assert (rc, none_left) == (0, [])

    types = [e["type"] for e in await hub.events()]
    assert types.count("parcel_expired") == 2
    assert await hub.alarms() == []
    comps = await hub.compartments()
    assert {label: c["state"] for label, c in comps.items() if label in ("A01", "A02")} == {
        "A01": "free",
        "A02": "free",
    }
    await hub.assert_true_state({"A01": 2, "A02": 2})


async def test_a_return_goes_in_with_the_residents_code_and_out_with_the_carriers(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        [reservation("R-1", kind=d.Kind.RETURN, size=d.Size.M), reservation("C-1", cancelled=True)]
    )
    # the cloud cancelled C-1 while lockerd was down: its codes open nothing
    assert (await hub.parcel("C-1"))["state"] == "cancelled"
    await hub.refused("C-1", DEPOSIT)
    await hub.refused("C-1", COLLECT)

    # the resident's door is open when lockerd dies, and still open when it is back
    mark = await hub.mark()
    assert await hub.opened("R-1", DEPOSIT) == "A04"  # M: the smallest that fits
    await hub.restart_after_kill()
    await hub.assert_true_state({"A04": 1}, at_rest=False)
    assert (await hub.parcel("R-1"))["state"] == "depositing"
    await hub.sim.shut("A04")
    stored = await hub.until_parcel("R-1", "stored")
    assert (stored["kind"], stored["compartment"]) == ("return", "A04")
    await hub.refused("R-1", DEPOSIT)
    assert await hub.opened("R-1", COLLECT) == "A04"  # the carrier
    await hub.sim.shut("A04")
    await hub.until_parcel("R-1", "collected")
    events = await hub.events(mark)
    assert [e["type"] for e in events] == [
        "door_open_requested",
        "door_opened",
        "return_deposited",
        "door_shut",
        "door_open_requested",
        "door_opened",
        "return_collected",
        "door_shut",
    ]
    all_types = [e["type"] for e in await hub.events()]
    assert all_types[:3] == ["parcel_reserved", "parcel_reserved", "parcel_cancelled"]
    assert await hub.alarms() == []
    await hub.assert_true_state({"A04": 2})  # nothing opened for the cancelled parcel


async def test_a_kill_with_a_door_open_for_a_deposit_a_technician_or_a_pickup_leaves_the_truth(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub([reservation("P-1")])
    # the carrier's door is open (seen open) when lockerd dies; the carrier shuts it
    # while nobody watches: the next start sees it shut after an open deposit
    assert await hub.opened("P-1", DEPOSIT) == "A01"
    await hub.kill()
    await hub.sim.shut("A01")
    await hub.start()
    stored = await hub.until_parcel("P-1", "stored")
    assert stored["compartment"] == "A01"
    assert await hub.types_after(0) == [
        "parcel_reserved",
        "door_open_requested",
        "door_opened",
        "deposited",
        "door_shut",
    ]
    assert await hub.alarms() == []
    await hub.assert_true_state({"A01": 1})

    # a technician's service open: killed with the door open, restarted with it open
    rc, opened = await hub.ctl("open", "A01", "--reason", "check the latch")
    assert (rc, opened["status"], opened["compartment"]) == (0, "opened", "A01")
    await hub.restart_after_kill()
    await hub.assert_true_state({"A01": 2}, at_rest=False)
    comp = (await hub.compartments())["A01"]
    assert (comp["state"], comp["door_open"], comp["parcel"]) == ("in_use", True, "P-1")
    mark = await hub.mark()
    await hub.sim.shut("A01")
    await hub.until_compartment("A01", lambda c: c["state"] == "occupied", "occupied again")
    assert await hub.types_after(mark) == ["service_door_shut", "door_shut"]
    assert (await hub.parcel("P-1"))["state"] == "stored"
    await hub.assert_true_state({"A01": 2})

    # the resident's door is open when lockerd dies; shut while nobody watches
    mark = await hub.mark()
    assert await hub.opened("P-1", COLLECT) == "A01"
    await hub.kill()
    await hub.sim.shut("A01")
    await hub.start()
    await hub.until_parcel("P-1", "collected")
    assert await hub.types_after(mark) == [
        "door_open_requested",
        "door_opened",
        "collected",
        "door_shut",
    ]
    assert (await hub.compartments())["A01"]["state"] == "free"
    assert await hub.alarms() == []
    await hub.assert_true_state({"A01": 3})
    assert await hub.stop() == 0


async def test_a_kill_while_a_jammed_lock_is_awaited_never_pulses_it_again(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub([reservation("P-1"), reservation("P-2")], timers={"open_confirm_s": 5.0})

    async def killed_while_waiting(pid: str, label: str, unlocks: int) -> int:
        """The code is entered, the lock pulsed, the door not (yet) seen open: kill.
        The outbox seq the daemon had reached."""
        await hub.sim.jam(label)
        code = hub.reservations[pid].codes[DEPOSIT]
        hub.typed.append(code)
        keypad = asyncio.create_task(
            lockerctl(hub.terminals["keypad:1"], "--json", "enter-code", code)
        )
        await until_result(
            hub.sim.unlocks, lambda u: u[label] == unlocks, within=5, what=f"{label} pulsed"
        )
        assert (await hub.parcel(pid))["state"] == "depositing"  # the intent is committed
        mark = await hub.mark()
        await hub.kill()
        rc, out, _ = await keypad
        # the keypad lost its daemon mid-request: never told "opened" (how lockerctl
        # says so is test_lockerctl_says_the_daemon_went_away_without_a_traceback)
        assert rc != 0
        assert out == ""
        return mark

    # (1) the door stays shut: nobody knows whether it opened, so it needs a look
    mark = await killed_while_waiting("P-1", "A01", 1)
    await hub.start()
    parcel = await hub.parcel("P-1")
    assert (parcel["state"], parcel["compartment"]) == ("reserved", None)
    comp = (await hub.compartments())["A01"]
    assert (comp["state"], comp["door_open"], comp["parcel"]) == ("attention", False, None)
    assert await hub.types_after(mark) == ["open_interrupted"]
    assert await hub.alarms() == [("open_interrupted", "A01")]
    await hub.assert_true_state({"A01": 1})  # reconciled by reading, never pulsed again

    assert await hub.opened("P-1", DEPOSIT) == "A02"  # the code works, another door
    await hub.sim.shut("A02")
    await hub.until_parcel("P-1", "stored")
    await hub.sim.jam("A01", False)
    rc, done = await hub.ctl("inspect", "A01", "empty")
    assert (rc, done["status"]) == (0, "ok")
    await hub.assert_true_state({"A01": 1, "A02": 1})

    # (2) the lock released late and the carrier opened the door while lockerd was down
    mark = await killed_while_waiting("P-2", "A01", 2)
    await hub.sim.open("A01")
    await hub.start()
    await hub.assert_true_state({"A01": 2, "A02": 1}, at_rest=False)
    comp = (await hub.compartments())["A01"]
    assert (comp["state"], comp["door_open"], comp["parcel"]) == ("in_use", True, "P-2")
    assert await hub.types_after(mark) == ["door_opened"]
    await hub.sim.shut("A01")
    assert (await hub.until_parcel("P-2", "stored"))["compartment"] == "A01"
    assert await hub.alarms() == [("open_interrupted", "A01")]  # the first one, until acked
    await hub.assert_true_state({"A01": 2, "A02": 1})
    assert await hub.stop() == 0


async def test_guessed_codes_are_throttled_per_keypad_and_hub_wide(make_hub: HubFactory) -> None:
    hub = await make_hub(
        [reservation("P-1")],
        throttle={
            "free_attempts": 3,
            "base_delay_s": 30.0,
            "max_delay_s": 60.0,
            "alarm_after": 10,  # see the next test for the per-keypad alarm
            "hub_wide_per_hour": 6,
        },
    )
    mark = await hub.mark()
    for attempt in range(3):  # one keypad guessing
        result = await hub.enter(fresh_code())
        assert (result["status"], result["compartment"]) == ("refused", None), attempt
    # now even a good code waits, and the door stays shut
    waited = await hub.code("P-1", DEPOSIT)
    assert waited["status"] == "wait"
    assert 0 < waited["wait_s"] <= 30  # its own wait (the hub's would be 60)
    assert waited["message"].startswith("Please wait ")
    assert (await hub.parcel("P-1"))["state"] == "reserved"
    assert await hub.sim.unlocks() == Counter()
    assert await hub.alarms() == []

    # another keypad is not slowed by the first one's guesses
    assert (await hub.code("P-1", DEPOSIT, terminal="keypad:2"))["status"] == "opened"
    await hub.sim.shut("A01")
    await hub.until_parcel("P-1", "stored")
    # until the whole hub has seen too many wrong codes: then every keypad waits
    for attempt in range(3):
        result = await hub.enter(fresh_code(), terminal="keypad:2")
        assert result["status"] == "refused", attempt
    rc, alarms = await hub.ctl("alarms")
    assert rc == 0
    assert [(a["type"], a["target"]) for a in alarms] == [("code_guessing_hub_wide", "hub")]
    waited = await hub.code("P-1", COLLECT, terminal="keypad:3")
    assert waited["status"] == "wait"
    assert 30 < waited["wait_s"] <= 60  # the hub-wide wait (its own would be 0)
    assert (await hub.parcel("P-1"))["state"] == "stored"
    events = await hub.events(mark)
    assert [e["type"] for e in events] == [
        "door_open_requested",
        "door_opened",
        "deposited",
        "door_shut",
        "code_guessing_hub_wide",
    ]
    assert events[-1]["data"] == {"wrong": 6, "window_s": 3600.0}
    throttle = (await hub.api("status"))["throttle"]
    assert throttle["hub_wrong_in_window"] == 6
    assert throttle["terminals"]["keypad:1"]["wrong_in_window"] == 3
    assert throttle["terminals"]["keypad:2"]["wrong_in_window"] == 3
    # neither the good codes nor the guesses are in the logs or the store's files
    await hub.assert_true_state({"A01": 1})


async def test_a_keypad_guessing_codes_raises_the_code_guessing_alarm(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        [reservation("P-1")],
        throttle={"free_attempts": 3, "base_delay_s": 30.0, "alarm_after": 3},
    )
    mark = await hub.mark()
    for attempt in range(1, 4):
        result = await hub.enter(fresh_code())
        assert (result["status"], result["compartment"]) == ("refused", None), attempt
        expected = [("code_guessing", "keypad:1")] if attempt == 3 else []
        assert await hub.alarms() == expected, attempt
    assert (await hub.code("P-1", DEPOSIT))["status"] == "wait"
    rc, alarms = await hub.ctl("alarms")
    assert rc == 0
    assert [(a["type"], a["target"]) for a in alarms] == [("code_guessing", "keypad:1")]
    events = await hub.events(mark)
    assert [(e["type"], e["data"]) for e in events] == [
        ("code_guessing", {"terminal": "keypad:1", "wrong": 3, "window_s": 3600.0})
    ]
    await hub.assert_true_state({})


async def test_lockerctl_says_the_daemon_went_away_without_a_traceback() -> None:
    short = Path(tempfile.mkdtemp(prefix="lk-"))
    sock = short / "api.sock"

    async def dies_mid_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # the request arrived; then the daemon was killed
        writer.close()

    server = await asyncio.start_unix_server(dies_mid_request, str(sock))
    try:
        rc, out, err = await lockerctl(sock, "--json", "enter-code", "12345678")
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(short, ignore_errors=True)
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith(f"lockerctl: cannot reach lockerd at {sock}")
    assert rc == 3
