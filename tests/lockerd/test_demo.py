"""`lockerd demo` as a newcomer runs it: a whole hub on the simulator, driven with
lockerctl (codes at the keypad's terminal socket, the rest at the technician's); killed
with SIGKILL and resumed from its state directory."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from tests.support.waiting import until_result

PARCEL = re.compile(r"^parcel (\S+) size (\S+) deposit (\d+) pickup (\d+)$")


async def start_demo(
    state: Path, sock: Path, keypad: Path
) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.main import main; raise SystemExit(main())",
        "demo",
        "--state-dir",
        str(state),
        "--socket",
        str(sock),
        "--terminal-socket",
        str(keypad),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
        assert line or proc.returncode is None, "demo exited early"
        lines.append(line)
        if line == "serving until Ctrl-C":
            return proc, lines


async def ctl(sock: Path, *args: str) -> dict[str, object] | list[object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.ctl import main; raise SystemExit(main())",
        "--socket",
        str(sock),
        "--json",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out, err.decode()
    result: dict[str, object] | list[object] = json.loads(out)
    return result


async def parcel_state(sock: Path, pid: str) -> str:
    parcels = await ctl(sock, "parcels")
    assert isinstance(parcels, list)
    return next(str(p["state"]) for p in parcels if isinstance(p, dict) and p["id"] == pid)


async def test_a_newcomer_deposits_collects_and_the_hub_survives_a_kill(tmp_path: Path) -> None:
    state, sock, keypad = tmp_path / "hub", tmp_path / "api.sock", tmp_path / "keypad.sock"
    proc, lines = await start_demo(state, sock, keypad)
    try:
        assert f"terminal-socket {keypad}" in lines
        assert any(f"--socket {keypad} enter-code DEPOSIT-CODE" in line for line in lines)
        parcels = [m.groups() for line in lines if (m := PARCEL.match(line))]
        assert [(p[0], p[1]) for p in parcels] == [
            ("DEMO-001", "S"),
            ("DEMO-002", "M"),
            ("DEMO-003", "L"),
            ("DEMO-004", "S"),  # a return
        ]
        pid, _, deposit, pickup = parcels[1]
        opened = await ctl(keypad, "enter-code", deposit)  # at the keypad
        assert isinstance(opened, dict)
        assert opened["status"] == "opened"
        label = str(opened["compartment"])
        await ctl(sock, "sim", "door", label, "close")
        await until_result(
            lambda: parcel_state(sock, pid),
            lambda s: s == "stored",
            within=10,
            what="deposit confirmed",
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # a power cut, as far as lockerd can tell
        await proc.wait()
    proc, lines = await start_demo(state, sock, keypad)
    try:
        assert any("resumed an existing demo hub" in line for line in lines)
        status = await ctl(sock, "status")
        assert isinstance(status, dict)
        boards = status["boards"]
        assert isinstance(boards, list)
        assert {(b["bus"], b["board"]) for b in boards if isinstance(b, dict)} == {
            ("A", "kerong-cu48@0"),
            ("A", "kerong-cu48@1"),
            ("B", "modbus-relay@1"),
            ("C", "kerong-cu16@0"),
        }
        assert await parcel_state(sock, pid) == "stored"  # nothing lost in the kill
        again = await ctl(keypad, "enter-code", deposit)
        assert isinstance(again, dict)
        assert again["status"] == "refused"  # the deposit code was spent
        opened = await ctl(keypad, "enter-code", pickup)
        assert isinstance(opened, dict)
        assert opened["status"] == "opened"
        assert opened["compartment"] == label
        await ctl(sock, "sim", "door", label, "close")
        await until_result(
            lambda: parcel_state(sock, pid), lambda s: s == "collected", within=10, what="collected"
        )
        events = await ctl(sock, "events")
        assert isinstance(events, list)
        types = [e["type"] for e in events if isinstance(e, dict)]
        assert types.count("deposited") == 1
        assert types.count("collected") == 1
        seqs = [e["seq"] for e in events if isinstance(e, dict)]
        assert seqs == list(range(1, len(seqs) + 1))  # gapless across the kill
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
