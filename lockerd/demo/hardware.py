"""``lockerd demo --hardware``: the hardware layer alone, two buses of simulated boards
driven for real, without the hub above them.

It starts the built-in simulator on real pseudo-terminals, drives it with the
production drivers (Bus, boards, poller), plays a short scene — a carrier's door, a
jammed lock, a forced door, a dead board — and then keeps polling, printing every door
change, until interrupted (``--once``: the scene only). For a technician checking a
board kind, or a newcomer reading the drivers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockerd.drivers.boards import Board, DoorReading, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.errors import DriverError
from lockerd.drivers.poll import BusPoller
from lockerd.drivers.settings import BusSettings, Cu48Settings, ModbusRelaySettings
from lockerd.logs import configure
from lockerd.simulator.boards import SimBoard, SimCu48, SimModbusRelay
from lockerd.simulator.line import Simulator


@dataclass
class DemoBus:
    name: str
    sim: Simulator
    bus: Bus
    boards: list[Board[Any]]
    poller: BusPoller


class Doors:
    """The last reading of every board, and a printer for what changed."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.last: dict[str, tuple[bool, ...]] = {}
        self.changed = asyncio.Event()

    def on_reading(self, reading: DoorReading) -> None:
        before = self.last.get(reading.board)
        self.last[reading.board] = reading.doors_open
        if before is None:
            return
        for i, (was, now) in enumerate(zip(before, reading.doors_open, strict=True)):
            if was != now:
                self.say(f"  door {reading.board} ch {i + 1}: {'OPEN' if now else 'shut'}")
                self.changed.set()

    def is_open(self, board: str, channel: int) -> bool:
        return self.last.get(board, ())[channel - 1 : channel] == (True,)

    async def wait_for(self, board: str, channel: int, is_open: bool, within: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.is_open(board, channel) != is_open:
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True


async def start_bus(
    name: str, sims: list[SimBoard], settings: list[Any], doors: Doors, say: Callable[[str], None]
) -> DemoBus:
    sim = Simulator(sims)
    url = await sim.start()
    baud = 9600 if any(isinstance(s, ModbusRelaySettings) for s in settings) else 19200
    bus = Bus(BusSettings(port=url, baudrate=baud, offline_probe_s=2.0), name=name)
    await bus.start()
    if not await bus.wait_open(5):
        raise SystemExit(f"bus {name}: could not open {url}")
    boards = [make_board(bus, s) for s in settings]

    def failed(board: Board[Any], exc: DriverError) -> None:
        if type(exc).__name__ != "BoardOffline":
            say(f"  {exc}")

    poller = BusPoller(boards, interval_s=0.5, on_reading=doors.on_reading, on_failure=failed)
    say(f"bus {name} on {url}: " + ", ".join(f"{b.key} ({b.channels} ch)" for b in boards))
    return DemoBus(name, sim, bus, boards, poller)


async def scene(buses: dict[str, DemoBus], doors: Doors, say: Callable[[str], None]) -> None:
    a, b = buses["A"], buses["B"]
    cu48, relay = a.boards[0], b.boards[0]
    sim_cu48, sim_relay = a.sim.board(0), b.sim.board(1)

    say("\n1. a carrier's compartment: unlock A/kerong-cu48@0 ch 7, the spring pops the door")
    say(f"  unlock -> {(await cu48.unlock(7)).value}")
    ok = await doors.wait_for(cu48.key, 7, True, 3)
    say(f"  confirmed by the door sensor: {'opened' if ok else 'NOT opened'}")
    say("  the carrier puts the parcel in and shuts the door")
    sim_cu48.close_door(7)
    await doors.wait_for(cu48.key, 7, False, 3)

    say("\n2. a Modbus relay board, board-timed pulse: unlock B/modbus-relay@1 ch 3")
    say(f"  unlock -> {(await relay.unlock(3)).value}")
    ok = await doors.wait_for(relay.key, 3, True, 3)
    say(f"  confirmed by the door sensor: {'opened' if ok else 'NOT opened'}")
    sim_relay.close_door(3)
    await doors.wait_for(relay.key, 3, False, 3)

    say("\n3. a jammed lock: the pulse is sent, the door stays shut -> 'jammed', never 'opened'")
    sim_cu48.faults.jammed.add(12)
    say(f"  unlock A/kerong-cu48@0 ch 12 -> {(await cu48.unlock(12)).value}")
    ok = await doors.wait_for(cu48.key, 12, True, 1.5)
    say(f"  door sensor after 1.5 s: {'opened' if ok else 'still shut: jammed'}")
    sim_cu48.faults.jammed.clear()

    say("\n4. a forced door: ch 20 opens with no command")
    sim_cu48.open_door(20)
    await doors.wait_for(cu48.key, 20, True, 3)
    sim_cu48.close_door(20)
    await doors.wait_for(cu48.key, 20, False, 3)

    say("\n5. a dead board: A/kerong-cu48@1 loses power; the others keep their poll cycle")
    a.sim.board(1).faults.dead = True
    start_cycles = a.poller.stats.cycles
    start_requests = a.bus.health_of("kerong-cu48@1").requests
    await asyncio.sleep(3)  # the demo lets three seconds of polling pass
    health = a.bus.health_of("kerong-cu48@1")
    say(
        f"  3 s: {a.poller.stats.cycles - start_cycles} poll cycles on bus A, "
        f"kerong-cu48@1 online={health.online}, "
        f"requests to it on the wire={health.requests - start_requests}, "
        f"refused without using the wire={health.refused_offline}"
    )
    a.sim.board(1).faults.dead = False
    say("  power back: it is probed every 2 s and comes back by itself")


async def run(once: bool) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    doors = Doors(say)
    say("lockerd demo: the hardware layer on the built-in simulator (real ptys, real frames)")
    buses = {
        "A": await start_bus(
            "A",
            [SimCu48(0, spring_delay_s=0.1), SimCu48(1, spring_delay_s=0.1)],
            [Cu48Settings(address=0), Cu48Settings(address=1)],
            doors,
            say,
        ),
        "B": await start_bus(
            "B",
            [SimModbusRelay(1, 8, spring_delay_s=0.1)],
            [ModbusRelaySettings(address=1, channels=8)],
            doors,
            say,
        ),
    }
    tasks = [asyncio.create_task(d.poller.run(), name=f"poll {d.name}") for d in buses.values()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await scene(buses, doors, say)
        if not once:
            say("\npolling every board each 0.5 s; door changes print here. Ctrl-C to stop.")
            await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for d in buses.values():
            say(
                f"bus {d.name}: {d.poller.stats.cycles} poll cycles, "
                f"{sum(d.poller.stats.readings.values())} readings"
            )
            await d.bus.close()
            await d.sim.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockerd demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="play the scene, then exit")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    configure(level=args.log_level, stream=sys.stderr)
    return asyncio.run(run(args.once))
