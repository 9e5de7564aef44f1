"""A third-party Modbus master (mbpoll, built on libmodbus) against our simulated relay board.

The simulator serves the board on a real pseudo-terminal in this process; mbpoll runs
as a subprocess on the same event loop (never a blocking ``subprocess.run``: the
simulator must keep answering while mbpoll waits). This checks that what
``lockerd.simulator.boards.SimModbusRelay`` puts on the wire is Modbus RTU as libmodbus
understands it: framing, CRC, bit order, echoes and exception replies.

mbpoll numbers references from 1 unless ``-0`` is given; ``-r 3`` is coil address 2.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from lockerd.simulator.boards import SimModbusRelay
from lockerd.simulator.line import Simulator
from tests.support.waiting import eventually

pytestmark = pytest.mark.interop

MakeSim = Callable[..., Any]

MBPOLL_TIMEOUT_S = 0.5  # mbpoll's own reply timeout (-o); the simulator answers in ~1 ms
RUN_LIMIT_S = 10.0  # the whole mbpoll run, a safety net only

_VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)\s*$", re.MULTILINE)
_POLLING = re.compile(r"^-- Polling slave (\d+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Mbpoll:
    """One finished mbpoll run."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def values(self) -> dict[int, int]:
        """``{reference: value}`` as mbpoll printed them (one slave polled)."""
        return {int(ref): int(value) for ref, value in _VALUE_LINE.findall(self.stdout)}

    def values_by_slave(self) -> dict[int, dict[int, int]]:
        """``{slave: {reference: value}}`` for a poll of several slaves (``-a 1,3``)."""
        out: dict[int, dict[int, int]] = {}
        marks = list(_POLLING.finditer(self.stdout))
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(self.stdout)
            section = self.stdout[mark.end() : end]
            out[int(mark.group(1))] = {
                int(ref): int(value) for ref, value in _VALUE_LINE.findall(section)
            }
        return out

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


@pytest.fixture
def mbpoll() -> str:
    path = shutil.which("mbpoll")
    if path is None:
        pytest.skip(
            "mbpoll is not installed (Debian/Ubuntu: apt-get install mbpoll; "
            "./dev test installs it): the libmodbus interop tests need it"
        )
    return path


def rtu_args(
    mbpoll: str, slave: int | str = 1, *, timeout_s: float = MBPOLL_TIMEOUT_S
) -> list[str]:
    """mbpoll options for one poll of an RTU slave at 19200 8N1 (the simulator's speed)."""
    return [
        mbpoll,
        "-m", "rtu",
        "-a", str(slave),
        "-b", "19200",
        "-P", "none",
        "-1",
        "-o", f"{timeout_s:g}",
    ]  # fmt: skip


async def run_mbpoll(argv: list[str]) -> Mbpoll:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_LIMIT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"mbpoll did not finish within {RUN_LIMIT_S} s: {argv}") from None
    assert proc.returncode is not None
    return Mbpoll(tuple(argv), proc.returncode, out.decode(), err.decode())


async def relay_board(make_sim: MakeSim, **kw: Any) -> tuple[Simulator, SimModbusRelay]:
    sim: Simulator = await make_sim([SimModbusRelay(1, 8, spring_delay_s=0, **kw)])
    board = sim.board(1)
    assert isinstance(board, SimModbusRelay)
    return sim, board


def as_levels(bits: list[bool]) -> dict[int, int]:
    """Bits as mbpoll prints them: 1-based reference -> 0/1."""
    return {i + 1: int(bit) for i, bit in enumerate(bits)}


# --------------------------------------------------------------------------- reads


async def test_reads_door_inputs_fc02(mbpoll: str, make_sim: MakeSim) -> None:
    sim, board = await relay_board(make_sim)
    board.open_door(2)
    board.open_door(5)

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "1", "-r", "1", "-c", "8", sim.url])

    assert res.returncode == 0, res
    # door_open_bit=1 (the default): an open door reads 1
    assert res.values() == {1: 0, 2: 1, 3: 0, 4: 0, 5: 1, 6: 0, 7: 0, 8: 0}, res
    assert board.status_reads == 1


async def test_reads_door_inputs_with_inverted_polarity(mbpoll: str, make_sim: MakeSim) -> None:
    """door_open_bit=0 (normally-closed switch): closed doors read 1, the open one 0."""
    sim, board = await relay_board(make_sim, door_open_bit=0)
    board.open_door(3)

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "1", "-r", "1", "-c", "8", sim.url])

    assert res.returncode == 0, res
    assert res.values() == {1: 1, 2: 1, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}, res


async def test_polls_two_boards_on_one_line(mbpoll: str, make_sim: MakeSim) -> None:
    """Every board hears every frame; only the addressed one answers."""
    sim: Simulator = await make_sim(
        [
            SimModbusRelay(1, 8, spring_delay_s=0),
            SimModbusRelay(3, 4, spring_delay_s=0, door_open_bit=0),
        ]
    )
    sim.board(1).open_door(4)
    sim.board(3).open_door(1)

    res = await run_mbpoll([*rtu_args(mbpoll, "1,3"), "-t", "1", "-c", "4", sim.url])

    assert res.returncode == 0, res
    assert res.values_by_slave() == {
        1: {1: 0, 2: 0, 3: 0, 4: 1},
        3: {1: 0, 2: 1, 3: 1, 4: 1},
    }, res


async def test_reads_coils_fc01(mbpoll: str, make_sim: MakeSim) -> None:
    sim, board = await relay_board(make_sim)
    board.relays[2] = True  # relay 3 energised (coil address 2)
    board.relays[7] = True

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "1", "-c", "8", sim.url])
    assert res.returncode == 0, res
    assert res.values() == as_levels(board.relays), res
    assert res.values() == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 1}

    # a read that starts mid-byte, with 0-based (PDU) references: coils 2..4
    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-0", "-r", "2", "-c", "3", sim.url])
    assert res.returncode == 0, res
    assert res.values() == {2: 1, 3: 0, 4: 0}, res


# --------------------------------------------------------------------------- writes


async def test_write_single_coil_fc05_releases_the_lock(mbpoll: str, make_sim: MakeSim) -> None:
    sim, board = await relay_board(make_sim)

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "3", sim.url, "1"])

    assert res.returncode == 0, res
    assert "Written 1 references" in res.stdout, res
    assert board.relays == [False, False, True, False, False, False, False, False]
    # one value: libmodbus uses FC05 (the simulator logs FC05 as "coil", FC0F as "write-coils")
    assert [(t.command, t.channel, t.value) for t in board.told if t.command == "coil"] == [
        ("coil", 3, 1)
    ]
    assert board.unlocks_of(3) == 1
    await eventually(lambda: board.doors_open[2], within=1.0, what="door 3 to pop open")
    assert [i + 1 for i, o in enumerate(board.doors_open) if o] == [3]

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "3", sim.url, "0"])

    assert res.returncode == 0, res
    assert board.relays == [False] * 8
    assert board.doors_open[2]  # the relay going off does not shut the door: a person does


async def test_write_multiple_coils_fc0f(mbpoll: str, make_sim: MakeSim) -> None:
    sim, board = await relay_board(make_sim)

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "1", sim.url, "1", "0", "1", "1"])

    assert res.returncode == 0, res
    assert "Written 4 references" in res.stdout, res
    assert board.relays == [True, False, True, True, False, False, False, False]
    assert [(t.command, t.value) for t in board.told if t.command == "write-coils"] == [
        ("write-coils", 4)
    ]
    await eventually(
        lambda: board.doors_open == [True, False, True, True, False, False, False, False],
        within=1.0,
        what="doors 1, 3, 4 to pop open",
    )

    # read the coils back with mbpoll, and switch them all off again with one FC0F
    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "1", "-c", "8", sim.url])
    assert res.values() == {1: 1, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}, res
    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "0", "-r", "1", sim.url, *["0"] * 8])
    assert res.returncode == 0, res
    assert board.relays == [False] * 8


async def test_board_timed_pulse_with_fc06(mbpoll: str, make_sim: MakeSim) -> None:
    """Flash-on as FC06 to holding register 0x0200 + channel: 1 unit = 100 ms."""
    sim, board = await relay_board(make_sim)

    res = await run_mbpoll([*rtu_args(mbpoll), "-t", "4", "-0", "-r", "0x201", sim.url, "1"])

    assert res.returncode == 0, res
    assert "Written 1 references" in res.stdout, res
    assert [(t.command, t.channel, t.value) for t in board.told] == [("unlock", 2, 100)]
    assert board.doors_open[1]
    await eventually(lambda: not board.relays[1], within=1.0, what="relay 2 off after its pulse")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("what", "options", "write"),
    [
        ("read input past the last channel", ["-t", "1", "-r", "9", "-c", "1"], []),
        ("read inputs across the end", ["-t", "1", "-r", "5", "-c", "8"], []),
        ("read coil far out of range", ["-t", "0", "-r", "100", "-c", "1"], []),
        ("write coil past the last channel", ["-t", "0", "-r", "9"], ["1"]),
        ("write coils across the end", ["-t", "0", "-r", "7"], ["1", "1", "1"]),
    ],
)
async def test_out_of_range_gets_illegal_data_address(
    mbpoll: str, make_sim: MakeSim, what: str, options: list[str], write: list[str]
) -> None:
    sim, board = await relay_board(make_sim)
    argv = [*rtu_args(mbpoll), *options, sim.url, *write]

    res = await run_mbpoll(argv)

    assert res.returncode != 0, f"{what}: {res}"
    # libmodbus's text for exception code 2; a timeout or CRC error would read differently
    assert "Illegal data address" in res.stderr, f"{what}: {res}"
    assert board.relays == [False] * 8


async def test_unsupported_function_gets_illegal_function(mbpoll: str, make_sim: MakeSim) -> None:
    """FC11 (report slave id) is not something the relay board does."""
    sim, _ = await relay_board(make_sim)

    res = await run_mbpoll([*rtu_args(mbpoll), "-u", sim.url])

    # mbpoll 1.0 exits 0 even when -u fails; the message is what counts
    assert "Illegal function" in res.stderr, res


async def test_absent_slave_times_out(mbpoll: str, make_sim: MakeSim) -> None:
    sim, board = await relay_board(make_sim)

    res = await run_mbpoll([*rtu_args(mbpoll, 2, timeout_s=0.2), "-t", "1", "-c", "8", sim.url])

    assert res.returncode != 0, res
    assert "timed out" in res.stderr, res
    assert board.status_reads == 0
