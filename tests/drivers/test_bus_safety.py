"""What a reviewer broke the bus with: each test fails if its fix is undone."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from lockerd.drivers.boards import DoorReading, UnlockAck, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.errors import BoardOffline, BusClosed, PortUnavailable, ReplyTimeout
from lockerd.drivers.framing import wire_time
from lockerd.drivers.poll import BusPoller
from lockerd.drivers.settings import BusSettings, Cu16Settings, Cu48Settings, ModbusRelaySettings
from lockerd.simulator.boards import SimCu16, SimCu48, SimModbusRelay
from lockerd.simulator.line import PtyPort, SimLine, Simulator
from tests.support.waiting import eventually

MakeSim = Callable[..., Any]
MakeBus = Callable[..., Any]


@pytest.fixture
async def slamming_gateway() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP 'gateway' that accepts and drops every connection at once."""
    accepted = [0]

    async def slam(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"tcp://127.0.0.1:{port}", accepted
    server.close()
    await server.wait_closed()


async def test_a_gateway_that_drops_every_connection_is_not_hammered(
    slamming_gateway: tuple[str, list[int]],
) -> None:
    url, accepted = slamming_gateway
    bus = Bus(BusSettings(port=url, reopen_min_s=0.05, reopen_max_s=0.4))
    with capture_logs() as logs:
        await bus.start()
        await eventually(lambda: accepted[0] >= 6, within=10, what="six reconnects")
        await bus.close()
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 ...: backoff, not thousands of reconnects a second
    assert bus.counters.opens <= 8
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["bus_port_lost"]  # once per outage


async def test_tcp_links_find_a_dead_gateway_in_seconds(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8)], tcp=("127.0.0.1", 0))
    bus = await make_bus(sim.url, timeout_ms=100)
    link = bus._link
    assert link is not None
    assert link.transport is not None
    sock = link.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 1000


async def test_a_failed_prepare_never_stops_the_door_readings(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    """Wrong coil_base: 'all off' is refused every time, but forced doors are still seen."""
    sim = await make_sim([SimModbusRelay(1, 8)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=1, coil_base=100))
    sim.board(1).open_door(4)
    readings: list[DoorReading] = []
    failures: list[str] = []
    poller = BusPoller(
        [board],
        interval_s=0.01,
        on_reading=readings.append,
        on_failure=lambda b, e: failures.append(str(e)),
    )
    task = asyncio.create_task(poller.run())
    await eventually(lambda: poller.stats.cycles >= 20, what="20 cycles")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(readings) >= poller.stats.cycles - 1
    assert all(r.doors_open[3] for r in readings)
    assert len(failures) == 1  # prepare is retried every PREPARE_RETRY_S, not every cycle
    assert "check coil_base" in failures[0]


async def test_a_board_without_fc0f_is_prepared_coil_by_coil(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    relay = SimModbusRelay(1, 4)
    relay.refuse_functions = {0x0F}
    relay.relays[2] = True
    sim = await make_sim([relay])
    bus = await make_bus(sim.url)
    await make_board(bus, ModbusRelaySettings(address=1, channels=4)).prepare()
    assert relay.relays == [False] * 4
    assert [t.command for t in relay.told].count("coil") == 4  # FC05 per relay


async def test_a_dead_modbus_board_costs_no_prepare_storm(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimModbusRelay(1, 8), SimCu48(0, 8)])
    bus = await make_bus(sim.url, offline_after=2, read_attempts=1, offline_probe_s=0.3)
    relay = make_board(bus, ModbusRelaySettings(address=1))
    kerong_board = make_board(bus, Cu48Settings(address=0, channels=8))
    poller = BusPoller([relay, kerong_board], interval_s=0.01, on_reading=lambda r: None)
    task = asyncio.create_task(poller.run())
    await eventually(lambda: poller.stats.cycles >= 3, what="first cycles")
    sim.board(1, "modbus-relay").faults.dead = True
    start = bus.health_of(relay.key).requests
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await eventually(lambda: poller.stats.cycles >= 80, within=20, what="80 cycles")
    elapsed = loop.time() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    spent = bus.health_of(relay.key).requests - start
    # 2 failures to go offline, then one probe per 0.3 s; a prepare storm would be ~80
    assert spent <= 2 + elapsed / 0.3 + 2, spent


async def test_prepare_never_cuts_a_pulse_short(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimModbusRelay(1, 8, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=1, pulse="software", pulse_ms=300))
    unlock = asyncio.create_task(board.unlock(2))
    await eventually(lambda: sim.board(1).relays[1], what="relay 2 on")
    await board.prepare()  # e.g. the poller after a transient failure
    await unlock
    told = sim.board(1).told
    on = next(t.at for t in told if t.command == "coil" and t.value == 1)
    first_off = min(t.at for t in told if t.command in ("write-coils", "coil") and t.value != 1)
    assert first_off - on >= 0.3


async def test_the_port_lost_during_the_silence_sends_nothing(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    bus = await make_bus(sim.url, gap_ms=300)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    await board.read()
    unlock = asyncio.create_task(board.unlock(1))  # waits out the 300 ms silence
    await asyncio.sleep(0)
    sim.vanish()
    with pytest.raises(PortUnavailable):
        await unlock
    assert sim.board(0).unlocks_of(1) == 0


async def test_a_cancelled_caller_leaves_the_line_to_the_late_reply(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8), SimCu48(1, 8)])
    bus = await make_bus(sim.url, timeout_ms=200, read_attempts=1)
    slow = make_board(bus, Cu48Settings(address=0, channels=8))
    other = make_board(bus, Cu48Settings(address=1, channels=8))
    sim.board(0).faults.late_reply_s = 0.1
    task = asyncio.create_task(slow.read())
    await eventually(lambda: sim.board(0).status_reads == 1, what="request on the wire")
    first = bus.last_timing
    assert first is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await other.read()
    second = bus.last_timing
    assert second is not None
    budget = 0.2 + wire_time(6 + 12, 19200)
    assert second.written >= first.written + budget  # not on top of board 0's reply
    assert sim.stats.clean, sim.stats.summary()


async def test_a_cu16_unlock_keeps_the_line_free_for_a_reply_it_may_get(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu16(0, 16, answers_unlock=True)], strict=True)
    bus = await make_bus(sim.url, timeout_ms=50)
    board = make_board(bus, Cu16Settings(address=0))
    await board.read()
    await board.unlock(1)
    unlock = bus.last_timing
    assert unlock is not None
    await board.read()
    read = bus.last_timing
    assert read is not None
    assert read.written >= unlock.written + 0.05 + wire_time(5 + 9, 19200)
    assert sim.stats.clean, sim.stats.summary()  # the unlock's reply never met our read


async def test_close_lets_a_software_pulse_switch_its_relay_off(make_sim: MakeSim) -> None:
    sim = await make_sim([SimModbusRelay(1, 8, spring_delay_s=0)])
    bus = Bus(BusSettings(port=sim.url, gap_ms=0.5, timeout_ms=50))
    await bus.start()
    assert await bus.wait_open(5)
    board = make_board(bus, ModbusRelaySettings(address=1, pulse="software", pulse_ms=200))
    unlock = asyncio.create_task(board.unlock(5))
    await eventually(lambda: sim.board(1).relays[4], what="relay 5 on")
    await bus.close()
    assert await unlock is UnlockAck.ACKNOWLEDGED
    assert sim.board(1).relays == [False] * 8
    with pytest.raises(BusClosed):
        await board.read()


class _EchoingPort(PtyPort):
    """A 2-wire adapter that hears its own transmitter: every byte written comes back."""

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except OSError:
            return
        if data:
            self._send(data)
            self.line.receive(data, self._send)


async def test_local_echo_is_not_taken_for_the_boards_answer() -> None:
    line = SimLine([SimModbusRelay(1, 8, spring_delay_s=0)])
    line.boards[0].faults.dead = True
    port = _EchoingPort(line)
    url = await port.start()
    try:
        settings = BusSettings(port=url, gap_ms=0.5, timeout_ms=50, local_echo=True)
        async with Bus(settings) as bus:
            assert await bus.wait_open(5)
            board = make_board(bus, ModbusRelaySettings(address=1))
            # FC05 echo is byte-identical to the request: without local_echo it would
            # "acknowledge" an unlock that no board received
            with pytest.raises(ReplyTimeout):
                await board.read()
            line.boards[0].faults.clear()
            assert (await board.read()).doors_open == (False,) * 8
            assert bus.counters.echo_bytes >= 16
    finally:
        await port.close()


async def test_a_silent_bus_is_reported_once_as_a_bus_problem(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8), SimCu48(1, 8)])
    bus = await make_bus(sim.url, read_attempts=1, offline_after=2)
    boards = [make_board(bus, Cu48Settings(address=a, channels=8)) for a in (0, 1)]
    for b in boards:
        await b.read()
    for s in sim.line.boards:
        s.faults.dead = True
    with capture_logs() as logs:
        for _ in range(3):
            for b in boards:
                with pytest.raises((ReplyTimeout, BoardOffline)):
                    await b.read()
        assert bus.snapshot()["silent"]
        for s in sim.line.boards:
            s.faults.clear()
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["bus_silent"]  # one bus-level alarm, not one per board


def test_register_maps_that_run_off_the_address_space_are_refused() -> None:
    with pytest.raises(ValidationError, match="coil_base \\+ channels goes past"):
        ModbusRelaySettings(address=1, channels=8, coil_base=0xFFFC)
    with pytest.raises(ValidationError, match="flash_base"):
        ModbusRelaySettings(address=1, channels=8, flash_base=0xFFFF)


async def test_one_boards_bad_consumer_never_stops_the_poller(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8), SimCu48(1, 8)])
    bus = await make_bus(sim.url)
    boards = [make_board(bus, Cu48Settings(address=a, channels=8)) for a in (0, 1)]
    seen: list[str] = []

    def consumer(reading: DoorReading) -> None:
        if reading.board.endswith("@0"):
            raise RuntimeError("a bug downstream")
        seen.append(reading.board)

    poller = BusPoller(boards, interval_s=0.01, on_reading=consumer)
    task = asyncio.create_task(poller.run())
    await eventually(lambda: poller.stats.cycles >= 5, what="five cycles")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen.count("kerong-cu48@1") >= 4


async def test_simulator_closes_every_fd_it_opened() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        async with Simulator([SimCu48(0, 8)]) as sim:
            await sim.reappear()
    assert len(os.listdir("/proc/self/fd")) == before
