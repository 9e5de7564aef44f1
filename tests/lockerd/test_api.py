"""The local API over a real Unix socket, and lockerctl as a person runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from lockerd import domain as d
from lockerd.api import ApiServer, call
from tests.lockerd.test_service import Hub, _make_hub


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Hub, Path]]:
    async with contextlib.AsyncExitStack() as stack:
        hub = await _make_hub(stack, tmp_path)
        sock = tmp_path / "run" / "api.sock"
        server = ApiServer(hub.service, sock)
        await server.start()
        stack.push_async_callback(server.close)
        yield hub, sock


async def test_bad_requests_get_typed_errors_and_the_connection_lives_on(
    served: tuple[Hub, Path],
) -> None:
    _, sock = served
    reader, writer = await asyncio.open_unix_connection(str(sock))
    bad = [
        b"this is not json\n",
        b'{"op": "explode"}\n',
        b'{"op": "enter_code"}\n',
        b'{"op": "open", "label": "A01", "reason": "x", "actor": "t", "extra": 1}\n',
        b'["a", "list"]\n',
    ]
    for line in bad:
        writer.write(line)
        await writer.drain()
        reply = json.loads(await reader.readline())
        assert reply["ok"] is False, line
        assert reply["error"]["type"] == "bad_request"
        assert reply["error"]["message"]
    writer.write(b'{"op": "status"}\n')
    await writer.drain()
    reply = json.loads(await reader.readline())
    assert reply["ok"] is True
    assert len(reply["result"]["compartments"]) == 4
    writer.close()


async def test_a_code_through_the_socket_opens_and_is_never_logged(
    served: tuple[Hub, Path],
) -> None:
    hub, sock = served
    hub.reserve("P1", d.Size.S, "24681357", "13572468")
    with capture_logs() as logs:
        reply = await call(sock, {"op": "enter_code", "code": "24681357", "terminal": "kiosk"})
    assert reply["result"]["status"] == "opened"
    assert reply["result"]["compartment"] == "A01"
    assert "24681357" not in json.dumps(logs, default=str)
    events = await call(sock, {"op": "events"})
    assert "24681357" not in json.dumps(events)


async def test_the_socket_is_not_open_to_everyone(served: tuple[Hub, Path]) -> None:
    _, sock = served
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660


async def lockerctl(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.ctl import main; raise SystemExit(main())",
        "--socket",
        str(sock),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_lockerctl_as_a_technician_uses_it(served: tuple[Hub, Path]) -> None:
    hub, sock = served
    rc, out, _ = await lockerctl(sock, "status")
    assert rc == 0
    assert out.splitlines()[0].split() == ["LABEL", "SIZE", "STATE", "DOOR_OPEN", "PARCEL"]
    assert "A04" in out
    rc, out, _ = await lockerctl(sock, "service", "A03", "out")
    assert rc == 0
    assert hub.state("A03") is d.CompartmentState.OUT_OF_SERVICE
    rc, out, _ = await lockerctl(sock, "enter-code", "00000000")
    assert rc == 1
    assert out.startswith("refused")
    rc, out, _ = await lockerctl(sock, "open", "A01", "--reason", "cleaning")
    assert rc == 0
    assert out.startswith("opened [A01]")
    rc, out, _ = await lockerctl(sock, "--json", "parcels")
    assert rc == 0
    assert json.loads(out) == []


async def test_lockerctl_without_a_daemon_says_so(tmp_path: Path) -> None:
    rc, _, err = await lockerctl(tmp_path / "nope.sock", "status")
    assert rc == 3
    assert "cannot reach lockerd" in err


async def test_an_oversized_request_is_refused_not_buffered(served: tuple[Hub, Path]) -> None:
    _, sock = served
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(b'{"op": "status", "pad": "' + b"x" * 70_000 + b'"}\n')
    await writer.drain()
    reply = json.loads(await reader.readline())
    assert reply["ok"] is False
    assert "over 65536 bytes" in reply["error"]["message"]
    writer.close()
    assert (await call(sock, {"op": "status"}))["ok"] is True  # the daemon serves on
