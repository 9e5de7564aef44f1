"""The simulated line: line-speed emulation, several protocols on one wire, faults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lockerd.drivers import kerong, modbus
from lockerd.drivers.boards import make_board
from lockerd.drivers.framing import frame_silence, wire_time
from lockerd.drivers.settings import Cu16Settings, Cu48Settings, ModbusRelaySettings
from lockerd.simulator.boards import SimCu16, SimCu48, SimModbusRelay
from lockerd.simulator.cli import apply_command, build_boards, build_parser
from lockerd.simulator.line import SimLine, Simulator, parse_board

MakeSim = Callable[..., Any]
MakeBus = Callable[..., Any]


async def test_emulated_line_speed_delays_replies_by_their_wire_time(
    make_sim: MakeSim, make_bus: MakeBus
) -> None:
    """Lower bound only: a reply can never come before its bytes could cross the wire."""
    sim = await make_sim([SimCu48(0)], baudrate=9600, emulate_line_speed=True)
    bus = await make_bus(sim.url, baudrate=9600, timeout_ms=200)
    board = make_board(bus, Cu48Settings(address=0))
    await board.read()
    timing = bus.last_timing
    assert timing is not None
    assert timing.matched - timing.written >= wire_time(6 + 12, 9600)


async def test_mixed_protocols_share_one_line(make_sim: MakeSim, make_bus: MakeBus) -> None:
    """Kerong frames are garbage to a Modbus board and the other way round, as on RS-485."""
    sim = await make_sim([SimCu48(1, 8), SimModbusRelay(1, 8)])
    bus = await make_bus(sim.url)
    kerong_board = make_board(bus, Cu48Settings(address=1, channels=8))
    relay = make_board(bus, ModbusRelaySettings(address=1))
    sim.board(1, "kerong-cu48").open_door(3)
    sim.board(1, "modbus-relay").open_door(6)
    for _ in range(20):
        assert (await kerong_board.read()).doors_open[2]
        assert (await relay.read()).doors_open[5]


async def test_a_partial_frame_is_dropped_after_a_silence() -> None:
    sent: list[bytes] = []
    line = SimLine([SimModbusRelay(1, 8)], baudrate=19200)
    line.receive(bytes.fromhex("02 10 30 03 45"), sent.append)  # could start an FC10 frame
    line._last_rx -= 1.0  # a second of silence on the line
    line.receive(modbus.read_discrete_inputs(1, 0, 8), sent.append)
    assert sent == [modbus.bits_reply(1, modbus.FC_READ_DISCRETE_INPUTS, [False] * 8)]


async def test_broadcast_unlock_reaches_every_cu48_and_gets_no_reply() -> None:
    sent: list[bytes] = []
    boards = [SimCu48(0, 4, spring_delay_s=0), SimCu48(1, 4, spring_delay_s=0)]
    line = SimLine(boards)
    line.receive(
        kerong.Cu48Request(kerong.CU48_BROADCAST, 0x01, kerong.CU48_CMD_UNLOCK).encode(),
        sent.append,
    )
    assert sent == []
    assert [b.doors_open for b in boards] == [[False, True, False, False]] * 2


async def test_malformed_fc0f_gets_exception_3() -> None:
    sent: list[bytes] = []
    line = SimLine([SimModbusRelay(1, 16)])
    body = bytes.fromhex("01 0f 00 00 00 10 01 ff")  # 16 coils but one data byte
    line.receive(body + modbus.crc(body), sent.append)
    assert sent == [modbus.exception_reply(1, modbus.FC_WRITE_COILS, modbus.EX_ILLEGAL_VALUE)]


def test_two_boards_of_one_protocol_at_one_address_are_refused() -> None:
    with pytest.raises(ValueError, match="two kerong-cu48 boards at address 2"):
        SimLine([SimCu48(2), SimCu48(2)])


@pytest.mark.parametrize("spec", ["kerong-cu48", "kerong-cu48:x", "relay:1", "kerong-cu16:1:99"])
def test_bad_board_specs_say_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"KIND:ADDRESS|numbers|channels"):
        parse_board(spec)


# ------------------------------------------------------------------ half-duplex discipline
STATUS_0 = kerong.cu48_read_status(0).encode()
REPLY_0 = kerong.Cu48Status(0, 0, b"\xff" * 6).encode()  # all 48 shut (bit 1)


class Wire:
    """A fake ``send``: what the line wrote back, and an event per write."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.wrote = asyncio.Event()

    def __call__(self, data: bytes) -> None:
        self.sent.append(data)
        self.wrote.set()

    async def written(self, count: int) -> None:
        """Until ``count`` writes in all have been made."""
        while len(self.sent) < count:
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), 1.0)


async def test_a_request_while_an_emulated_reply_is_pending_is_a_collision() -> None:
    wire = Wire()
    line = SimLine([SimCu48(0)], baudrate=9600, emulate_line_speed=True)
    line.receive(STATUS_0, wire)  # reply due 18.75 ms from now (request + reply wire time)
    line.receive(STATUS_0, wire)  # the master talks over it
    assert (line.stats.collisions, line.stats.gap_violations) == (1, 0)
    (v,) = line.stats.violations
    assert v.kind == "collision"
    assert v.gap < -0.015  # it started well before the pending reply's end
    assert "collision: Cu48Request" in str(line.stats)
    await wire.written(2)
    assert wire.sent == [REPLY_0, REPLY_0]  # only counted: both still answered
    assert (line.stats.requests, line.stats.replies, line.stats.dropped) == (2, 2, 0)


@pytest.mark.parametrize("strict", [False, True])
async def test_a_request_right_after_a_reply_without_silence_is_a_gap_violation(
    strict: bool,
) -> None:
    wire = Wire()
    line = SimLine([SimCu48(0)], baudrate=9600, strict=strict)
    line.receive(STATUS_0, wire)  # answered at once: off the line now
    line.receive(STATUS_0, wire)  # microseconds later, not 3.6 ms
    assert (line.stats.collisions, line.stats.gap_violations) == (0, 1)
    (v,) = line.stats.violations
    assert v.kind == "gap"
    assert 0 <= v.gap < frame_silence(9600)
    assert wire.sent == [REPLY_0, REPLY_0]  # a late gap is not a collision: even strict answers


async def test_requests_a_silence_after_each_reply_are_clean() -> None:
    """Exactly the driver's rule: wait frame_silence after the last byte received."""
    for emulate in (False, True):
        wire = Wire()
        line = SimLine([SimCu48(0), SimCu48(1)], baudrate=9600, emulate_line_speed=emulate)
        for i in range(6):
            line.receive(kerong.cu48_read_status(i % 2).encode(), wire)
            await wire.written(i + 1)  # as the master: the reply is in
            await asyncio.sleep(frame_silence(9600))
        line.receive(kerong.cu48_unlock(0, 1).encode(), wire)  # no reply, no wait needed
        line.receive(STATUS_0, wire)
        await wire.written(7)
        assert line.stats.clean, line.stats
        assert (line.stats.requests, line.stats.replies) == (8, 7)


async def test_a_gap_of_exactly_the_silence_is_enough() -> None:
    wire = Wire()
    line = SimLine([SimCu48(0)], baudrate=19200)
    line.receive(STATUS_0, wire)
    line._reply_end -= frame_silence(19200)  # the reply ended one silence ago
    line.receive(STATUS_0, wire)
    assert line.stats.clean, line.stats


async def test_a_request_in_chunks_is_judged_once_by_its_first_byte() -> None:
    wire = Wire()
    line = SimLine([SimCu48(0)], baudrate=9600)
    line.receive(STATUS_0, wire)
    line.receive(STATUS_0[:2], wire)  # starts too soon after the reply...
    line._reply_end -= 1.0  # ...however long ago the reply seems when it completes
    line.receive(STATUS_0[2:4], wire)
    line.receive(STATUS_0[4:], wire)
    assert (line.stats.requests, line.stats.gap_violations) == (2, 1)

    line._reply_end = line._last_rx = -1.0  # a quiet line
    line.receive(STATUS_0[:3], wire)  # starts in silence...
    line._reply_end = asyncio.get_running_loop().time()  # (as if a reply had just ended)
    line.receive(STATUS_0[3:], wire)  # ...so its tail does not matter
    assert (line.stats.requests, line.stats.gap_violations) == (3, 1)
    assert wire.sent == [REPLY_0] * 3


async def test_strict_line_drops_a_request_that_collided() -> None:
    wire = Wire()
    board = SimCu48(0, spring_delay_s=0)
    line = SimLine([board], baudrate=9600, emulate_line_speed=True, strict=True)
    line.receive(STATUS_0, wire)
    line.receive(kerong.cu48_unlock(0, 1).encode(), wire)  # garbled by the pending reply
    line.receive(STATUS_0, wire)
    await wire.written(1)
    await asyncio.sleep(0.05)
    assert wire.sent == [REPLY_0]  # the second status read was garbled too
    assert board.unlocks_of(1) == 0
    assert not board.doors_open[0]
    assert (line.stats.collisions, line.stats.dropped, line.stats.replies) == (2, 2, 1)
    line.stats.reset()
    assert line.stats.summary() == ("requests=0 replies=0 collisions=0 gap_violations=0 dropped=0")


async def test_a_late_reply_is_pending_until_written() -> None:
    """Without line-speed emulation a reply is pending only while a fault delays it."""
    wire = Wire()
    board = SimCu48(0)
    board.faults.late_reply_s = 0.02
    line = SimLine([board], baudrate=19200)
    line.receive(STATUS_0, wire)
    line.receive(STATUS_0, wire)  # the master gave up too early: a retry over the reply
    assert line.stats.collisions == 1
    await wire.written(2)
    await asyncio.sleep(frame_silence(19200))
    board.faults.clear()
    line.receive(STATUS_0, wire)
    assert (line.stats.collisions, line.stats.gap_violations) == (1, 0), line.stats


async def test_trailing_noise_is_not_part_of_the_reply() -> None:
    """A master cannot wait for noise: the reply ends with its last real byte."""
    wire = Wire()
    board = SimCu48(0)
    board.faults.split_reply = True
    board.faults.split_pause_s = 0.01
    board.faults.garbage = b"\x55\xaa"
    line = SimLine([board], baudrate=19200)
    line.receive(STATUS_0, wire)
    await wire.written(3)  # noise, then the reply in two halves; more noise 10 ms on
    assert b"".join(wire.sent[1:]) == REPLY_0
    await asyncio.sleep(frame_silence(19200))
    board.faults.clear()
    line.receive(STATUS_0, wire)
    assert line.stats.clean, line.stats


@pytest.mark.parametrize("emulate", [False, True])
async def test_the_bus_driver_keeps_the_line_clean(
    make_sim: MakeSim, make_bus: MakeBus, emulate: bool
) -> None:
    """No false positives: the real driver (gap_ms well under the silence) never trips it."""
    sim = await make_sim(
        [SimCu48(0, 8, spring_delay_s=0), SimCu16(1, 8), SimModbusRelay(2, 8)],
        baudrate=9600,
        emulate_line_speed=emulate,
    )
    bus = await make_bus(sim.url, baudrate=9600, gap_ms=0, timeout_ms=200)
    boards = [
        make_board(bus, Cu48Settings(address=0, channels=8)),
        make_board(bus, Cu16Settings(address=1, channels=8)),
        make_board(bus, ModbusRelaySettings(address=2)),
    ]
    for i in range(8):
        for board in boards:
            await board.read()
        await boards[i % 3].unlock(1 + i % 8)
    for board in boards:  # the last unlock is on the line, read back after it
        await board.read()
    stats: Any = sim.stats
    assert stats.clean, stats
    assert stats.requests >= 35
    assert stats.replies >= 29


async def test_cu16_answers_its_unlock_with_a_status_frame_when_told_to() -> None:
    wire = Wire()
    quiet, chatty = SimCu16(1, spring_delay_s=0), SimCu16(2, spring_delay_s=0, answers_unlock=True)
    chatty.put_parcel(5)
    line = SimLine([quiet, chatty])
    line.receive(kerong.cu16_unlock(1, 3).encode(), wire)
    assert wire.sent == []  # the default: no reply
    line._last_rx -= 1.0
    line.receive(kerong.cu16_unlock(2, 3).encode(), wire)
    (frame,) = wire.sent
    assert len(frame) == kerong.CU16_STATUS_LEN
    assert frame[2] == kerong.CU16_REPLY_STATUS
    status = kerong.decode_cu16_status(frame)
    assert status.board == 2
    # door 3 popped open (CU16: bit 0 = open), the others closed; a parcel in 5
    assert [i + 1 for i, b in enumerate(status.lock_bits()) if not b] == [3]
    assert [i + 1 for i, b in enumerate(status.infrared_bits()) if b] == [5]
    assert chatty.unlocks_of(3) == 1
    assert quiet.unlocks_of(3) == 1


async def test_cli_options_for_cu16_unlock_replies_and_line_stats() -> None:
    args = build_parser().parse_args(
        ["kerong-cu16:1", "kerong-cu48:0", "--cu16-answers-unlock", "--strict"]
    )
    boards = build_boards(args)
    assert isinstance(boards[0], SimCu16)
    assert boards[0].answers_unlock
    assert args.strict
    sim = Simulator(boards, strict=args.strict)
    assert sim.line.strict
    assert await apply_command(sim, "stats") == (
        "requests=0 replies=0 collisions=0 gap_violations=0 dropped=0"
    )
