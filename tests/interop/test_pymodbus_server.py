"""Our Modbus driver (Bus + ModbusRelay) against pymodbus's stock server, which nobody here wrote.

(a) ModbusTcpServer with the RTU framer: RTU frames over TCP, as a serial-to-Ethernet
    gateway carries them (our bus port ``tcp://host:port``).
(b) ModbusSerialServer on one end of a null-modem pair of ptys made by socat; our bus
    opens the other end as it would open /dev/ttyUSB0.

The server is pymodbus 3.16's ``SimDevice`` with four separate blocks (coils, discrete
inputs, holding and input registers), bit-addressed: coil N is address N, as on a
relay board. The stock server has no flash-on: it refuses (or misreads) the
board-timed pulse, which is what a board without flash-on does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from lockerd.drivers.boards import BoardRejected, ModbusRelay, UnlockAck, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.settings import ModbusRelaySettings
from tests.support.waiting import until_result

pytestmark = pytest.mark.interop

MakeBus = Callable[..., Any]

UNIT = 1
FC_READ_COILS = 1
FC_READ_INPUTS = 2
FC_WRITE_COIL = 5
FC_HOLDING = 3  # the function code pymodbus's datastore files holding registers under
# pymodbus answers in a millisecond or two, but it is slower than our simulator
SERVER_TIMEOUT_MS = 200.0


def bits(count: int, on: Collection[int] = ()) -> list[bool]:
    """``count`` bits, those at the 0-based indexes in ``on`` set."""
    return [i in on for i in range(count)]


def opened(doors: tuple[bool, ...]) -> list[int]:
    return [i + 1 for i, is_open in enumerate(doors) if is_open]


def device(
    *,
    coils: list[bool],
    inputs: list[bool],
    holding: tuple[int, list[int]] = (0, [0]),
    unit: int = UNIT,
) -> SimDevice:
    """A stock pymodbus device: coils and discrete inputs from address 0."""
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=inputs, datatype=DataType.BITS)],
            [SimData(holding[0], values=holding[1], datatype=DataType.REGISTERS)],
            [SimData(0, values=[0], datatype=DataType.REGISTERS)],
        ),
    )


@dataclass
class Trace:
    """PDUs the server received and sent (pymodbus's ``trace_pdu`` hook), with loop times."""

    received: list[tuple[float, ModbusPDU]] = field(default_factory=list)
    sent: list[tuple[float, ModbusPDU]] = field(default_factory=list)

    def __call__(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        now = asyncio.get_running_loop().time()
        (self.sent if sending else self.received).append((now, pdu))
        return pdu

    def coil_writes(self) -> list[tuple[float, int, bool]]:
        """Single-coil writes (FC05) as the server decoded them: (time, address, on)."""
        return [
            (at, pdu.address, bool(pdu.bits[0]))
            for at, pdu in self.received
            if pdu.function_code == FC_WRITE_COIL
        ]

    def exceptions(self) -> list[tuple[int, int]]:
        """Exception replies the server sent: (function, exception code)."""
        return [
            (pdu.function_code & 0x7F, int(pdu.exception_code))
            for _, pdu in self.sent
            if isinstance(pdu, ExceptionResponse)
        ]


@dataclass
class Served:
    server: ModbusTcpServer | ModbusSerialServer
    url: str
    trace: Trace

    async def coils(self, count: int, address: int = 0) -> list[bool]:
        values = await self.server.async_getValues(UNIT, FC_READ_COILS, address, count)
        return [bool(v) for v in values]

    async def set_inputs(self, address: int, values: list[bool]) -> None:
        await self.server.async_setValues(UNIT, FC_READ_INPUTS, address, values)


async def _stop(server: ModbusTcpServer | ModbusSerialServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
def tcp_server(stack: AsyncExitStack) -> Callable[..., Any]:
    """``await tcp_server(device)``: a pymodbus RTU-over-TCP server on a free local port."""

    async def start(dev: SimDevice) -> Served:
        trace = Trace()
        server = ModbusTcpServer(
            dev, framer=FramerType.RTU, address=("127.0.0.1", 0), trace_pdu=trace
        )
        await server.serve_forever(background=True)
        stack.push_async_callback(_stop, server)
        listener: Any = server.transport  # an asyncio.Server once listening
        port = int(listener.sockets[0].getsockname()[1])
        return Served(server, f"tcp://127.0.0.1:{port}", trace)

    return start


async def relay(make_bus: MakeBus, served: Served, **settings: Any) -> tuple[Bus, ModbusRelay]:
    bus: Bus = await make_bus(served.url, timeout_ms=SERVER_TIMEOUT_MS)
    board = make_board(bus, ModbusRelaySettings(address=UNIT, **settings))
    assert isinstance(board, ModbusRelay)
    return bus, board


# ===================================================================== (a) RTU over TCP


@pytest.mark.parametrize(("door_open_bit", "raw_on"), [(1, {1, 4}), (0, {0, 2, 3, 5, 6, 7})])
async def test_read_maps_discrete_inputs_with_polarity(
    tcp_server: Callable[..., Any], make_bus: MakeBus, door_open_bit: int, raw_on: set[int]
) -> None:
    """Raw inputs are read with FC02; doors 2 and 5 are open under either polarity."""
    served: Served = await tcp_server(device(coils=bits(8), inputs=bits(8, raw_on)))
    _, board = await relay(make_bus, served, door_open_bit=door_open_bit)

    reading = await board.read()

    assert reading.board == "modbus-relay@1"
    assert opened(reading.doors_open) == [2, 5]
    assert reading.occupied is None

    # a door changes in the server's datastore; the next read sees it
    await served.set_inputs(7, [door_open_bit == 1])
    assert opened((await board.read()).doors_open) == [2, 5, 8]


async def test_read_with_fewer_channels_and_offset_bases(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    """input_base/coil_base point into a bigger map; pymodbus pads replies to whole bytes."""
    served: Served = await tcp_server(
        device(coils=bits(32, {9, 12}), inputs=bits(32, {16, 18, 19, 20}))
    )
    _, board = await relay(make_bus, served, channels=5, input_base=16, coil_base=8)

    assert opened((await board.read()).doors_open) == [1, 3, 4, 5]
    assert await board.read_relays() == (False, True, False, False, True)


async def test_read_relays_reads_coils(tcp_server: Callable[..., Any], make_bus: MakeBus) -> None:
    served: Served = await tcp_server(device(coils=bits(8, {0, 3, 7}), inputs=bits(8)))
    _, board = await relay(make_bus, served)

    assert await board.read_relays() == (True, False, False, True, False, False, False, True)


async def test_prepare_switches_every_relay_off(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    served: Served = await tcp_server(device(coils=bits(8, {1, 2, 6}), inputs=bits(8)))
    _, board = await relay(make_bus, served)
    assert await served.coils(8) == bits(8, {1, 2, 6})

    await board.prepare()

    fcs = [pdu.function_code for _, pdu in served.trace.received]
    assert fcs == [0x0F, FC_READ_COILS], "prepare = one FC0F all-off, then a read-back"
    assert await served.coils(8) == [False] * 8  # server side
    assert await board.read_relays() == (False,) * 8  # and as our driver reads it back


async def test_read_beyond_the_server_map_is_rejected(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    """24 channels configured, 16 inputs on the device: exception 2, a helpful error."""
    served: Served = await tcp_server(device(coils=bits(16), inputs=bits(16)))
    _, board = await relay(make_bus, served, channels=24)

    with pytest.raises(
        BoardRejected, match=r"exception 2: address out of the board's range"
    ) as exc_info:
        await board.read()

    assert "read door inputs" in str(exc_info.value)
    assert served.trace.exceptions() == [(FC_READ_INPUTS, 2)]


async def test_software_pulse_switches_the_coil_on_then_off(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    served: Served = await tcp_server(device(coils=bits(8), inputs=bits(8)))
    _, board = await relay(make_bus, served, pulse="software", pulse_ms=100)

    unlock = asyncio.create_task(board.unlock(3))
    # while the pulse runs, the server's coil 3 (address 2) is on
    await until_result(
        lambda: served.coils(1, address=2), lambda v: v == [True], within=1.0, what="coil 3 on"
    )
    assert await unlock is UnlockAck.ACKNOWLEDGED

    assert await served.coils(8) == [False] * 8
    writes = served.trace.coil_writes()
    assert [(address, on) for _, address, on in writes] == [(2, True), (2, False)]
    (on_at, _, _), (off_at, _, _) = writes
    assert off_at - on_at >= 0.09, f"pulse lasted {(off_at - on_at) * 1000:.0f} ms"
    assert served.trace.exceptions() == []


async def test_board_timed_pulse_with_fc06_writes_the_flash_register(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    """FC06 flash-on to a stock holding register: the server stores and echoes it."""
    served: Served = await tcp_server(
        device(coils=bits(8), inputs=bits(8), holding=(0x0200, [0] * 8))
    )
    _, board = await relay(make_bus, served, pulse="board", pulse_ms=500, flash_function=6)

    assert await board.unlock(4) is UnlockAck.ACKNOWLEDGED

    assert await served.server.async_getValues(UNIT, FC_HOLDING, 0x0203, 1) == [5]


@pytest.mark.parametrize("flash_function", [5, 6])
async def test_board_timed_pulse_refused_by_stock_server_raises_board_rejected(
    tcp_server: Callable[..., Any], make_bus: MakeBus, flash_function: int
) -> None:
    """No flash-on at 0x0200+ch on the stock server: exception 2, and we must say so."""
    served: Served = await tcp_server(device(coils=bits(8), inputs=bits(8)))
    _, board = await relay(
        make_bus, served, pulse="board", pulse_ms=500, flash_function=flash_function
    )

    try:
        with pytest.raises(BoardRejected, match=r"unlock 1 refused .*exception 2"):
            await board.unlock(1)
    finally:
        # whatever the driver made of it, the server did refuse the request
        assert served.trace.exceptions()[:1] == [(flash_function, 2)]
        assert await served.coils(8) == [False] * 8


async def test_software_pulse_refused_by_server_raises_board_rejected(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    """coil_base points past the device's coils: the coil-on write gets exception 2."""
    served: Served = await tcp_server(device(coils=bits(8), inputs=bits(8)))
    _, board = await relay(make_bus, served, pulse="software", pulse_ms=100, coil_base=0x100)

    try:
        with pytest.raises(BoardRejected, match=r"exception 2"):
            await board.unlock(1)
    finally:
        assert (FC_WRITE_COIL, 2) in served.trace.exceptions()


async def test_board_timed_pulse_echo_with_another_value_is_not_acknowledged(
    tcp_server: Callable[..., Any], make_bus: MakeBus
) -> None:
    # a stock device whose coil map reaches 0x0200+: FC05 value 0005 is taken as "ON"
    served: Served = await tcp_server(device(coils=bits(0x0210), inputs=bits(8)))
    _, board = await relay(make_bus, served, pulse="board", pulse_ms=500)

    try:
        with pytest.raises(BoardRejected, match="no board-timed pulse"):
            await board.unlock(1)
        # and the coil the board latched on is switched off again
        assert await served.server.async_getValues(UNIT, FC_READ_COILS, 0x0200, 1) == [False]
    finally:
        # what the server did: coil 0x0200 switched on, echo 01 05 02 00 FF 00
        (_, echo), *_ = served.trace.sent
        assert (echo.function_code, echo.address, list(echo.bits)) == (
            FC_WRITE_COIL,
            0x0200,
            [True],
        )


# ===================================================================== (b) serial, pty pair


@dataclass(frozen=True, slots=True)
class PtyPair:
    a: str
    b: str


async def _socat_pair(stack: AsyncExitStack, tmp_path: Path) -> PtyPair:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (apt-get install socat): it makes the pty pair")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = await asyncio.create_subprocess_exec(
        socat,
        "-d",
        "-d",
        f"pty,raw,echo=0,link={a}",
        f"pty,raw,echo=0,link={b}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )

    async def stop() -> None:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await proc.communicate()
                return
        proc.kill()
        await proc.wait()

    stack.push_async_callback(stop)
    # socat says when both ptys exist and it is copying between them
    assert proc.stderr is not None
    log: list[str] = []
    async with asyncio.timeout(5.0):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, f"socat exited before the pty pair was up: {''.join(log)}"
            log.append(line)
            if "starting data transfer loop" in line:
                break
    return PtyPair(a, b)


async def test_serial_server_on_a_pty_pair_reads_inputs_and_coils(
    stack: AsyncExitStack, tmp_path: Path, make_bus: MakeBus
) -> None:
    pair = await _socat_pair(stack, tmp_path)
    trace = Trace()
    server = ModbusSerialServer(
        device(coils=bits(8, {2, 5}), inputs=bits(8, {0, 6})),
        framer=FramerType.RTU,
        port=pair.a,
        baudrate=19200,
        trace_pdu=trace,
    )
    await server.serve_forever(background=True)
    stack.push_async_callback(_stop, server)
    served = Served(server, pair.b, trace)
    _, board = await relay(make_bus, served)

    assert opened((await board.read()).doors_open) == [1, 7]
    assert await board.read_relays() == (False, False, True, False, False, True, False, False)

    await served.set_inputs(1, [True])
    assert opened((await board.read()).doors_open) == [1, 2, 7]
    await board.prepare()
    assert await served.coils(8) == [False] * 8
    assert trace.exceptions() == []
