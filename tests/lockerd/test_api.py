"""The local API over real Unix sockets, and lockerctl as a person runs it.

The first part serves the API in this process over a small hub (tests.support.hubs,
built by open_hub). The second part attacks a real daemon (``lockerd run`` on the demo
hub's config, tests.support.daemon) as a socket client would: a keypad's terminal
socket asking for what only a technician may do, a request naming its own actor, a
user outside the technician group (a child process that drops to ``nobody``; these
need root), 2,000 idle connections, a line never finished, a technician's flood of
actions, and running out of file handles (ADR 0015).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import re
import resource
import shutil
import socket
import sqlite3
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lockerd.api.server import OPS, AcceptErrors, ActionLimiter, ApiServer, call
from lockerd.config import Api
from lockerd.hub import domain as d
from tests.support.daemon import api_up, hub_config, lockerctl, run_daemon
from tests.support.hubs import SimHub, make_hub
from tests.support.waiting import until_result

ME = pwd.getpwuid(os.getuid()).pw_name  # who runs the tests: tech:ME on the technician socket


@dataclass
class Served:
    hub: SimHub
    sock: Path  # the technician socket
    keypad: Path  # keypad:1's terminal socket
    server: ApiServer


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """``await serve(**api)``: the API of a small hub, in this process, with ``[api]``
    settings ``api``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**api: Any) -> Served:
            hub = await make_hub(stack, tmp_path, api=api)
            return Served(hub, hub.sock, hub.keypad, hub.api)

        yield make


@pytest.fixture
async def served(serve: ServeFactory) -> Served:
    return await serve()


async def test_bad_requests_get_typed_errors_and_the_connection_lives_on(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.sock))
    bad = [
        b"this is not json\n",
        b'{"op": "explode"}\n',
        b'{"op": ["a", "list"]}\n',
        b'{"op": "enter_code"}\n',
        b'{"op": "open", "label": "A01", "reason": "x", "extra": 1}\n',
        b'{"op": "open", "label": "A01", "reason": "x", "actor": "tech:alice"}\n',
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


async def test_a_code_at_the_keypad_opens_and_is_never_logged(served: Served) -> None:
    served.hub.reserve("P1", d.Size.S, "24681357", "13572468")
    with capture_logs() as logs:
        reply = await call(served.keypad, {"op": "enter_code", "code": "24681357"})
    assert reply["result"]["status"] == "opened"
    assert reply["result"]["compartment"] == "A01"
    assert "24681357" not in json.dumps(logs, default=str)
    events = await call(served.sock, {"op": "events"})
    assert "24681357" not in json.dumps(events)
    requested = next(e for e in events["result"] if e["type"] == "door_open_requested")
    assert requested["data"]["by"] == "keypad:1"  # the socket's terminal, not a request field


async def test_a_request_cannot_name_its_terminal_or_actor(served: Served) -> None:
    for sock in (served.keypad, served.sock):
        for field in ("terminal", "actor"):
            request = {"op": "enter_code", "code": "00000000", field: "keypad:9"}
            reply = await call(sock, request)
            assert reply["error"]["type"] == "bad_request", reply
            assert "comes from the socket" in reply["error"]["message"]
    # nothing was counted against the named terminal: the requests never reached the service
    status = (await call(served.sock, {"op": "status"}))["result"]
    assert "keypad:9" not in json.dumps(status["throttle"])


async def test_the_sockets_are_not_open_to_everyone(served: Served) -> None:
    assert stat.S_IMODE(served.sock.stat().st_mode) == 0o660
    assert stat.S_IMODE(served.keypad.stat().st_mode) == 0o660


async def test_an_idle_connection_is_closed(serve: ServeFactory) -> None:
    served = await serve(idle_timeout_s=0.2)
    reader, writer = await asyncio.open_unix_connection(str(served.keypad))
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the daemon
    writer.close()


async def test_lockerctl_as_a_technician_uses_it(served: Served) -> None:
    hub, sock = served.hub, served.sock
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
    actors = {(a["actor"], a["action"]) for a in await hub.service.run_db(hub.store.audit)}
    assert {(f"tech:{ME}", "service"), (f"tech:{ME}", "open")} <= actors  # the login


async def test_lockerctl_at_a_keypad_may_only_enter_codes(served: Served) -> None:
    rc, out, err = await lockerctl(served.keypad, "enter-code", "00000000")
    assert (rc, out.split(":")[0]) == (1, "refused")
    rc, out, err = await lockerctl(served.keypad, "open", "A01", "--reason", "let me in")
    assert rc == 1
    assert out == ""
    assert err.startswith("lockerctl: forbidden: open is not allowed on the socket of terminal")
    assert served.hub.state("A01") is d.CompartmentState.FREE


async def test_lockerctl_without_a_daemon_says_so(tmp_path: Path) -> None:
    rc, _, err = await lockerctl(tmp_path / "nope.sock", "status")
    assert rc == 3
    assert "cannot reach lockerd" in err


async def test_an_oversized_request_is_refused_not_buffered(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.sock))
    writer.write(b'{"op": "status", "pad": "' + b"x" * 70_000 + b'"}\n')
    await writer.drain()
    reply = json.loads(await reader.readline())
    assert reply["ok"] is False
    assert "over 65536 bytes" in reply["error"]["message"]
    writer.close()
    assert (await call(served.sock, {"op": "status"}))["ok"] is True  # the daemon serves on


async def test_failed_accepts_are_logged_once_a_minute_not_once_a_retry() -> None:
    loop = asyncio.get_running_loop()
    passed: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: passed.append(context))
    now = [0.0]
    errors = AcceptErrors(every_s=60.0, clock=lambda: now[0])
    errors.install(loop)
    emfile = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
    }
    try:
        with capture_logs() as logs:
            for second in range(100):  # asyncio tries again every second
                now[0] = float(second)
                loop.call_exception_handler(emfile)
            other = {"message": "something else", "exception": ValueError("x")}
            loop.call_exception_handler(other)
    finally:
        errors.uninstall()
        loop.set_exception_handler(None)
    failed = [entry for entry in logs if entry["event"] == "api_accept_failed"]
    assert [(f["failures"], f["total"]) for f in failed] == [(1, 1), (60, 61)]
    assert passed == [other]  # anything else goes where it went before


def test_a_technician_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = ActionLimiter(burst=2, per_minute=6, clock=lambda: now[0])
    assert [limiter.take("tech:ana") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("tech:ana") == pytest.approx(10.0)  # one action every 10 s
    assert limiter.take("tech:bob") == 0.0  # per technician
    now[0] = 10.0
    assert limiter.take("tech:ana") == 0.0


# ======================================================================================
# A real daemon, attacked over its sockets
# ======================================================================================


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    root: Path
    sock: Path  # the technician socket
    keypad: Path  # keypad:1's terminal socket

    @property
    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    async def api(self, op: str, **kw: Any) -> Any:
        reply = await call(self.sock, {"op": op, **kw})
        assert reply["ok"], reply
        return reply["result"]

    async def terminal_socket(self) -> dict[str, Any]:
        stats = (await self.api("status"))["api"]
        found: dict[str, Any] = next(s for s in stats["sockets"] if s["role"] == "terminal")
        return found

    def audit(self) -> list[tuple[str, str, str]]:
        db = sqlite3.connect(f"file:{self.root / 'state' / 'lockerd.db'}?mode=ro", uri=True)
        try:
            return list(db.execute("SELECT actor, action, target FROM audit ORDER BY id"))
        finally:
            db.close()


@contextlib.asynccontextmanager
async def daemon(
    api: dict[str, float] | None = None, paths: dict[str, float | str] | None = None
) -> AsyncIterator[Daemon]:
    """``lockerd run`` on the demo hub's config, ``[api]`` and ``[paths]`` settings added,
    its sockets in a short directory anyone may enter (the files are 0660)."""
    root = Path(tempfile.mkdtemp(prefix="lk-"))
    os.chmod(root, 0o755)
    extra = "[api]\n" + "".join(f"{k} = {v}\n" for k, v in (api or {}).items())
    config = hub_config(root, paths=paths, extra=extra)
    try:
        async with run_daemon(root, config) as proc:
            await api_up(root / "api.sock", proc)
            yield Daemon(proc, root, root / "api.sock", root / "terminal.sock")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# one valid request for every op a terminal may not ask for
TECHNICIAN_REQUESTS: dict[str, dict[str, Any]] = {
    "status": {"op": "status"},
    "parcels": {"op": "parcels"},
    "events": {"op": "events"},
    "alarms": {"op": "alarms"},
    "quarantine": {"op": "quarantine"},
    "bus": {"op": "bus"},
    "cloud": {"op": "cloud"},
    "watchdog": {"op": "watchdog"},
    "open": {"op": "open", "label": "A05", "reason": "let me in"},
    "service": {"op": "service", "label": "A06", "in_service": False},
    "inspect": {"op": "inspect", "label": "A07", "holds_parcel": True},
    "ack": {"op": "ack", "id": 1},
    "empty_expired": {"op": "empty_expired"},
    "sim_door": {"op": "sim_door", "label": "A08", "action": "open"},
    "sim_bus": {"op": "sim_bus", "bus": "A", "action": "dead"},
    "sim_stall": {"op": "sim_stall", "seconds": 30},
    "outbox": {"op": "outbox"},
    "audit": {"op": "audit"},
    "ack_all": {"op": "ack_all"},
    "reserve": {"op": "reserve", "size": "M", "parcel": "KEYPAD-1"},
    "cancel": {"op": "cancel", "parcel": "DEMO-001"},
}


async def test_a_keypad_socket_cannot_open_a_door_or_do_anything_but_enter_codes() -> None:
    assert set(TECHNICIAN_REQUESTS) == {op for op, a in OPS.items() if not a.terminal}
    async with daemon() as hub:
        before = await hub.api("status")
        seq = len(await hub.api("events", limit=10_000))
        audit = hub.audit()
        reply = await call(hub.keypad, TECHNICIAN_REQUESTS["open"])
        assert reply["ok"] is False
        assert reply["error"]["type"] == "forbidden"
        assert "may only enter_code" in reply["error"]["message"]
        for op, request in TECHNICIAN_REQUESTS.items():
            reply = await call(hub.keypad, request)
            assert reply.get("error", {}).get("type") == "forbidden", (op, reply)
        # and one connection asking for everything in turn is refused each time
        reader, writer = await asyncio.open_unix_connection(str(hub.keypad))
        for request in TECHNICIAN_REQUESTS.values():
            writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        for op in TECHNICIAN_REQUESTS:
            assert json.loads(await reader.readline())["error"]["type"] == "forbidden", op
        writer.close()
        # what a person at the hub may do still works there
        code = await call(hub.keypad, {"op": "enter_code", "code": "00000000"})
        assert code["result"]["status"] == "refused"
        after = await hub.api("status")
        assert after["compartments"] == before["compartments"]  # no door open, none out
        assert all(board["online"] for board in after["boards"])  # bus A not "dead"
        events = await hub.api("events", limit=10_000)
        assert [e["type"] for e in events[seq:]] == []  # nothing happened
        assert hub.audit() == audit
        assert hub.proc.returncode is None  # and it never stalled or stopped


async def test_the_audit_names_the_login_never_a_request_field() -> None:
    async with daemon() as hub:
        forged = {"op": "open", "label": "A05", "reason": "x", "actor": "tech:alice"}
        reply = await call(hub.sock, forged)
        assert reply["error"]["type"] == "bad_request"
        assert "not a request field" in reply["error"]["message"]
        opened = await hub.api("open", label="A05", reason="checked by the test")
        assert opened["status"] == "opened", opened
        assert (f"tech:{ME}", "open", "A05") in hub.audit()
        assert not any(actor == "tech:alice" for actor, _, _ in hub.audit())


# ---------------------------------------------------------------- other users (root)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="connecting as another user (nobody) needs root to setuid()"
)


def as_user(user: str, sock: Path, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """In a child that drops to ``user`` (its own group, no others): connect to ``sock``,
    send each request and read its reply. ``{"replies": [...]}`` (None where the
    daemon had closed the connection), and ``"error"`` if a call failed."""
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain syscalls only, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            out: dict[str, Any] = {"replies": []}
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(10)
                    s.connect(str(sock))
                    f = s.makefile("rwb")
                    for request in requests:
                        f.write(json.dumps(request).encode() + b"\n")
                        f.flush()
                        line = f.readline()
                        out["replies"].append(json.loads(line) if line else None)
            except OSError as exc:
                out["error"] = type(exc).__name__
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data, "the child wrote nothing"
    result: dict[str, Any] = json.loads(data)
    return result


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")


@needs_root
async def test_a_member_of_the_technician_group_is_audited_as_themself() -> None:
    import grp  # noqa: PLC0415

    group = grp.getgrgid(nobody().pw_gid).gr_name  # nobody's own group: a member
    async with daemon(paths={"technician_group": f'"{group}"'}) as hub:
        assert hub.sock.stat().st_gid == nobody().pw_gid
        got = await asyncio.to_thread(
            as_user,
            "nobody",
            hub.sock,
            [
                {"op": "open", "label": "A05", "reason": "x", "actor": "tech:alice"},
                {"op": "open", "label": "A05", "reason": "checked by nobody"},
            ],
        )
        forged, opened = got["replies"]
        assert forged["error"]["type"] == "bad_request"
        assert opened["result"]["status"] == "opened", opened
        assert ("tech:nobody", "open", "A05") in hub.audit()
        assert not any(actor == "tech:alice" for actor, _, _ in hub.audit())


@needs_root
async def test_a_user_outside_the_technician_group_is_forbidden_and_disconnected() -> None:
    user = nobody()
    async with daemon() as hub:  # no technician group: root and lockerd's own user only
        # the first gate: the socket's mode (0660, root's group)
        got = await asyncio.to_thread(as_user, "nobody", hub.sock, [{"op": "status"}])
        assert got == {"replies": [], "error": "PermissionError"}
        # the second, when the mode lets too many in (a misconfigured group, a chmod)
        hub.sock.chmod(0o666)
        requests = [
            {"op": "open", "label": "A05", "reason": "let me in"},
            {"op": "status"},
        ]
        got = await asyncio.to_thread(as_user, "nobody", hub.sock, requests)
        assert "error" not in got or got["error"] in ("BrokenPipeError", "ConnectionResetError")
        refused = got["replies"][0]
        assert refused["error"]["type"] == "forbidden", refused
        assert "user nobody" in refused["error"]["message"]
        assert got["replies"][1:] in ([], [None])  # and disconnected
        assert (await hub.api("status"))["compartments"][4]["door_open"] is False
        assert not any(label == "A05" for _, _, label in hub.audit())
        warned = [json.loads(line) for line in hub.log.splitlines() if "api_peer_forbidden" in line]
        assert [(w["uid"], w["user"]) for w in warned] == [(user.pw_uid, "nobody")]


# ---------------------------------------------------------------- bounded
def own_file_handles(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test holds {needed} sockets; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect_many(path: Path, n: int, within: float = 20.0) -> list[socket.socket]:
    """``n`` connections to ``path``, held open and never used. Blocking connects: a
    full backlog waits, as a real client's connect does, but no longer than ``within``
    (then BlockingIOError: the daemon stopped accepting)."""
    out = []
    timeval = struct.pack("ll", int(within), 0)
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)  # bounds connect()
            s.connect(str(path))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


async def test_2000_idle_connections_do_not_lock_the_keypad_out() -> None:
    own_file_handles(2_000 + 1_000)
    async with daemon() as hub:
        # as under systemd without LimitNOFILE: 1,024 file handles
        _, hard = resource.prlimit(hub.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(hub.proc.pid, resource.RLIMIT_NOFILE, (1024, hard))
        idle = await asyncio.to_thread(connect_many, hub.keypad, 2_000)
        try:
            reply = await call(hub.keypad, {"op": "enter_code", "code": "00000000"})
            assert reply["ok"], reply
            assert reply["result"]["status"] == "refused"  # answered, the code checked
            keypad = await hub.terminal_socket()
            assert keypad["connections"] <= Api().max_connections
            assert keypad["evicted"] >= 2_000 - Api().max_connections
            assert hub.fds() < 200  # the daemon holds the cap, not the flood
            assert (await hub.api("status"))["api"]["accept_failures"] == 0
        finally:
            for s in idle:
                s.close()
        assert "api_accept_failed" not in hub.log
        assert "out of system resource" not in hub.log


async def test_a_line_never_finished_is_dropped_after_the_read_timeout() -> None:
    async with daemon(api={"read_timeout_s": 0.3}) as hub:  # (idle timeout: 300 s)
        reader, writer = await asyncio.open_unix_connection(str(hub.keypad))
        writer.write(b'{"op": "enter_code", "code": "1234')  # and never the rest
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed, no reply
        writer.close()
        assert await until_result(hub.terminal_socket, lambda s: s["connections"] == 0)
        assert "api_read_timeout" in hub.log
        reply = await call(hub.keypad, {"op": "enter_code", "code": "00000000"})
        assert reply["result"]["status"] == "refused"


async def test_every_connection_busy_tells_the_next_one_busy() -> None:
    async with daemon(api={"max_connections": 2}) as hub:
        await hub.api("sim_door", label="A05", action="jam")
        await hub.api("sim_door", label="A06", action="jam")
        # two opens of jammed doors: each waits open_confirm_s (3 s) for the door
        opens = [
            asyncio.create_task(call(hub.sock, {"op": "open", "label": label, "reason": "t"}))
            for label in ("A05", "A06")
        ]
        # (the API logs a request once it has read it: then its connection is busy)
        await until_result(
            lambda: asyncio.to_thread(lambda: hub.log),
            lambda log: log.count('"op": "open"') == 2,
            what="both opens under way",
        )
        busy = await call(hub.sock, {"op": "status"})
        assert busy["error"]["type"] == "busy", busy
        assert [(await o)["result"]["status"] for o in opens] == ["jammed", "jammed"]
        assert (await hub.api("status"))["api"]["sockets"][0]["refused_busy"] == 1


async def test_running_out_of_file_handles_is_logged_once_not_once_a_second() -> None:
    async with daemon(api={"max_connections": 64}) as hub:
        # a technician connection kept open: it can still ask while no accept succeeds
        reader, writer = await asyncio.open_unix_connection(str(hub.sock))

        async def stats() -> dict[str, Any]:
            writer.write(b'{"op": "status"}\n')
            await writer.drain()
            result: dict[str, Any] = json.loads(await reader.readline())["result"]["api"]
            return result

        await stats()
        soft, hard = resource.prlimit(hub.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(hub.proc.pid, resource.RLIMIT_NOFILE, (hub.fds() + 2, hard))
        flood = await asyncio.to_thread(connect_many, hub.keypad, 20)  # into the backlog
        try:
            # asyncio retries a failed accept every second: wait for three failures
            await until_result(stats, lambda s: s["accept_failures"] >= 3, within=30)
            lines = [line for line in hub.log.splitlines() if "api_accept_failed" in line]
            assert len(lines) == 1, lines
            assert "out of system resource" not in hub.log  # asyncio's own, with traceback
        finally:
            resource.prlimit(hub.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
            for s in flood:
                s.close()
        writer.close()

        async def keypad() -> Any:
            with contextlib.suppress(OSError, TimeoutError):
                return await call(hub.keypad, {"op": "enter_code", "code": "00000000"}, within=5)
            return None

        reply = await until_result(keypad, lambda r: r is not None, within=30)
        assert reply["result"]["status"] == "refused"


async def test_a_technician_cannot_flood_the_hub_with_actions() -> None:
    async with daemon(api={"technician_burst": 3, "technician_per_minute": 0.5}) as hub:
        seq = len(await hub.api("events", limit=10_000))
        for in_service in (False, True, False):
            done = await hub.api("service", label="A03", in_service=in_service)
            assert done["status"] == "ok", done
        waited = await hub.api("service", label="A03", in_service=True)
        assert waited["status"] == "wait"
        assert waited["wait_s"] > 0
        assert waited["message"].startswith("Too many technician actions")
        rc, out, _ = await lockerctl(hub.sock, "open", "A04", "--reason", "one more")
        assert (rc, out.split(":")[0]) == (1, "wait")
        status = await hub.api("status")
        a03 = next(c for c in status["compartments"] if c["label"] == "A03")
        assert a03["state"] == "out_of_service"  # the fourth toggle was not done
        flips = (await hub.api("events", limit=10_000))[seq:]
        assert [e["type"] for e in flips].count("compartment_service") <= 3
        assert not any(e["type"] == "door_open_requested" for e in flips)
        # reading is not an action, and a code is throttled as codes are
        assert (await hub.api("alarms")) == []
        code = await hub.api("enter_code", code="00000000")
        assert code["status"] == "refused"
        assert hub.log.count('"technician_rate_limited"') == 1  # once per spell


async def test_many_clients_at_once_each_get_their_own_replies() -> None:
    async with daemon(api={"max_connections": 64}) as hub:

        async def technician(n: int) -> None:
            reader, writer = await asyncio.open_unix_connection(str(hub.sock), limit=2**24)
            try:
                for i in range(8):
                    kind = (n + i) % 4
                    requests: list[dict[str, Any]] = [
                        {"op": "status"},
                        {"op": "events", "limit": 1 + i},
                        {"op": "bus"},
                        {"op": "parcels", "states": ["stored"]},
                    ]
                    writer.write(json.dumps(requests[kind]).encode() + b"\n")
                    await writer.drain()
                    reply = json.loads(await reader.readline())
                    assert reply["ok"], reply
                    result = reply["result"]
                    if kind == 0:
                        assert len(result["compartments"]) == 68
                    elif kind == 1:
                        assert isinstance(result, list)
                        assert len(result) <= 1 + i
                    elif kind == 2:
                        assert sorted(b["bus"] for b in result) == ["A", "B", "C"]
                    else:
                        assert result == []
            finally:
                writer.close()

        async def keypad(n: int) -> None:
            reader, writer = await asyncio.open_unix_connection(str(hub.keypad))
            try:
                for i in range(8):
                    code = i % 2 == 0
                    request = (
                        {"op": "enter_code", "code": f"{n:04d}{i:04d}"}
                        if code
                        else {"op": "status"}
                    )
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    reply = json.loads(await reader.readline())
                    if code:
                        assert reply["result"]["status"] in ("refused", "wait"), reply
                    else:
                        assert reply["error"]["type"] == "forbidden", reply
            finally:
                writer.close()

        await asyncio.wait_for(
            asyncio.gather(*(technician(n) for n in range(48)), *(keypad(n) for n in range(24))),
            60,
        )
        stats = (await hub.api("status"))["api"]
        assert all(s["evicted"] == 0 and s["refused_busy"] == 0 for s in stats["sockets"])


async def test_a_request_the_daemon_closed_unread_is_sent_again_and_a_taken_one_is_not(
    tmp_path: Path,
) -> None:
    """Under a flood of connections the daemon closes connections to make room, a new
    one among them: the client sends its request again on a new connection (it was
    never read). One the daemon read and then dropped is not sent again."""
    path = tmp_path / "s.sock"
    seen: list[bytes] = []
    mode = {"drop_first_unread": 1, "read_then_drop": False}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode["drop_first_unread"]:
            mode["drop_first_unread"] -= 1
            writer.transport.abort()  # made room: closed before reading anything
            return
        seen.append(await reader.readline())
        if not mode["read_then_drop"]:
            writer.write(b'{"ok": true, "result": "done"}\n')
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        assert await call(path, {"op": "status"}) == {"ok": True, "result": "done"}
        assert seen == [b'{"op": "status"}\n']  # once, on the second connection
        mode["read_then_drop"] = True
        with pytest.raises(ConnectionError, match="without a reply"):
            await call(path, {"op": "status"})
        assert len(seen) == 2  # taken once, not sent again


# ======================================================================================
# Issue 12: the history, the audit trail, reservations at the hub, the real reason
# ======================================================================================


async def test_a_malformed_or_huge_reservation_is_a_bad_request(served: Served) -> None:
    bad: list[dict[str, Any]] = [
        {"op": "reserve"},
        {"op": "reserve", "size": "XXL"},
        {"op": "reserve", "size": "M", "parcel": ""},
        {"op": "reserve", "size": "M", "parcel": "P" * 65},
        {"op": "reserve", "size": "M", "parcel": "../../etc"},
        {"op": "reserve", "size": "M", "parcel": "a b"},
        {"op": "reserve", "size": "M", "hours": 0},
        {"op": "reserve", "size": "M", "hours": -5},
        {"op": "reserve", "size": "M", "hours": 1e12},
        {"op": "reserve", "size": "M", "hours": float("inf")},
        {"op": "reserve", "size": "M", "codes": ["12345678"]},
        {"op": "reserve", "size": "M", "deposit_code": "12345678"},
        {"op": "cancel"},
        {"op": "cancel", "parcel": "x" * 10_000},
        {"op": "events", "limit": 10**9},
        {"op": "events", "since": "yesterday"},
        {"op": "events", "types": ["no_such_event"]},
        {"op": "audit", "limit": 0},
        {"op": "status", "label": "A" * 100},
    ]
    for request in bad:
        reply = await call(served.sock, request)
        assert reply["ok"] is False, request
        assert reply["error"]["type"] == "bad_request", (request, reply)
    reader, writer = await asyncio.open_unix_connection(str(served.sock))
    writer.write(b'{"op": "reserve", "size": "M", "hours": NaN}\n')
    await writer.drain()
    assert json.loads(await reader.readline())["error"]["type"] == "bad_request"
    writer.close()
    assert served.hub.store.parcels() == []  # nothing reserved


async def test_reserved_codes_are_in_the_reply_once_and_never_in_the_log(served: Served) -> None:
    with capture_logs() as logs:
        reply = await call(served.sock, {"op": "reserve", "size": "S", "parcel": "T-1"})
    result = reply["result"]
    assert result["status"] == "ok", result
    codes = result["deposit_code"], result["pickup_code"]
    assert all(len(code) == 8 and code.isdigit() for code in codes)
    assert not any(code in json.dumps(logs, default=str) for code in codes)
    history = await call(served.sock, {"op": "events"})
    audit = await call(served.sock, {"op": "audit"})
    assert not any(code in json.dumps([history, audit]) for code in codes)
    assert (f"tech:{ME}", "reserve", "T-1") in {
        (a["actor"], a["action"], a["target"]) for a in audit["result"]
    }
    opened = await call(served.keypad, {"op": "enter_code", "code": codes[0]})
    assert opened["result"]["status"] == "opened"


async def test_a_real_daemon_never_logs_a_reserved_code() -> None:
    async with daemon() as hub:
        rc, out, err = await lockerctl(hub.sock, "reserve", "M", "--parcel", "TECH-1")
        assert rc == 0, err
        codes = re.findall(r"deposit (\d+) pickup (\d+)", out)[0]
        assert '"op": "reserve"' in hub.log  # the request was logged, by its op
        assert not any(code in hub.log for code in codes)
        rc, out, _ = await lockerctl(hub.sock, "cancel", "TECH-1")
        assert (rc, out) == (0, "ok: parcel TECH-1 cancelled\n")
        assert {(f"tech:{ME}", "reserve", "TECH-1"), (f"tech:{ME}", "cancel", "TECH-1")} <= set(
            hub.audit()
        )


async def test_a_technician_is_told_the_real_reason_and_a_keypad_is_not(served: Served) -> None:
    first = await call(served.sock, {"op": "open", "label": "A01", "reason": "look"})
    assert first["result"]["status"] == "opened"
    again = await call(served.sock, {"op": "open", "label": "A01", "reason": "look"})
    assert again["result"]["status"] == "refused", again  # A01 is open for the first
    assert again["result"]["detail"].startswith("A01 is busy")
    assert "busy" not in again["result"]["message"]  # the keypad's words
    wrong = await call(served.sock, {"op": "enter_code", "code": "00000000"})
    assert wrong["result"]["detail"]  # (which code it was not is the technician's to know)
    keypad = await call(served.keypad, {"op": "enter_code", "code": "00000000"})
    assert keypad["result"]["status"] == "refused"
    assert "detail" not in keypad["result"]
    assert keypad["result"]["message"] == wrong["result"]["message"]  # the keypad's words


async def test_events_read_the_history_after_the_cloud_had_them(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = served.hub
    for in_service in (False, True, False, True, False):
        await hub.service.set_service("A03", in_service, actor="tech:test")
    hub.store.delete_outbox(r.seq for r in hub.store.outbox(limit=10_000))  # delivered
    assert (await call(served.sock, {"op": "outbox"}))["result"] == []
    every = (await call(served.sock, {"op": "events"}))["result"]
    seqs = [e["seq"] for e in every]
    assert len(seqs) == 5
    assert seqs == sorted(seqs)  # in the order they happened
    assert {(e["type"], e["actor"], e["target"]) for e in every} == {
        ("compartment_service", "tech:test", "A03")
    }
    newest = (await call(served.sock, {"op": "events", "limit": 2}))["result"]
    assert [e["seq"] for e in newest] == seqs[-2:]
    monkeypatch.setattr("lockerd.api.server.HISTORY_PAGE", 2)  # paging forward, 2 at a time
    for after, limit in [(0, 100), (seqs[0], 2), (seqs[1], 100), (seqs[-1], 10)]:
        got = await call(served.sock, {"op": "events", "after_seq": after, "limit": limit})
        assert [e["seq"] for e in got["result"]] == [s for s in seqs if s > after][:limit]


# ======================================================================================
# A simulated door: the reply comes once the hub has seen it (issue 12)
# ======================================================================================


@contextlib.asynccontextmanager
async def watched(hub: SimHub) -> AsyncIterator[None]:
    """The hub's door monitor running for the block (a hub made with start_monitor=False)."""
    task = asyncio.create_task(hub.hub.monitor.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_simulated_door_shut_is_answered_once_the_hub_saw_it(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path, start_monitor=False)
        hub.reserve("P1", d.Size.M, "11112222", "33334444")
        async with watched(hub):
            opened = await hub.service.enter_code("11112222", "keypad:1")
        assert opened.status == "opened"
        label = opened.compartment
        assert label is not None
        # nobody watches the doors for now: the reply must wait for the hub, not the board
        close = {"op": "sim_door", "label": label, "action": "close"}
        shutting = asyncio.create_task(call(hub.sock, close))
        await asyncio.sleep(0.3)
        assert not shutting.done(), "answered before the hub saw the door shut"
        async with watched(hub):
            reply = await asyncio.wait_for(shutting, 10)
            assert reply["ok"] is True, reply
            # the next step finds the hub where the person left it: stored, door shut
            assert hub.parcel("P1") is d.ParcelState.STORED
            comp = await hub.service.run_db(hub.store.compartment, label)
            assert comp is not None
            assert comp.door_open is False
            assert reply["result"]["message"] == (
                f"a person shuts {label}; the hub saw it shut: {label} is occupied (parcel P1)"
            )
            assert reply["result"]["changed"] is True
            # shutting it again changes nothing, and says so
            again = await call(hub.sock, close)
            assert again["result"] == {"message": f"{label} is already shut", "changed": False}
            opened_again = await call(hub.sock, {**close, "action": "open"})
            assert opened_again["result"]["message"].startswith(f"a person opens {label}; ")
            comp = await hub.service.run_db(hub.store.compartment, label)
            assert comp is not None
            assert comp.door_open


async def test_a_simulated_door_the_hub_never_sees_is_an_error(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path, start_monitor=False)  # nobody watches
        hub.api.sim_seen_within_s = 0.3
        reply = await call(hub.sock, {"op": "sim_door", "label": "A02", "action": "open"})
        assert reply["ok"] is False
        assert reply["error"]["type"] == "not_seen"
        assert reply["error"]["message"] == (
            "a person opens A02, but the hub did not see it open within 0.3 s "
            "(lockerctl status A02)"
        )


# ======================================================================================
# status: boards lockerd cannot reach, a summary, filters (issue 12)
# ======================================================================================


async def test_status_tells_compartments_on_a_board_it_cannot_reach(served: Served) -> None:
    hub = served.hub
    assert (await call(served.sock, {"op": "sim_bus", "bus": "A", "action": "dead"}))["ok"]
    status = await until_result(
        lambda: call(served.sock, {"op": "status"}),
        lambda r: not r["result"]["boards"][0]["online"],
        within=10,
        what="board offline",
    )
    comps = status["result"]["compartments"]
    assert {(c["bus"], c["board"], c["reachable"]) for c in comps} == {
        ("A", "kerong-cu48@0", False)
    }
    assert all(c["unreachable"] for c in comps)
    assert status["result"]["summary"] == {
        "free": {"S": 0, "M": 0, "XL": 0},  # none counted free
        "of_size": {"S": 1, "M": 2, "XL": 1},
        "unreachable": 4,
        "out_of_service": 0,
        "open_alarms": len(status["result"]["alarms"]),
    }
    await until_result(hub.service.alarms, bool, within=10, what="board_offline alarm")
    detail = (await call(served.sock, {"op": "status", "label": "A01"}))["result"]
    assert detail["compartment"]["reachable"] is False
    assert detail["board"]["online"] is False
    assert detail["board"]["last_error"]
    assert [(a["type"], a["target"]) for a in detail["alarms"]] == [
        ("board_offline", "kerong-cu48@0")
    ]
    assert (await call(served.sock, {"op": "sim_bus", "bus": "A", "action": "alive"}))["ok"]
    status = await until_result(
        lambda: call(served.sock, {"op": "status"}),
        lambda r: all(c["reachable"] for c in r["result"]["compartments"]),
        within=10,
        what="board online again",
    )
    assert status["result"]["summary"]["free"] == {"S": 1, "M": 2, "XL": 1}
    assert status["result"]["summary"]["unreachable"] == 0


async def test_status_filters_the_list_and_summarises_every_compartment(served: Served) -> None:
    await served.hub.service.set_service("A03", False, actor="tech:test")
    reply = await call(served.sock, {"op": "status", "states": ["free"], "sizes": ["M", "S"]})
    result = reply["result"]
    assert [c["label"] for c in result["compartments"]] == ["A01", "A02"]
    assert result["summary"]["of_size"] == {"S": 1, "M": 2, "XL": 1}  # all of them
    assert result["summary"]["out_of_service"] == 1
    only = await call(served.sock, {"op": "status", "states": ["out_of_service"]})
    assert [c["label"] for c in only["result"]["compartments"]] == ["A03"]
    bad = await call(served.sock, {"op": "status", "states": ["lost"]})
    assert bad["error"]["type"] == "bad_request"
