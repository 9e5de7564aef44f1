"""The crash campaign: the real daemon killed with SIGKILL at random moments under a
scripted load, restarted, and checked after every restart. Issue 5's reliability
proof.

    python -m bench.crash_campaign --runs 500          # the campaign figure
    python -m bench.crash_campaign --runs 5 --quick    # a smoke run (CI runs 3)

The parts, all real:
- ``lockerd run`` on an 8-door hub whose Kerong CU48 board is a separate
  ``lockerd-sim`` process on a pty, so the doors outlive the daemon: a person may
  shut one while nobody watches;
- a Mosquitto broker, and a cloud client on it with a persistent session. The cloud
  reserves parcels (signed), cancels them, and sends signed remote opens. It records every
  event it receives (by ``seq``) and every reply;
- a load: the cloud's commands; carriers entering deposit codes; residents entering
  pickup codes; technicians opening compartments and taking them out of service and
  back; people shutting the doors that opened.

Every run lets the load go for a random 0.2-2.5 s and then kills the daemon
(SIGKILL: no clean-up at all). While the daemon is down, the people shut the open
doors, or do not. Then the daemon restarts. Every ``broker_every``-th run the
broker is stopped and restarted during the load. Every ``vanish_every``-th run the
bus adapter vanishes for a while (the simulator's pty goes away and comes back).

After every restart (the daemon answers ``status``), the checks:
- ``PRAGMA integrity_check`` is ok;
- no intent is left without an outcome (start-up reconciled every one from the
  doors, and never pulsed again);
- no lock was pulsed more often than there are intents for its compartment (no
  compartment opened twice for one action);
- every parcel is in one state and where its compartment says it is, and every
  compartment holds at most one parcel;
- the outbox's ``seq`` numbers are below the next one to give (the cloud's side
  is checked at the end);
- every acknowledged action is in the store:
  - a reservation the cloud got an ok reply for exists;
  - a deposit the keypad reported open is no longer "reserved";
  - a pickup the keypad reported open is no longer "stored";
  - an open a technician or the cloud was told succeeded has an intent with that
    outcome;
- the cloud never got two different events with one ``seq``.

At the end the load stops, the doors are shut, and the outbox must drain: the cloud
must have every ``seq`` from 1 to the last, each once in effect (a redelivery has
the same id). The daemon's logs and the store's files must contain no code, no
code key and no command signature.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import RESULTS, Figure, machine
from lockerd.api.server import call
from lockerd.cli.cloudctl import load_signing_key
from lockerd.cloud import contract as c
from lockerd.demo.keys import demo_command_keys
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher, create_key, load_key, new_code
from tests.support.broker import Broker
from tests.support.daemon import api_up, spawn
from tests.support.e2e import CHANNEL, HUB_ID, THROTTLE, SimProcess, e2e_config, keypad_sockets

HUB = HUB_ID  # the hub id of the end-to-end hub's config (tests.support.e2e)
TIMERS: dict[str, float] = {
    "open_confirm_s": 2.0,
    "left_open_alarm_s": 600.0,
    "pickup_window_h": 72.0,
    "poll_interval_s": 0.05,
    "debounce_reads": 2,
}


@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    broker_restarts: int = 0
    adapter_vanishes: int = 0
    actions: Counter[str] = field(default_factory=Counter)  # tried, by kind
    acked: Counter[str] = field(default_factory=Counter)  # acknowledged, by kind
    events: int = 0  # distinct events the cloud received (by seq)
    redeliveries: int = 0  # events received again (same seq, same id)
    unlocks: int = 0  # pulses the board received
    codes: int = 0  # codes issued (each a secret the logs and the store must not hold)
    code_lookalikes: int = 0  # codes found only inside longer hex or digit runs (chance)
    violations: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class Parcel:
    id: str
    deposit: str
    pickup: str


class Cloud:
    """The operator's cloud on the broker: a persistent session that survives broker
    restarts; every event by ``seq`` and every final reply by command id."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.events: dict[int, str] = {}  # seq -> event id
        self.redeliveries = 0
        self.conflicts: list[str] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.signatures: list[str] = []
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.base = f"lockers/{HUB}"

    async def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.broker.port,
                    identifier="campaign-cloud",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=props,
                ) as client:
                    await client.subscribe(f"{self.base}/evt", qos=1)
                    await client.subscribe(f"{self.base}/reply", qos=1)
                    self.client = client
                    self.connected.set()
                    async for m in client.messages:
                        self._got(str(m.topic), m.payload)
            except aiomqtt.MqttError:
                pass
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(0.2)

    def _got(self, topic: str, payload: Any) -> None:
        body = json.loads(payload if isinstance(payload, bytes | bytearray) else b"{}")
        if topic.endswith("/evt"):
            seq, eid = int(body["seq"]), str(body["id"])
            if seq not in self.events:
                self.events[seq] = eid
            elif self.events[seq] == eid:
                self.redeliveries += 1  # at least once: the same event again, harmless
            else:
                self.conflicts.append(f"seq {seq} came as two events: {self.events[seq]}, {eid}")
        elif body.get("status") != "opening":
            self.replies[str(body["id"])] = body

    async def send(self, cmd: dict[str, Any]) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            await asyncio.wait_for(
                client.publish(f"{self.base}/cmd", json.dumps(cmd), qos=1), timeout=2
            )
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True

    async def reply(self, cid: str, within: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + within
        while cid not in self.replies:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.replies[cid]


class Campaign:
    """One crash campaign: the broker, the simulated board process, the daemon it kills
    and restarts, the scripted load, and the checks after every restart (module
    docstring). :meth:`run_once` plays one run and checks it."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int,
        broker_every: int = 7,
        vanish_every: int = 11,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.broker_every = broker_every
        self.vanish_every = vanish_every
        self.say = say
        self.tally = Tally()
        self.sock = Path(tempfile.mkdtemp(prefix="lkc-")) / "api.sock"
        self.link = root / "ttyA"
        self.db = root / "state" / "lockerd.db"
        self.config = root / "hub.toml"
        self.parcels: dict[str, Parcel] = {}
        self.codes: set[str] = set()
        # what was acknowledged to someone, to be found in the store after every restart
        self.acked_reserve: set[str] = set()
        self.acked_deposit: set[str] = set()
        self.acked_pickup: set[str] = set()
        self.acked_opens: Counter[str] = Counter()  # label -> opens reported done
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0  # when the running daemon was started (time.time())
        self.logs = [root / "lockerd.out", root / "lockerd.err"]

    # ------------------------------------------------------------------ set-up
    async def setup(self) -> None:
        self.broker = Broker.create(self.root / "broker")
        self.broker.start()
        state = self.root / "state"
        key = state / "keys" / "code-hmac.key"
        create_key(key)
        self.hasher = CodeHasher(load_key(key))
        self.code_key = key.read_bytes()
        public = state / "keys" / "cloud-commands.pub"
        private = demo_command_keys(public)
        self.signing = load_signing_key(private)
        self.private_pem = private.read_bytes()
        cloud = (
            f'\n[cloud]\nurl = "mqtt://127.0.0.1:{self.broker.port}"\n'
            f'command_key_file = "{public}"\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\nstate_coalesce_s = 0.5\n"
        )
        # the scripted technician works faster than a person: no rate limit in its way
        api = "\n[api]\ntechnician_burst = 10000\ntechnician_per_minute = 6000\n"
        config = e2e_config(self.root, self.sock, self.link, TIMERS, THROTTLE) + cloud + api
        self.config.write_text(config)
        with (self.root / "sim.log").open("ab") as sim_log:
            self.sim = await SimProcess.start(self.link, sim_log)
        self.cloud = Cloud(self.broker)
        self.cloud_task = asyncio.create_task(self.cloud.run(), name="cloud")
        await asyncio.wait_for(self.cloud.connected.wait(), 15)
        await self.start()

    async def close(self) -> None:
        self.cloud_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.cloud_task
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.sim.stop()
        self.broker.close()

    # ------------------------------------------------------------------ the daemon
    async def start(self) -> None:
        self.started_at = time.time()
        with self.logs[0].open("ab") as out, self.logs[1].open("ab") as err:
            self.proc = await spawn(self.config, out, err)
        await api_up(self.sock, self.proc, within=60)

    async def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self.tally.kills += 1

    # ------------------------------------------------------------------ the load
    def _parcel(self) -> Parcel:
        codes: list[str] = []
        while len(codes) < 2:
            code = new_code(8)
            if code not in self.codes:
                self.codes.add(code)
                codes.append(code)
        p = Parcel(f"C-{secrets.token_hex(4)}", codes[0], codes[1])
        self.parcels[p.id] = p
        return p

    def _command(self, type_: str, **body: Any) -> dict[str, Any]:
        now = int(time.time())
        cmd = {"id": f"k-{secrets.token_hex(6)}", "hub": HUB, "issued_at": now, "type": type_}
        cmd.update(body)
        if type_ in c.SIGNED:  # an open, or a grant (a reservation)
            signed = c.sign({**cmd, "expires_at": now + 60}, self.signing)
            self.cloud.signatures.append(signed["sig"])
            return signed
        return cmd

    async def _cloud(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        if not await self.cloud.send(cmd):
            return None
        return await self.cloud.reply(cmd["id"], within=5)

    async def reserve(self) -> None:
        p = self._parcel()
        now = int(time.time())
        reply = await self._cloud(
            self._command(
                "parcel.reserve",
                parcel=p.id,
                size=self.rng.choice(["S", "S", "M", "L"]),
                deposit_code_hash=self.hasher.hash(p.deposit),
                pickup_code_hash=self.hasher.hash(p.pickup),
                deposit_from=now - 60,
                deposit_until=now + 86_400,
                pickup_window_s=72 * 3600,
            )
        )
        if reply is not None and reply.get("ok"):
            self.acked_reserve.add(p.id)
            self.tally.acked["reserve"] += 1

    async def _parcels(self, state: str) -> list[str]:
        reply = await call(self.sock, {"op": "parcels", "states": [state]}, within=5)
        return [p["id"] for p in reply["result"] if p["id"] in self.parcels]

    async def _enter(self, code: str) -> dict[str, Any]:
        keypad = keypad_sockets(self.sock)["keypad:1"]  # a person at the hub's keypad
        reply = await call(keypad, {"op": "enter_code", "code": code}, within=10)
        return dict(reply["result"])

    async def deposit(self) -> None:
        await self._use_code("deposit", "reserved", self.acked_deposit)

    async def pickup(self) -> None:
        await self._use_code("pickup", "stored", self.acked_pickup)

    async def _use_code(self, kind: str, state: str, acked: set[str]) -> None:
        """A carrier (deposit) or a resident (pickup) enters the code of a parcel in
        ``state``; an open the keypad reports is acknowledged."""
        ready = await self._parcels(state)
        if not ready:
            return
        pid = self.rng.choice(ready)
        parcel = self.parcels[pid]
        result = await self._enter(parcel.deposit if kind == "deposit" else parcel.pickup)
        if result["status"] == "opened":
            acked.add(pid)
            self.tally.acked[kind] += 1

    async def technician_open(self) -> None:
        label = self.rng.choice(list(CHANNEL))
        reply = await call(
            self.sock,
            {"op": "open", "label": label, "reason": "campaign"},
            within=10,
        )
        if reply["result"]["status"] in ("opened", "already_open"):
            self.acked_opens[label] += 1
            self.tally.acked["technician_open"] += 1

    async def remote_open(self) -> None:
        label = self.rng.choice(list(CHANNEL))
        reply = await self._cloud(
            self._command("compartment.open", compartment=label, reason="campaign")
        )
        if reply is not None and reply.get("ok"):
            self.acked_opens[label] += 1
            self.tally.acked["remote_open"] += 1

    async def cancel(self) -> None:
        waiting = await self._parcels("reserved")
        if waiting:
            await self._cloud(self._command("parcel.cancel", parcel=self.rng.choice(waiting)))

    async def service(self) -> None:
        label = self.rng.choice(list(CHANNEL))
        for in_service in (False, True):
            await call(
                self.sock,
                {"op": "service", "label": label, "in_service": in_service},
                within=5,
            )

    async def shut_doors(self) -> None:
        """People shut every door that stands open (a parcel in, or taken out)."""
        for label in await self.open_doors():
            await self.sim.shut(label)

    async def open_doors(self) -> list[str]:
        state = await self.sim.ask("doors 0")
        return [label for label, ch in CHANNEL.items() if state[ch - 1] == "1"]

    async def load(self) -> None:
        actions: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
            ("reserve", self.reserve, 3),
            ("deposit", self.deposit, 4),
            ("pickup", self.pickup, 3),
            ("technician_open", self.technician_open, 1),
            ("remote_open", self.remote_open, 1),
            ("cancel", self.cancel, 1),
            ("service", self.service, 1),
            ("shut_doors", self.shut_doors, 4),
        ]
        names = [a[0] for a in actions]
        weights = [a[2] for a in actions]
        by_name = {a[0]: a[1] for a in actions}
        while True:
            name = self.rng.choices(names, weights)[0]
            self.tally.actions[name] += 1
            await by_name[name]()
            await asyncio.sleep(self.rng.uniform(0.0, 0.05))  # people take a moment

    # ------------------------------------------------------------------ one run
    async def run_once(self, n: int) -> None:
        chaos: list[asyncio.Task[None]] = []
        if self.broker_every and n % self.broker_every == self.broker_every - 1:
            chaos.append(asyncio.create_task(self._broker_outage()))
        if self.vanish_every and n % self.vanish_every == self.vanish_every - 1:
            chaos.append(asyncio.create_task(self._adapter_vanishes()))
        load = asyncio.create_task(self.load())
        await asyncio.sleep(self.rng.uniform(0.2, 2.5))
        await self.kill()
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await load  # the daemon died under it: its errors are the point
        for t in chaos:
            await t
        if self.rng.random() < 0.5:
            await self.shut_doors()  # while nobody watches
        await self.start()
        self.tally.runs += 1
        self.check(f"run {n}")

    async def _broker_outage(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        await asyncio.to_thread(self.broker.stop)
        await asyncio.sleep(self.rng.uniform(0.3, 1.5))
        await asyncio.to_thread(self.broker.start)
        self.tally.broker_restarts += 1

    async def _adapter_vanishes(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        assert (await self.sim.ask("vanish")) == "ok"
        await asyncio.sleep(self.rng.uniform(0.3, 1.5))
        assert (await self.sim.ask("reappear")).startswith("ok")
        self.tally.adapter_vanishes += 1

    # ------------------------------------------------------------------ the checks
    def violation(self, where: str, what: str) -> None:
        self.tally.violations.append(f"{where}: {what}")
        self.say(f"VIOLATION {where}: {what}")

    def check(self, where: str) -> None:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            for problem in store_problems(db, self.started_at):
                self.violation(where, problem)
            self._acked_in_store(db, where)
        finally:
            db.close()
        for conflict in self.cloud.conflicts:
            self.violation(where, conflict)
        self.cloud.conflicts.clear()

    def _acked_in_store(self, db: sqlite3.Connection, where: str) -> None:
        state = dict(db.execute("SELECT id, state FROM parcels").fetchall())
        for pid in self.acked_reserve:
            if pid not in state:
                self.violation(where, f"reservation {pid} acknowledged to the cloud is gone")
        for pid in self.acked_deposit:
            if state.get(pid) in (None, "reserved", "cancelled"):
                self.violation(where, f"deposit of {pid} reported open, parcel {state.get(pid)}")
        for pid in self.acked_pickup:
            if state.get(pid) in (None, "stored"):
                self.violation(where, f"pickup of {pid} reported open, parcel {state.get(pid)}")
        done = Counter(
            r[0]
            for r in db.execute(
                "SELECT label FROM intents WHERE purpose='service' "
                "AND outcome IN ('opened', 'already_open')"
            )
        )
        for label, n in self.acked_opens.items():
            if done[label] < n:
                self.violation(where, f"{n} opens of {label} reported done, {done[label]} stored")

    async def unlock_check(self, where: str) -> None:
        pulses = await self.sim.unlocks()
        self.tally.unlocks = sum(pulses.values())
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            intents = Counter(r[0] for r in db.execute("SELECT label FROM intents"))
        finally:
            db.close()
        for label, n in pulses.items():
            if n > intents[label]:
                self.violation(where, f"{label} pulsed {n} times for {intents[label]} intents")

    async def finish(self) -> None:
        """The load stops, the doors are shut, the outbox drains to the cloud."""
        await self.shut_doors()
        deadline = time.monotonic() + 90
        while True:
            db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                (left,) = db.execute("SELECT count(*) FROM outbox").fetchone()
                (next_seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            finally:
                db.close()
            last = int(next_seq) - 1
            missing = [s for s in range(1, last + 1) if s not in self.cloud.events]
            if left == 0 and not missing:
                break
            if time.monotonic() > deadline:
                self.violation(
                    "end", f"outbox {left} left; the cloud misses {len(missing)} of {last} seqs"
                )
                break
            await asyncio.sleep(0.1)
        self.tally.events = len(self.cloud.events)
        self.tally.codes = len(self.codes)
        self.tally.redeliveries = self.cloud.redeliveries
        await self.unlock_check("end")
        self.check("end")
        self.secrets_check()

    def secrets_check(self) -> None:
        logs = "".join(p.read_text(errors="replace") for p in self.logs if p.exists())
        if "api_request" not in logs:
            self.violation("end", "the daemon's log is missing")
        stored = b"".join(p.read_bytes() for p in self.db.parent.glob("lockerd.db*"))
        secrets_ = [*self.codes, *self.cloud.signatures, self.code_key.hex()]
        secrets_.append(base64.b64encode(self.code_key).decode())
        secrets_ += [
            line
            for line in self.private_pem.decode().splitlines()
            if line and not line.startswith("-----")
        ]
        for s in secrets_:
            if s in logs and (len(s) > 16 or standalone(logs.encode(), s.encode())):
                self.violation("end", "a secret (code, key or signature) in the daemon's log")
                break
        for s in self.codes:
            if standalone(stored, s.encode()):
                self.violation("end", "a plain code in the store's files")
                break
        # how many codes turn up only inside longer runs (hashes, ids, timestamps)
        self.tally.code_lookalikes = sum(
            1 for s in self.codes if s.encode() in stored and not standalone(stored, s.encode())
        )

    async def campaign(self, runs: int) -> Tally:
        started = time.monotonic()
        await self.setup()
        try:
            for n in range(runs):
                await self.run_once(n)
                if n % 10 == 9:
                    await self.unlock_check(f"run {n}")
                    self.say(
                        f"run {n + 1}/{runs}: {self.tally.kills} kills, "
                        f"{len(self.cloud.events)} events, "
                        f"{len(self.tally.violations)} violations"
                    )
            await self.finish()
        finally:
            self.tally.elapsed_s = time.monotonic() - started
            await self.close()
        return self.tally


_HEXISH = frozenset(b"0123456789abcdefABCDEF")


def standalone(haystack: bytes, code: bytes) -> bool:
    """``code`` (8 digits) occurs in ``haystack`` as a value of its own, not as 8 digits
    inside a longer run of hex digits or digits: a code hash (64 hex), an event id (a
    UUID), a timestamp. With thousands of random 8-digit codes and megabytes of a
    store's pages, such chance matches are expected; a stored code stands alone."""
    start = haystack.find(code)
    while start != -1:
        left, right = start, start + len(code)
        while left > 0 and haystack[left - 1] in _HEXISH:
            left -= 1
        while right < len(haystack) and haystack[right] in _HEXISH:
            right += 1
        if right - left == len(code):
            return True
        start = haystack.find(code, start + 1)
    return False


def store_problems(db: sqlite3.Connection, started: float = float("inf")) -> list[str]:
    """The store's own truth, read-only: what must hold after any crash. ``started``:
    when the running daemon started; an open it began since (a remote open the broker
    redelivered, say) may be under way."""
    problems = []
    if (check := db.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
        problems.append(f"integrity_check: {check}")
    open_intents = db.execute(
        "SELECT id, label FROM intents WHERE outcome IS NULL AND created < ?", (started,)
    ).fetchall()
    if open_intents:
        problems.append(f"intents left without an outcome after start-up: {open_intents}")
    # (rows leave the outbox as their PUBACKs come, not always in seq order: a gap in
    # what is left is no fault; the cloud's side is checked at the end, every seq)
    seqs = [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    (next_seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    if seqs and (seqs[0] < 1 or seqs[-1] >= int(next_seq)):
        problems.append(f"outbox seqs {seqs[0]}..{seqs[-1]} outside 1..{int(next_seq) - 1}")
    held: dict[str, str] = {}
    for pid, label in db.execute(
        "SELECT parcel_id, label FROM compartments WHERE parcel_id IS NOT NULL"
    ):
        if pid in held:
            problems.append(f"parcel {pid} in two compartments: {held[pid]} and {label}")
        held[pid] = label
    in_comp = {s.value for s in d.IN_COMPARTMENT}
    for pid, state, comp in db.execute("SELECT id, state, compartment FROM parcels"):
        if state in in_comp and held.pop(pid, None) != comp:
            problems.append(f"parcel {pid} {state} in {comp}, which does not hold it")
        elif state not in in_comp and pid in held:
            problems.append(f"parcel {pid} {state}, yet {held[pid]} holds it")
    if held:
        problems.append(f"compartments hold parcels the store does not place there: {held}")
    return problems


def report(tally: Tally, seed: int, command: str) -> str:
    lines = [
        "# Crash campaign",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- command: `{command}` (seed {seed})",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| runs (each: load, SIGKILL, restart, checks) | {tally.runs} |",
        f"| kills | {tally.kills} |",
        f"| broker stopped and restarted during the load | {tally.broker_restarts} |",
        f"| bus adapter vanished and came back | {tally.adapter_vanishes} |",
        f"| actions tried | {sum(tally.actions.values())} |",
        f"| actions acknowledged (to the keypad, a technician or the cloud) "
        f"| {sum(tally.acked.values())} |",
        f"| events the cloud received (distinct seq) | {tally.events} |",
        f"| events delivered again (same seq and id) | {tally.redeliveries} |",
        f"| lock pulses | {tally.unlocks} |",
        f"| codes issued (none may be in the logs or stored in plain) | {tally.codes} |",
        f"| codes seen by chance inside longer runs of the store's bytes (hashes, ids, "
        f"timestamps) | {tally.code_lookalikes} |",
        f"| **violations** (target 0) | **{len(tally.violations)}** |",
        f"| elapsed | {tally.elapsed_s:.0f} s |",
        "",
        "Actions tried: "
        + ", ".join(f"{k} {v}" for k, v in sorted(tally.actions.items()))
        + ". Acknowledged: "
        + ", ".join(f"{k} {v}" for k, v in sorted(tally.acked.items()))
        + ".",
    ]
    if tally.violations:
        lines += ["", "## Violations", "", *(f"- {v}" for v in tally.violations[:100])]
    return "\n".join(lines) + "\n"


def figures(tally: Tally) -> list[Figure]:
    """The campaign's figures for bench/results/latest.md (``python -m bench --campaign N``)."""
    name = "crash campaign"
    return [
        Figure(f"{name}: runs (load, SIGKILL, restart, checks)", tally.runs, "runs"),
        Figure(f"{name}: broker outages during the load", tally.broker_restarts, ""),
        Figure(f"{name}: bus adapter vanished and came back", tally.adapter_vanishes, ""),
        Figure(f"{name}: actions acknowledged", sum(tally.acked.values()), ""),
        Figure(f"{name}: events the cloud received (distinct seq)", tally.events, ""),
        Figure(
            f"{name}: violations found",
            len(tally.violations),
            "",
            "0",
            not tally.violations,
        ),
    ]


def run(
    runs: int,
    seed: int,
    *,
    broker_every: int = 7,
    vanish_every: int = 11,
    say: Callable[[str], None] = lambda _: None,
) -> Tally:
    with tempfile.TemporaryDirectory(prefix="lockerd-campaign-") as tmp:
        campaign = Campaign(
            Path(tmp), seed=seed, broker_every=broker_every, vanish_every=vanish_every, say=say
        )
        return asyncio.run(campaign.campaign(runs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crash_campaign", description=__doc__)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--broker-every", type=int, default=7)
    p.add_argument("--vanish-every", type=int, default=11)
    p.add_argument("--out", default=str(RESULTS / "crash_campaign.md"))
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    tally = run(
        args.runs,
        seed,
        broker_every=args.broker_every,
        vanish_every=args.vanish_every,
        say=lambda line: print(line, flush=True),
    )
    command = "python -m bench.crash_campaign " + " ".join(argv or sys.argv[1:])
    text = report(tally, seed, command.strip())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                **vars(tally),
                "actions": dict(tally.actions),
                "acked": dict(tally.acked),
                "seed": seed,
                "command": command,
            },
            indent=1,
        )
    )
    print(text)
    return 1 if tally.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
