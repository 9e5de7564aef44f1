"""`lockerd demo` as a newcomer runs it: a whole hub on the simulator, driven with
lockerctl (codes at the keypad's terminal socket, the rest at the technician's); killed
with SIGKILL and resumed from its state directory; and the README's "Try it" played
as written: its sample output is what the demo prints, its commands work pasted as
they are, with a second demo refused and a killed one leaving nothing in the way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockerd.api.server import call
from tests.support.waiting import until_result

ROOT = Path(__file__).resolve().parents[2]
PARCEL = re.compile(r"^parcel (\S+) size (\S+) deposit (\d+) pickup (\d+)$")
DEMO = [sys.executable, "-c", "from lockerd.cli.main import main; raise SystemExit(main())"]
README_STATE = "/run/user/1000/lockerd-demo"  # the state directory in README's sample


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short $XDG_RUNTIME_DIR of the test's own (a Unix socket's path is short)."""
    path = Path(tempfile.mkdtemp(prefix="xdg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo_env(runtime: Path) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}


async def start_demo(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, list[str]]:
    """``lockerd demo ARGS`` from the checkout's root, as ``./dev run`` starts it;
    returned once it serves, with the lines it printed."""
    proc = await asyncio.create_subprocess_exec(
        *DEMO,
        "demo",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
        if not line and proc.stdout.at_eof():
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            raise AssertionError("demo exited early:\n" + "\n".join(lines) + err)
        lines.append(line)
        if line == "serving until Ctrl-C":
            return proc, lines


def sockets(lines: list[str]) -> tuple[Path, Path]:
    """(the keypad's socket, the technician's) as the demo printed them."""
    keypad = next(x.split()[2] for x in lines if x.startswith("keypad socket "))
    tech = next(x.split()[2] for x in lines if x.startswith("technician socket "))
    return Path(keypad), Path(tech)


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


async def parcels(sock: Path) -> dict[str, dict[str, object]]:
    found = await ctl(sock, "parcels")
    assert isinstance(found, list)
    return {str(p["id"]): p for p in found if isinstance(p, dict)}


async def parcel_state(sock: Path, pid: str) -> str:
    return str((await parcels(sock))[pid]["state"])


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), 20)


async def test_a_newcomer_deposits_collects_and_the_hub_survives_a_kill(tmp_path: Path) -> None:
    state, sock, keypad = tmp_path / "hub", tmp_path / "api.sock", tmp_path / "keypad.sock"
    kept = ("--state-dir", str(state), "--socket", str(sock), "--terminal-socket", str(keypad))
    proc, lines = await start_demo(*kept)
    try:
        assert sockets(lines) == (keypad, sock)
        assert any(f"--socket {keypad} enter-code DEPOSIT-CODE" in line for line in lines)
        found = [m.groups() for line in lines if (m := PARCEL.match(line))]
        assert [(p[0], p[1]) for p in found] == [
            ("DEMO-001", "S"),
            ("DEMO-002", "M"),
            ("DEMO-003", "L"),
            ("DEMO-004", "S"),  # a return
        ]
        pid, _, deposit, pickup = found[1]
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
        await stop(proc, signal.SIGKILL)  # a power cut, as far as lockerd can tell
    proc, lines = await start_demo(*kept)
    try:
        # a resumed demo can be played: its parcels, and how to reserve new ones
        assert any(line.startswith("resumed a demo hub with 4 parcel(s)") for line in lines)
        assert any(
            line.startswith(f"parcel {pid} size M stored in {label}: waiting for its pickup code")
            for line in lines
        ), lines
        assert "parcel DEMO-001 size S reserved: waiting for its deposit code" in lines
        assert any(f"--socket {sock} reserve SIZE" in line for line in lines)
        assert not any(PARCEL.match(line) for line in lines)  # no new samples
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
        assert types.count("collected") == 1
        seqs = sorted(int(str(e["seq"])) for e in events if isinstance(e, dict))
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gapless across the kill
    finally:
        assert await stop(proc, signal.SIGTERM) == 0
    assert (state / "lockerd.db").exists()  # kept


# --------------------------------------------------------------------------- the README


def readme_block(marker: str) -> list[str]:
    """The lines of the fenced block right after ``<!-- MARKER`` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(f"<!-- {marker}") :]
    block = after.split("```", 2)[1]
    return block.split("\n")[1:-1]  # without the fence's language and the last newline


def normalised(lines: list[str], state: str) -> list[str]:
    """Codes and the way to lockerctl told apart from the rest; the state directory
    as README's sample has it."""
    out = []
    for line in lines:
        text = line.replace(state, README_STATE) if state else line
        text = re.sub(r"\b\d{8}\b", "CODE", text)
        out.append(re.sub(r"\S*/lockerctl\b", "lockerctl", text))
    return out


async def test_the_readme_demo_plays_as_written(runtime_dir: Path) -> None:
    env = demo_env(runtime_dir)
    state = runtime_dir / "lockerd-demo"
    proc, lines = await start_demo(env=env)
    try:
        # README's sample output is what the demo prints
        assert normalised(lines, str(state)) == normalised(readme_block("demo-output"), "")
        keypad, tech = sockets(lines)
        assert (keypad, tech) == (state / "terminal.sock", state / "api.sock")
        codes = {m.group(1): m.groups() for line in lines if (m := PARCEL.match(line))}
        _, _, deposit, pickup = codes["DEMO-002"]
        # a second demo is refused, and says what to do
        second = await asyncio.create_subprocess_exec(
            *DEMO, "demo", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1
        assert out == b""
        message = err.decode()
        assert f"another lockerd demo is running on {state}" in message
        assert "--state-dir DIR" in message
        assert "Traceback" not in message
        # README's commands, each pasted as it is
        script = [line for line in readme_block("demo-commands") if line.strip()]
        assert script[0] == "D=${XDG_RUNTIME_DIR:-/tmp}/lockerd-demo"
        for command in script[1:]:
            pasted = command.replace("DEPOSIT-CODE", deposit).replace("PICKUP-CODE", pickup)
            run = await asyncio.create_subprocess_exec(
                "bash", "-c", f"{script[0]}\n{pasted}", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(run.communicate(), 30)
            said = (out + err).decode()
            if "# forbidden" in command:
                assert run.returncode != 0, said
                assert "forbidden" in said.lower(), said
                continue
            assert run.returncode == 0, f"{pasted}: {said}"
            if command.split("#")[0].split()[-1] == "close":
                # answered once the hub saw the door shut: the next line may follow at
                # once (a pickup code right after the deposit's door is not a wrong guess)
                assert "the hub saw it shut" in said, said
                reply = await call(tech, {"op": "parcels"})
                now = {p["id"]: p["state"] for p in reply["result"]}["DEMO-002"]
                assert now == command.split("# ")[-1].replace("deposited", "stored"), said
            if "enter-code" in command:
                opened = re.search(r"# opened (\w+)", command)
                assert opened is not None
                assert opened.group(1) in said, said
        assert await parcel_state(tech, "DEMO-002") == "collected"
    finally:
        assert await stop(proc) == 0  # Ctrl-C
    assert not state.exists(), "Ctrl-C left the throw-away state directory behind"


async def test_a_killed_demo_leaves_nothing_in_the_way_of_the_next(runtime_dir: Path) -> None:
    env = demo_env(runtime_dir)
    state = runtime_dir / "lockerd-demo"
    proc, _ = await start_demo(env=env)
    await stop(proc, signal.SIGKILL)
    assert state.exists()  # what a power cut leaves
    proc, lines = await start_demo(env=env)
    try:
        assert f"(cleared what a demo that was killed left in {state})" in lines
        assert sum(1 for line in lines if PARCEL.match(line)) == 4  # a fresh hub
    finally:
        assert await stop(proc, signal.SIGTERM) == 0
    assert not state.exists()


async def test_a_demo_never_clears_a_hub_it_did_not_make(runtime_dir: Path) -> None:
    state = runtime_dir / "lockerd-demo"
    state.mkdir()
    (state / "lockerd.db").write_text("someone's hub")
    proc = await asyncio.create_subprocess_exec(
        *DEMO, "demo", cwd=ROOT, env=demo_env(runtime_dir), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"`lockerd demo --state-dir {state}`" in err.decode()
    assert (state / "lockerd.db").read_text() == "someone's hub"
