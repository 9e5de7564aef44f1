"""The simulated line: line-speed emulation, several protocols on one wire, faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from drivers import kerong, modbus
from drivers.boards import make_board
from drivers.framing import wire_time
from drivers.settings import Cu48Settings, ModbusRelaySettings
from simulator.boards import SimCu48, SimModbusRelay
from simulator.line import SimLine, parse_board

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
