"""`lockerd-sim` and `lockerd demo` as a person runs them: real processes, real ptys."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from lockerd.drivers.boards import make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.settings import BusSettings, Cu16Settings, Cu48Settings, ModbusRelaySettings
from tests.support.waiting import until_result

SIM = [sys.executable, "-m", "lockerd.simulator.cli"]


async def start_sim(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *SIM,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 15)
    return proc, first.decode().strip()


async def ask(proc: asyncio.subprocess.Process, command: str) -> str:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(command.encode() + b"\n")
    await proc.stdin.drain()
    return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()


async def test_sim_prints_its_pty_first_serves_and_stops_on_sigterm() -> None:
    proc, path = await start_sim(
        "kerong-cu48:0", "modbus-relay:1:8", "--control", "--spring-delay", "0"
    )
    try:
        assert path.startswith("/dev/pts/"), path
        assert os.path.exists(path)  # noqa: ASYNC240 - one stat in a test
        async with Bus(BusSettings(port=path, gap_ms=0, timeout_ms=100)) as bus:
            assert await bus.wait_open(5)
            kerong = make_board(bus, Cu48Settings(address=0))
            relay = make_board(bus, ModbusRelaySettings(address=1))
            assert await ask(proc, "open 0 5") == "ok"
            assert [i + 1 for i, o in enumerate((await kerong.read()).doors_open) if o] == [5]
            await relay.unlock(2)
            reading = await until_result(relay.read, lambda r: r.doors_open[1], what="door 2")
            assert reading.doors_open[1]
            assert (await ask(proc, "told 1")).startswith("unlock:2")
            assert await ask(proc, "fault 0 dead on") == "ok"
            assert (await ask(proc, "bogus 0")).startswith("error unknown command")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0


async def test_sim_serves_tcp_like_a_gateway() -> None:
    proc, url = await start_sim("kerong-cu16:3", "--tcp", "127.0.0.1:0")
    try:
        assert url.startswith("tcp://127.0.0.1:")
        async with Bus(BusSettings(port=url, timeout_ms=100)) as bus:
            assert await bus.wait_open(5)
            info = await make_board(bus, Cu16Settings(address=3)).probe()
            assert info.occupancy_sensors
        assert info.channels == 16
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_sim_refuses_a_bad_board_spec_with_a_usage_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        *SIM, "kerong-cu99:1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"KIND:ADDRESS[:CHANNELS]" in err
    assert out == b""


async def test_demo_plays_its_scene_and_exits_cleanly(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.main import main; raise SystemExit(main())",
        "demo",
        "--hardware",
        "--once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "confirmed by the door sensor: opened" in text
    assert "still shut: jammed" in text
    assert "door kerong-cu48@0 ch 20: OPEN" in text  # the forced door was seen
    assert "kerong-cu48@1 online=False" in text


async def run_sim(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *SIM, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("kerong-cu48:10", "address 10 (its addresses are 0..9)"),
        ("kerong-cu16:16", "address 16 (its addresses are 0..15)"),
        ("modbus-relay:0", "address 0 (its addresses are 1..247)"),
        ("modbus-relay:248:8", "address 248"),
    ],
)
async def test_sim_refuses_an_address_no_board_can_have(spec: str, words: str) -> None:
    rc, out, err = await run_sim(spec)
    assert rc == 2
    assert out == ""
    assert words in err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block or traceback


async def test_sim_says_what_is_wrong_with_its_os_or_its_arguments_in_one_line(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:  # the port a gateway should serve on is taken
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            ("--tcp", f"127.0.0.1:{port}"),
            ("--tcp", "127.0.0.1:notaport"),
            ("--link", str(tmp_path / "no-such-dir" / "tty")),
            ("--baud", "0"),
            ("--spring-delay", "-1"),
        ]
        for option, value in cases:
            rc, out, err = await run_sim("kerong-cu48:0", option, value)
            assert rc in (1, 2), (option, value, rc)
            assert out == ""
            assert "Traceback" not in err
            assert len(err.strip().splitlines()) == 1, err
            assert err.startswith("lockerd-sim: ")


async def test_help_and_mistakes_on_the_control_channel() -> None:
    proc, _ = await start_sim("kerong-cu48:0:8", "modbus-relay:1:4", "--control")
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"help\n")
        await proc.stdin.drain()
        lines: list[str] = []
        while not lines or not lines[-1].startswith("boards: "):
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip())
        text = "\n".join(lines)
        for command in ("open ADDR CH", "fault ADDR", "doors ADDR", "vanish", "help"):
            assert command in text
        assert lines[-1] == "boards: kerong-cu48@0, modbus-relay@1"
        assert await ask(proc, "open 7 1") == (
            "error no board at address 7; boards: kerong-cu48@0, modbus-relay@1"
        )
        assert await ask(proc, "open 0") == "error CH missing (help lists the commands)"
        assert await ask(proc, "open") == "error ADDR missing (help lists the commands)"
        assert await ask(proc, "open x 1") == "error ADDR is a number, not 'x'"
        assert await ask(proc, "fault 0 jammed 99 on") == "error kerong-cu48@0: no channel 99"
        assert (await ask(proc, "fault 0 melted on")).startswith("error unknown fault 'melted'")
        assert await ask(proc, "bogus") == "error unknown command 'bogus': help lists the commands"
        assert await ask(proc, "open 0 3") == "ok"
        assert await ask(proc, "doors 0") == "00100000"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
