"""Bus and board drivers against the simulator over a real pseudo-terminal (and TCP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lockerd.drivers.boards import BoardRejected, UnlockAck, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.errors import (
    BoardOffline,
    BusClosed,
    PortUnavailable,
    ReplyTimeout,
    UnlockNotSent,
    UnlockUnconfirmed,
)
from lockerd.drivers.poll import BusPoller
from lockerd.drivers.settings import BusSettings, Cu16Settings, Cu48Settings, ModbusRelaySettings
from lockerd.simulator.boards import SimCu16, SimCu48, SimModbusRelay
from tests.support.waiting import eventually, until_result

MakeSim = Callable[..., Any]
MakeBus = Callable[..., Any]


def opened(doors: tuple[bool, ...]) -> list[int]:
    return [i + 1 for i, is_open in enumerate(doors) if is_open]


# --------------------------------------------------------------------------- happy paths


async def test_cu48_unlock_then_status_shows_the_door_open(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(3, spring_delay_s=0.02)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=3))
    assert opened((await board.read()).doors_open) == []
    assert await board.unlock(17) is UnlockAck.SENT
    reading = await until_result(
        board.read, lambda r: 17 in opened(r.doors_open), what="door 17 open"
    )
    assert opened(reading.doors_open) == [17]
    assert sim.board(3).unlocks_of(17) == 1
    sim.board(3).close_door(17)
    assert opened((await board.read()).doors_open) == []


async def test_cu16_reads_doors_and_infrared_occupancy(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu16(2, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu16Settings(address=2))
    sim.board(2).put_parcel(4)
    await board.unlock(16)
    reading = await board.read()
    assert opened(reading.doors_open) == [16]
    assert reading.occupied is not None
    assert [i + 1 for i, o in enumerate(reading.occupied) if o] == [4]
    assert board.describe().occupancy_sensors


async def test_polarity_is_a_setting(make_sim: MakeSim, make_bus: MakeBus) -> None:
    """A board whose hook switch reads 1 for 'open' is configured, not guessed."""
    sim = await make_sim([SimCu48(0, 8, door_open_bit=1)])
    bus = await make_bus(sim.url)
    sim.board(0).open_door(2)
    right = make_board(bus, Cu48Settings(address=0, channels=8, door_open_bit=1))
    wrong = make_board(bus, Cu48Settings(address=0, channels=8, door_open_bit=0))
    assert opened((await right.read()).doors_open) == [2]
    assert opened((await wrong.read()).doors_open) == [1, 3, 4, 5, 6, 7, 8]


async def test_modbus_board_timed_pulse(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimModbusRelay(5, 8, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=5, pulse_ms=300))
    assert await board.unlock(3) is UnlockAck.ACKNOWLEDGED
    assert opened((await board.read()).doors_open) == [3]
    told = [t for t in sim.board(5).told if t.command == "unlock"]
    assert [(t.channel, t.value) for t in told] == [(3, 300)]


async def test_modbus_flash_with_fc06(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimModbusRelay(5, 4, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=5, channels=4, flash_function=6))
    await board.unlock(4)
    assert opened((await board.read()).doors_open) == [4]


async def test_modbus_software_pulse_leaves_the_relay_off(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimModbusRelay(1, 8, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=1, pulse="software", pulse_ms=100))
    assert await board.unlock(2) is UnlockAck.ACKNOWLEDGED
    assert sim.board(1).relays == [False] * 8
    coil = [(t.channel, t.value) for t in sim.board(1).told if t.command == "coil"]
    assert coil == [(2, 1), (2, 0)]
    assert opened((await board.read()).doors_open) == [2]


async def test_modbus_prepare_switches_off_a_relay_left_on(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    """A crash during a software pulse can leave a lock energised: start-up clears it."""
    sim = await make_sim([SimModbusRelay(1, 8)])
    sim.board(1).relays[6] = True
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=1))
    await board.prepare()
    assert sim.board(1).relays == [False] * 8


async def test_modbus_exception_reply_is_a_typed_error(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimModbusRelay(1, 8)])
    bus = await make_bus(sim.url)
    board = make_board(bus, ModbusRelaySettings(address=1, channels=8, input_base=100))
    with pytest.raises(BoardRejected, match=r"exception 2: .*check input_base"):
        await board.read()


async def test_tcp_gateway_carries_the_same_frames(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim(
        [SimCu48(0, spring_delay_s=0), SimModbusRelay(1, spring_delay_s=0)], tcp=("127.0.0.1", 0)
    )
    assert sim.url.startswith("tcp://127.0.0.1:")
    bus = await make_bus(sim.url)
    kerong = make_board(bus, Cu48Settings(address=0))
    relay = make_board(bus, ModbusRelaySettings(address=1))
    await kerong.unlock(48)
    await relay.unlock(8)
    assert opened((await kerong.read()).doors_open) == [48]
    assert opened((await relay.read()).doors_open) == [8]


async def test_concurrent_callers_each_get_their_own_boards_reply(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sims = [SimCu48(a, 8) for a in range(4)]
    for a, s in enumerate(sims):
        s.open_door(a + 1)
    sim = await make_sim(sims)
    bus = await make_bus(sim.url)
    boards = [make_board(bus, Cu48Settings(address=a, channels=8)) for a in range(4)]
    readings = await asyncio.gather(*(boards[i % 4].read() for i in range(60)))
    for i, reading in enumerate(readings):
        assert reading.board == f"kerong-cu48@{i % 4}"
        assert opened(reading.doors_open) == [i % 4 + 1]
    assert sim.stats.clean, sim.stats.summary()  # one request in flight, silence kept


async def test_unlocks_jump_the_queue_of_polls(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    reads = [asyncio.create_task(board.read()) for _ in range(10)]
    await asyncio.sleep(0)  # let them queue
    await board.unlock(1)
    await asyncio.gather(*reads)
    order = [t.command for t in sim.board(0).told]
    assert order.index("unlock") <= 1, order  # at most the read already on the wire went first


# --------------------------------------------------------------------------- faults


async def test_no_reply_is_a_timeout_after_all_read_attempts(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0)])
    bus = await make_bus(sim.url, read_attempts=3)
    board = make_board(bus, Cu48Settings(address=0))
    sim.board(0).faults.no_reply = True
    with pytest.raises(ReplyTimeout, match="no valid reply to status"):
        await board.read()
    assert sim.board(0).status_reads == 3
    sim.board(0).faults.clear()
    await board.read()
    assert bus.health_of(board.key).consecutive_failures == 0


async def test_corrupt_checksum_is_never_taken(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu16(0), SimModbusRelay(1)])
    bus = await make_bus(sim.url)
    cu16 = make_board(bus, Cu16Settings(address=0))
    relay = make_board(bus, ModbusRelaySettings(address=1))
    for s in sim.line.boards:
        s.faults.corrupt_checksum = True
    for board in (cu16, relay):
        with pytest.raises(ReplyTimeout):
            await board.read()
        assert bus.health_of(board.key).bad_frames >= 2


async def test_split_reply_and_garbage_between_frames(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0, 8), SimCu16(1, 8), SimModbusRelay(1, 8)])
    bus = await make_bus(sim.url)
    boards = [
        make_board(bus, Cu48Settings(address=0, channels=8)),
        make_board(bus, Cu16Settings(address=1, channels=8)),
        make_board(bus, ModbusRelaySettings(address=1, channels=8)),
    ]
    for i, s in enumerate(sim.line.boards):
        s.open_door(i + 2)
        s.faults.split_reply = True
        s.faults.garbage = bytes.fromhex("02 00 ff 01 05 55 aa 03")  # STX, ETX, a device id ...
    for i, board in enumerate(boards):
        assert opened((await board.read()).doors_open) == [i + 2]
    # trailing garbage lands in the next transaction (and is skipped there) or, after
    # the last one, on an idle line: dropped as stray bytes
    await eventually(lambda: bus.counters.stray_bytes >= 8, what="trailing garbage dropped")


async def test_jammed_lock_is_sent_but_the_door_stays_shut(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, spring_delay_s=0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=0))
    sim.board(0).faults.jammed.add(9)
    assert await board.unlock(9) is UnlockAck.SENT  # "sent" is not "opened"
    await eventually(lambda: sim.board(0).unlocks_of(9) == 1, what="the unlock to reach the board")
    for _ in range(3):
        assert opened((await board.read()).doors_open) == []
    assert sim.board(0).unlocks_of(9) == 1


async def test_forced_open_shows_without_any_command(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=0))
    sim.board(0).open_door(30)
    assert opened((await board.read()).doors_open) == [30]
    assert sim.board(0).unlocks_of(30) == 0


async def test_bouncing_sensor_reads_flicker_then_settle(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 4)])
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=0, channels=4))
    sim.board(0).faults.bouncing.add(2)
    sim.board(0).faults.bounce_reads = 4
    sim.board(0).open_door(2)
    seen = [2 in opened((await board.read()).doors_open) for _ in range(6)]
    assert seen == [False, True, False, True, True, True]


async def test_unlock_is_never_retried_blindly(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimModbusRelay(1, 8, spring_delay_s=0)])
    bus = await make_bus(sim.url, read_attempts=3)
    board = make_board(bus, ModbusRelaySettings(address=1))
    sim.board(1).faults.no_reply = True  # the board acts but its echo is lost
    with pytest.raises(UnlockUnconfirmed, match="read the door"):
        await board.unlock(6)
    assert sim.board(1).unlocks_of(6) == 1
    sim.board(1).faults.clear()
    assert opened((await board.read()).doors_open) == [6]  # the caller finds out this way


async def test_a_late_reply_is_never_taken_for_another_boards_answer(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    slow, other = SimCu48(0, 8), SimCu48(1, 8)
    slow.open_door(1)
    other.open_door(8)
    sim = await make_sim([slow, other])
    bus = await make_bus(sim.url, timeout_ms=100, read_attempts=1)
    slow_board = make_board(bus, Cu48Settings(address=0, channels=8))
    other_board = make_board(bus, Cu48Settings(address=1, channels=8))
    slow.faults.late_reply_s = 0.15  # arrives ~50 ms into the next transaction
    other.faults.late_reply_s = 0.09  # answers within its timeout
    with pytest.raises(ReplyTimeout):
        await slow_board.read()
    reading = await other_board.read()
    assert opened(reading.doors_open) == [8]
    assert bus.counters.unmatched_frames == 1


async def test_a_late_reply_after_a_timeout_is_dropped(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    bus = await make_bus(sim.url, read_attempts=1)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    sim.board(0).faults.late_reply_s = 0.1
    with pytest.raises(ReplyTimeout):
        await board.read()
    await eventually(lambda: bus.counters.stray_bytes >= 12, what="the late reply to arrive")
    sim.board(0).faults.clear()
    sim.board(0).open_door(5)
    assert opened((await board.read()).doors_open) == [5]


# --------------------------------------------------------------------------- dead boards


async def test_a_dead_board_never_stalls_the_others(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sims = [SimCu48(a, 8) for a in range(3)] + [SimModbusRelay(1, 8)]
    sim = await make_sim(sims)
    bus = await make_bus(sim.url, offline_after=2, read_attempts=2, offline_probe_s=0.3)
    boards = [make_board(bus, Cu48Settings(address=a, channels=8)) for a in range(3)]
    boards.append(make_board(bus, ModbusRelaySettings(address=1)))
    sim.board(1, "kerong-cu48").faults.dead = True
    failures: list[str] = []
    poller = BusPoller(
        boards,
        interval_s=0.01,
        on_reading=lambda r: None,
        on_failure=lambda b, e: failures.append(type(e).__name__),
    )
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        t0 = loop.time()
        task = asyncio.create_task(poller.run())
        await eventually(lambda: poller.stats.cycles >= 60, within=20, what="60 poll cycles")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        elapsed = loop.time() - t0
    cycles = poller.stats.cycles
    healthy = [b.key for b in boards if b.key != "kerong-cu48@1"]
    for key in healthy:
        assert poller.stats.readings[key] >= cycles - 1, key
    dead = bus.health_of("kerong-cu48@1")
    assert not dead.online
    # 2 requests x 2 attempts to find it dead, then one probe per probe interval of the
    # time that really passed (a loaded machine polls slower, not the bus more often)
    assert dead.requests <= 4 + int(elapsed / 0.3) + 2, (dead, elapsed)
    # every cycle reads it once: refused without the wire, or sent (a probe, or one of
    # the first attempts); never a second timeout in a cycle
    assert dead.refused_offline + dead.requests >= cycles - 1
    assert dead.refused_offline > cycles / 2
    assert failures.count("BoardOffline") == dead.refused_offline
    assert sim.stats.clean, sim.stats.summary()
    offline_logs = [e for e in logs if e["event"] == "board_offline"]
    assert len(offline_logs) == 1
    assert offline_logs[0]["log_level"] == "error"


async def test_an_offline_board_comes_back_by_itself(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    bus = await make_bus(sim.url, offline_after=1, read_attempts=1, offline_probe_s=0.05)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    sim.board(0).faults.dead = True
    with pytest.raises(ReplyTimeout):
        await board.read()
    with pytest.raises(BoardOffline, match="offline"):
        await board.read()
    sim.board(0).faults.clear()
    with capture_logs() as logs:

        async def read_or_none() -> object:
            try:
                return await board.read()
            except BoardOffline:
                return None

        await until_result(read_or_none, lambda r: r is not None, what="board back online")
    assert bus.health_of(board.key).online
    assert [e["event"] for e in logs if e["event"].startswith("board_")] == ["board_online"]


async def test_unlock_goes_to_a_board_marked_offline_once_it_answers(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    """An authorised open is never refused on stale health: the board is asked first."""
    sim = await make_sim([SimCu48(0, 8, spring_delay_s=0)])
    bus = await make_bus(sim.url, offline_after=1, read_attempts=1, offline_probe_s=60)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    sim.board(0).faults.no_reply = True
    with pytest.raises(ReplyTimeout):
        await board.read()
    assert not bus.health_of(board.key).online
    sim.board(0).faults.clear()  # it is back, but the next probe is a minute away
    await board.unlock(2)
    await eventually(lambda: sim.board(0).unlocks_of(2) == 1, what="the unlock to reach the board")
    assert [t.command for t in sim.board(0).told][-2:] == ["status", "unlock"]
    assert bus.health_of(board.key).online  # the precheck's answer brought it back


async def test_after_an_unanswered_request_an_unlock_waits_for_proof_of_life(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    """A stalled link or gateway must not hold an unlock and deliver it later."""
    sim = await make_sim([SimCu48(0, 8), SimModbusRelay(1, 8)])
    bus = await make_bus(sim.url, read_attempts=1)
    kerong_board = make_board(bus, Cu48Settings(address=0, channels=8))
    relay = make_board(bus, ModbusRelaySettings(address=1))
    for s in sim.line.boards:
        s.faults.no_reply = True
    with pytest.raises(ReplyTimeout):
        await kerong_board.read()
    for board in (kerong_board, relay):
        with pytest.raises(UnlockNotSent, match=r"not sent.*safe to retry"):
            await board.unlock(3)
    for s in sim.line.boards:
        assert s.unlocks_of(3) == 0


# --------------------------------------------------------------------------- the port


async def test_reopen_after_the_adapter_vanishes(
    make_sim: MakeSim, make_bus: MakeBus, tmp_path: Path
) -> None:
    link = str(tmp_path / "usb-FTDI_FT232R-if00-port0")
    sim = await make_sim([SimCu48(0, 8)], link=link)
    bus = await make_bus(link)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    await board.read()
    with capture_logs() as logs:
        sim.vanish()
        await eventually(lambda: not bus.is_open, what="the bus to notice the loss")
        with pytest.raises(PortUnavailable):
            await board.read()
        await sim.reappear()
        sim.board(0).open_door(4)
        reading = await until_result(
            _read_or_error(board), lambda r: r is not None, within=10, what="bus reopened"
        )
    assert reading is not None
    assert opened(reading.doors_open) == [4]
    assert bus.counters.port_losses == 1
    assert bus.counters.opens >= 2
    events = [e["event"] for e in logs]
    assert events.count("bus_port_lost") == 1  # once per outage, at error level
    assert events.count("bus_port_recovered") == 1  # once the port answers again


def _read_or_error(board: Any) -> Callable[[], Any]:
    async def probe() -> Any:
        try:
            return await board.read()
        except (PortUnavailable, ReplyTimeout):
            return None

    return probe


async def test_reconnect_to_a_tcp_gateway_that_restarts(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    sim = await make_sim([SimCu48(0, 8)], tcp=("127.0.0.1", 0))
    bus = await make_bus(sim.url)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    await board.read()
    sim.vanish()
    await eventually(lambda: not bus.is_open, what="the bus to notice the loss")
    await sim.reappear()
    assert await until_result(_read_or_error(board), lambda r: r is not None, within=10) is not None


async def test_a_second_owner_of_the_port_is_refused(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    first = await make_bus(sim.url)
    second = Bus(BusSettings(port=sim.url, reopen_min_s=0.01, reopen_max_s=0.05))
    await second.start()
    try:
        board2 = make_board(second, Cu48Settings(address=0, channels=8))

        async def attempt() -> str:
            try:
                await board2.read()
            except PortUnavailable as exc:
                return str(exc)
            return "opened"

        message = await until_result(attempt, lambda m: m != "opened" and "another process" in m)
        assert "only lockerd may own a bus" in message
    finally:
        await second.close()
    await make_board(first, Cu48Settings(address=0, channels=8)).read()


async def test_missing_port_fails_fast_with_a_hint(make_bus: MakeBus, tmp_path: Path) -> None:
    bus = Bus(BusSettings(port=str(tmp_path / "nope"), reopen_min_s=0.01, reopen_max_s=0.05))
    await bus.start()
    try:
        await eventually(lambda: bool(bus.snapshot()["port_error"]), what="open to fail")
        with pytest.raises(PortUnavailable, match="cannot open"):
            await make_board(bus, Cu48Settings(address=0)).read()
    finally:
        await bus.close()


async def test_close_fails_waiting_requests(make_sim: MakeSim) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    sim.board(0).faults.no_reply = True
    bus = Bus(BusSettings(port=sim.url, timeout_ms=1000))
    await bus.start()
    assert await bus.wait_open(5)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    pending = [asyncio.create_task(board.read()) for _ in range(3)]
    await eventually(lambda: sim.board(0).status_reads >= 1, what="first read on the wire")
    await bus.close()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, BusClosed) for r in results), results
    with pytest.raises(BusClosed):
        await board.read()


async def test_a_board_on_a_port_that_never_opened_is_not_online_and_says_why(
    make_sim: MakeSim, tmp_path: Path
) -> None:
    """Not ONLINE with zero failures: offline, with the OS's reason; once the port is
    there the board answers, is online, and its old error is gone."""
    link = str(tmp_path / "usb-FTDI_FT232R-if00-port0")
    bus = Bus(BusSettings(port=link, timeout_ms=100, reopen_min_s=0.01, reopen_max_s=0.05))
    await bus.start()
    try:
        board = make_board(bus, Cu48Settings(address=0, channels=8))
        await eventually(lambda: bool(bus.snapshot()["port_error"]), what="open to fail")
        with pytest.raises(PortUnavailable):
            await board.read()
        (health,) = bus.snapshot()["boards"]
        assert health["online"] is False
        assert health["last_error"].startswith(f"port {link} not open: ")
        assert "No such file or directory" in health["last_error"]  # the OS's words
        assert not board.describe().online
        await make_sim([SimCu48(0, 8)], link=link)  # the adapter is plugged in
        reading = await until_result(
            _read_or_error(board), lambda r: r is not None, within=10, what="bus opened"
        )
        assert reading is not None
        (health,) = bus.snapshot()["boards"]
        assert health["online"] is True
        assert health["last_error"] == ""
    finally:
        await bus.close()


async def test_a_lost_port_takes_its_boards_offline_until_they_answer_again(
    make_sim: MakeSim, make_bus: MakeBus, tmp_path: Path
) -> None:
    link = str(tmp_path / "usb-FTDI_FT232R-if00-port0")
    sim = await make_sim([SimCu48(0, 8), SimCu48(1, 8)], link=link)
    bus = await make_bus(link)
    boards = [make_board(bus, Cu48Settings(address=a, channels=8)) for a in (0, 1)]
    for board in boards:
        await board.read()
    sim.vanish()
    await eventually(lambda: not bus.is_open, what="the bus to notice the loss")
    snapshot = bus.snapshot()["boards"]
    assert [h["online"] for h in snapshot] == [False, False]  # also the one not asked since
    assert all(h["last_error"].startswith(f"port {link} not open: lost") for h in snapshot)
    await sim.reappear()
    for board in boards:
        await until_result(_read_or_error(board), lambda r: r is not None, within=10)
    assert [(h["online"], h["last_error"]) for h in bus.snapshot()["boards"]] == [
        (True, ""),
        (True, ""),
    ]


async def test_an_answer_clears_the_last_error(make_sim: MakeSim, make_bus: MakeBus) -> None:
    sim = await make_sim([SimCu48(0, 8)])
    bus = await make_bus(sim.url, read_attempts=1)
    board = make_board(bus, Cu48Settings(address=0, channels=8))
    sim.board(0).faults.no_reply = True
    with pytest.raises(ReplyTimeout):
        await board.read()
    assert "no valid reply" in bus.health_of(board.key).last_error
    sim.board(0).faults.clear()
    await board.read()
    assert bus.health_of(board.key).last_error == ""
