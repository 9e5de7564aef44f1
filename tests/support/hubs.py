"""A small hub in the test's own process, built by the one wiring
(:func:`lockerd.daemon.wiring.open_hub`) on simulated boards (real ptys, a real SQLite
file): its config made for the test, its clock the test's.

    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path)   # four doors, A01-A04, on one CU48
        hub.reserve("P1", d.Size.M, "11112222", "33334444")
        await hub.service.enter_code("11112222", "keypad:1")
        hub.board.close_door(2)                 # a person at the simulated board
        hub.now[0] += 3601                      # the service's clock

:func:`sim_hub_config` makes the config of any such hub (another board, other doors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockerd.api.server import ApiServer
from lockerd.config import HubConfig, ThrottlePolicy
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts, simulators
from lockerd.drivers.bus import Bus
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher
from lockerd.hub.service import HubService
from lockerd.hub.store import Store
from lockerd.simulator.boards import SimCu48
from lockerd.simulator.line import Simulator
from tests.support.buses import FAST_BUS

KEY = bytes(range(32))  # the code key of every hub made here
SIZES = [("A01", d.Size.S), ("A02", d.Size.M), ("A03", d.Size.M), ("A04", d.Size.XL)]
START = 1_000_000.0  # the service's clock when the hub opens
SPRING_DELAY_S = 0.01  # a released door springs open this quickly on the simulator
BUS = "A"  # the one bus of a hub made here
TERMINAL = "keypad:1"  # the one terminal, on its own socket

# a path a Unix socket can be bound at is short (sun_path: 108 bytes with its NUL)
_SOCKET_PATH_MAX = 100


def sim_hub_config(
    tmp_path: Path,
    doors: Sequence[tuple[str, d.Size]],
    *,
    board: dict[str, Any],
    sockets: Path | None = None,
    timers: dict[str, Any] | None = None,
    throttle: ThrottlePolicy | None = None,
    api: dict[str, Any] | None = None,
) -> HubConfig:
    """The config of a hub with one bus (:data:`BUS`, :data:`FAST_BUS` timings) and one
    ``board`` (its settings: kind, address, channels) at address 0, whose channels 1..n
    are ``doors`` (label, size). Its state is in ``tmp_path/hub``; its technician socket
    (``api.sock``) and :data:`TERMINAL`'s (``keypad.sock``) in ``sockets``
    (default ``tmp_path/run``). No disk reserve."""
    state = tmp_path / "hub"
    run = sockets or tmp_path / "run"
    return HubConfig.model_validate(
        {
            "hub_id": "test-hub",
            "simulated": True,
            "buses": [
                {"name": BUS, "port": f"{run}/tty{BUS}", **FAST_BUS, "boards": [board]},
            ],
            "compartments": [
                {
                    "label": label,
                    "size": size.value,
                    "bus": BUS,
                    "board": board.get("address", 0),
                    "channel": i + 1,
                }
                for i, (label, size) in enumerate(doors)
            ],
            "timers": timers or {},
            "codes": {"throttle": (throttle or ThrottlePolicy()).model_dump()},
            "paths": {
                "state_dir": str(state),
                "socket": str(run / "api.sock"),
                "technician_group": None,
                "disk_reserve_mb": 0,
            },
            "terminals": [{"name": TERMINAL, "socket": str(run / "keypad.sock")}],
            "api": api or {},
        }
    )


def socket_dir(stack: contextlib.AsyncExitStack, tmp_path: Path) -> Path:
    """``tmp_path/run``, or a short directory (removed on the way out) where that
    would make a socket path too long to bind."""
    run = tmp_path / "run"
    if len(str(run / "keypad.sock")) <= _SOCKET_PATH_MAX:
        return run
    short = Path(tempfile.mkdtemp(prefix="lk-"))
    stack.callback(shutil.rmtree, short, ignore_errors=True)
    return short


async def open_sim_hub(
    stack: contextlib.AsyncExitStack,
    cfg: HubConfig,
    *,
    clock: list[float] | None = None,
    start_monitor: bool = True,
) -> Hub:
    """``open_hub(cfg)`` on simulated boards, in ``stack``: the code key is :data:`KEY`,
    the service's clock ``clock[0]`` (default: the wall clock); the door monitor runs
    unless ``start_monitor`` is false."""
    key = cfg.key_path()
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(KEY)
    hub = await stack.enter_async_context(
        open_hub(
            cfg,
            ports=SimulatedPorts(spring_delay_s=SPRING_DELAY_S),
            clock=None if clock is None else lambda: clock[0],
        )
    )
    for name, bus in hub.buses.items():
        assert bus.is_open, f"bus {name} did not open"
    if start_monitor:
        task = asyncio.create_task(hub.monitor.run())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        stack.push_async_callback(stop)
    return hub


@dataclass
class HubView:
    """An opened hub as a test reads it: the service, the store, and what a door, a
    parcel and the outbox say."""

    hub: Hub  # as open_hub made it

    @property
    def service(self) -> HubService:
        return self.hub.service

    @property
    def store(self) -> Store:
        return self.hub.store

    @property
    def hasher(self) -> CodeHasher:
        return self.hub.service.hasher

    def state(self, label: str) -> d.CompartmentState:
        comp = self.store.compartment(label)
        assert comp is not None
        return comp.state

    def parcel(self, pid: str) -> d.ParcelState:
        p = self.store.parcel(pid)
        assert p is not None
        return p.state

    def events(self) -> list[str]:
        return [r.type for r in self.store.outbox(limit=10_000)]


@dataclass
class SimHub(HubView):
    """The four-door hub of :func:`make_hub`, and what a test plays it with."""

    now: list[float]  # the service's clock: now[0]

    @property
    def bus(self) -> Bus:
        return self.hub.buses[BUS]

    @property
    def api(self) -> ApiServer:
        return self.hub.api

    @property
    def sock(self) -> Path:
        """The technician socket."""
        return Path(self.hub.cfg.paths.socket)

    @property
    def keypad(self) -> Path:
        """:data:`TERMINAL`'s socket."""
        return Path(next(t.socket for t in self.hub.cfg.terminals if t.name == TERMINAL))

    @property
    def sim(self) -> Simulator:
        return simulators(self.hub)[BUS]

    @property
    def board(self) -> SimCu48:
        b = self.sim.board(0)
        assert isinstance(b, SimCu48)
        return b

    def reserve(self, pid: str, size: d.Size, deposit: str, pickup: str) -> None:
        parcel = d.Parcel(
            pid,
            d.Kind.DELIVERY,
            size,
            deposit_from=self.now[0] - 10,
            deposit_until=self.now[0] + 86_400,
            collect_window_s=3600,
        )
        self.store.add_parcel(
            parcel,
            {
                d.Purpose.DEPOSIT: self.hasher.hash(deposit),
                d.Purpose.COLLECT: self.hasher.hash(pickup),
            },
            now=self.now[0],
            actor="cloud",
        )


async def make_hub(
    stack: contextlib.AsyncExitStack,
    tmp_path: Path,
    *,
    start_monitor: bool = True,
    api: dict[str, Any] | None = None,
) -> SimHub:
    """Four doors (:data:`SIZES`) on channels 1-4 of a Kerong CU48 (8 channels); wrong
    codes: two free, then 30 s; a door opens within 1 s; the monitor polls every 10 ms
    and believes one reading. ``api``: the ``[api]`` settings."""
    cfg = sim_hub_config(
        tmp_path,
        SIZES,
        board={"kind": "kerong-cu48", "address": 0, "channels": 8},
        sockets=socket_dir(stack, tmp_path),
        timers={"open_confirm_s": 1.0, "poll_interval_s": 0.01, "debounce_reads": 1},
        throttle=ThrottlePolicy(free_attempts=2, base_delay_s=30),
        api=api,
    )
    now = [START]
    hub = await open_sim_hub(stack, cfg, clock=now, start_monitor=start_monitor)
    return SimHub(hub, now)
