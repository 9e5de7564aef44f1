"""The local API: Unix sockets owned by the daemon; one JSON object per line each way.

Request:  ``{"op": "enter_code", "code": "12345678"}``
Reply:    ``{"ok": true, "result": {...}}`` or
          ``{"ok": false, "error": {"type": "bad_request", "message": "..."}}``

Two kinds of socket, two roles (ADR 0015):

- a **terminal** socket per keypad, kiosk or scanner (``[[terminals]]`` in the
  config): only what a person at the hub may do (:data:`OPS`); anything else is
  ``forbidden``. Who asks is the terminal the socket belongs to (``keypad:1``), never
  a request field: a client cannot change its name to dodge its throttle.
- the **technician** socket (``paths.socket``, what ``lockerctl`` uses): the kernel
  says who connected (``SO_PEERCRED``); root, lockerd's own user and members of
  ``paths.technician_group`` may use it, as ``tech:<login>`` in the audit. Anyone
  else is told ``forbidden`` and disconnected. Actions that change something are
  rate-limited per technician (a reply with status ``wait``).

A request naming ``actor`` or ``terminal`` is refused (``bad_request``): identity comes
from the socket or the login. A technician's reply carries the outcome's ``detail``
(the real reason: the door stood open already, the board is offline); a terminal's
never does, only the message for the person at the keypad. ``reserve`` returns the
new parcel's two codes once, in its reply: they are stored as hashes only and never
logged. Every socket is bounded (``[api]``): a connection cap (at
the cap the longest-idle connection makes room, so idle connections never lock a
keypad out; ``busy`` when every one is mid-request), an idle timeout, a read timeout,
the request line limit; failed accepts (out of file handles) are logged once a minute,
not once a retry. Every request is validated (pydantic); a malformed one gets an error
reply and the connection stays usable. A code is never logged: requests are logged
by ``op`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import json
import math
import os
import pwd
import resource
import secrets
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lockerd import __version__
from lockerd.config import Api, Terminal
from lockerd.errors import LockerdError
from lockerd.hub import domain as d
from lockerd.hub.codes import new_code
from lockerd.hub.service import HubService, Outcome
from lockerd.hub.vocab import EventType
from lockerd.logs import bound

log = structlog.get_logger(__name__)

MAX_LINE = 64 * 1024  # a request
MAX_REPLY = 64 * 1024 * 1024
FDS_BESIDES_THE_API = 256  # the store, buses, MQTT, metrics, logs: file handles kept free

Role = Literal["terminal", "technician"]


class Access(NamedTuple):
    terminal: bool  # a person at the hub, through a keypad, kiosk or scanner
    technician: bool  # lockerctl on the technician socket
    limited: bool  # counts against the technician's rate limit (it changes something)


# Who may ask for what: the one table (ADR 0015). The carrier and kiosk flows of later
# issues join the terminal's column here.
#                                terminal technician rate-limited
OPS: dict[str, Access] = {
    "enter_code": Access(True, True, False),  # throttled as codes are, per terminal/technician
    "status": Access(False, True, False),
    "parcels": Access(False, True, False),
    "events": Access(False, True, False),  # the local history of every event
    "outbox": Access(False, True, False),  # the events still waiting for the cloud
    "audit": Access(False, True, False),
    "alarms": Access(False, True, False),
    "quarantine": Access(False, True, False),
    "bus": Access(False, True, False),
    "cloud": Access(False, True, False),
    "watchdog": Access(False, True, False),
    "open": Access(False, True, True),
    "service": Access(False, True, True),
    "inspect": Access(False, True, True),
    "ack": Access(False, True, True),
    "ack_all": Access(False, True, True),
    "reserve": Access(False, True, True),  # its reply holds the new codes, once
    "cancel": Access(False, True, True),
    "empty_expired": Access(False, True, True),
    "sim_door": Access(False, True, False),
    "sim_bus": Access(False, True, False),
    "sim_stall": Access(False, True, False),
}
TERMINAL_OPS = tuple(op for op, access in OPS.items() if access.terminal)
IDENTITY_FIELDS = ("actor", "terminal")
ID_PATTERN = r"^[A-Za-z0-9._:-]+$"  # a parcel id, as the cloud contract has it
MAX_HOURS = 90 * 24  # the longest pickup window, as the cloud contract has it
DEPOSIT_WINDOW_S = 7 * 86_400  # a local reservation's deposit code lasts a week
MAX_LIST = 10_000  # the longest list one request returns
HISTORY_PAGE = 1000  # events read at a time when paging forward (after_seq)
SIM_SEEN_WITHIN_S = 5.0  # a simulated door's move must be seen by the hub within this
SIM_POLL_S = 0.02  # how often the hub's view of that door is read meanwhile


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Status(_Req):
    """The whole hub (its summary counts every compartment; ``states`` and ``sizes``
    keep only those compartments in the list); with ``label`` one compartment in
    detail (its parcel, its alarms, its board and channel)."""

    op: Literal["status"]
    label: str | None = Field(default=None, max_length=16)
    states: list[d.CompartmentState] | None = Field(default=None, max_length=32)
    sizes: list[d.Size] | None = Field(default=None, max_length=32)


class EnterCode(_Req):
    op: Literal["enter_code"]
    code: str = Field(min_length=1, max_length=64)


class Open(_Req):
    op: Literal["open"]
    label: str = Field(max_length=16)
    reason: str = Field(min_length=1, max_length=500)


class SetService(_Req):
    op: Literal["service"]
    label: str = Field(max_length=16)
    in_service: bool


class Inspect(_Req):
    op: Literal["inspect"]
    label: str = Field(max_length=16)
    holds_parcel: bool


class Parcels(_Req):
    op: Literal["parcels"]
    states: list[d.ParcelState] | None = Field(default=None, max_length=32)
    sizes: list[d.Size] | None = Field(default=None, max_length=32)


class Events(_Req):
    """The local history (every event, kept after the cloud had it), in the order they
    happened: the newest ``limit``; with ``after_seq`` the first ``limit`` after it
    (paging forward: ``lockerctl events --follow``)."""

    op: Literal["events"]
    after_seq: int | None = Field(default=None, ge=0)
    limit: int = Field(default=100, ge=1, le=MAX_LIST)
    since: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    types: list[EventType] | None = Field(default=None, max_length=64)


class Outbox(_Req):
    """The events waiting for the cloud, oldest first (the order it gets them)."""

    op: Literal["outbox"]
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=MAX_LIST)


class Audit(_Req):
    """The audit trail (who did what, when, through which socket), the newest
    ``limit`` in the order they happened."""

    op: Literal["audit"]
    limit: int = Field(default=100, ge=1, le=MAX_LIST)
    since: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class Alarms(_Req):
    op: Literal["alarms"]


class Quarantine(_Req):
    """Messages the hub set aside (ADR 0016), newest first, without their bodies."""

    op: Literal["quarantine"]
    limit: int = Field(default=100, ge=1, le=1000)


class Ack(_Req):
    op: Literal["ack"]
    id: int = Field(ge=1)


class AckAll(_Req):
    op: Literal["ack_all"]


class EmptyExpired(_Req):
    op: Literal["empty_expired"]


class Reserve(_Req):
    """A reservation made at the hub (a standalone or offline hub): two new codes, stored
    as hashes, returned once in the reply."""

    op: Literal["reserve"]
    size: d.Size
    parcel: str | None = Field(default=None, min_length=1, max_length=64, pattern=ID_PATTERN)
    accessible: bool = False
    hours: float | None = Field(default=None, gt=0, le=MAX_HOURS, allow_inf_nan=False)


class Cancel(_Req):
    op: Literal["cancel"]
    parcel: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)


class SimDoor(_Req):
    op: Literal["sim_door"]
    label: str = Field(max_length=16)
    action: Literal["open", "close", "put", "take", "jam", "unjam"]


class SimBus(_Req):
    op: Literal["sim_bus"]
    bus: str = Field(max_length=32)
    action: Literal["dead", "alive"]


class SimStall(_Req):
    op: Literal["sim_stall"]
    seconds: float = Field(gt=0, le=120)


Request = Annotated[
    Status
    | EnterCode
    | Open
    | SetService
    | Inspect
    | Parcels
    | Events
    | Outbox
    | Audit
    | Alarms
    | Quarantine
    | Ack
    | AckAll
    | EmptyExpired
    | Reserve
    | Cancel
    | SimDoor
    | SimBus
    | SimStall,
    Field(discriminator="op"),
]
_REQUEST: TypeAdapter[Request] = TypeAdapter(Request)


def _outcome(o: Outcome, peer: Peer) -> dict[str, Any]:
    """An outcome as the reply has it: with the technician's ``detail`` (the real reason)
    on the technician socket, never on a terminal's."""
    out: dict[str, Any] = {
        "status": o.status,
        "message": o.message,
        "compartment": o.compartment,
        "wait_s": round(o.wait_s, 1),
    }
    if peer.role == "technician":
        out["detail"] = o.detail
    return out


class ApiError(Exception):
    """A request the service cannot take: an error reply (``bad_request``, ...), not a
    result."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# ======================================================================================
# Who is asking
# ======================================================================================


@dataclass(frozen=True)
class Peer:
    """Who is on a connection: a terminal (by its socket) or a technician (by the kernel's
    word, SO_PEERCRED). ``name`` is who it is in the throttle, the audit and the metrics."""

    role: Role
    name: str  # keypad:1, tech:alice
    allowed: bool = True
    why: str = ""  # why a technician peer is not allowed


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def technician(uid: int, gid: int, group: str | None) -> Peer:
    """The technician rule: root, lockerd's own user, or a member (primary or
    supplementary group, from the user database; or the process's own group) of
    ``group``."""
    try:
        pw = pwd.getpwuid(uid)
        user, primary = pw.pw_name, pw.pw_gid
    except KeyError:  # a uid without a name (a container's): never a member of a group
        user, primary = f"uid{uid}", None
    name = f"tech:{user}"
    if uid in (0, os.geteuid()):
        return Peer("technician", name)
    if group is not None:
        try:
            group_id = grp.getgrnam(group).gr_gid
        except KeyError:
            return Peer("technician", name, False, f"the technician group {group} does not exist")
        if gid == group_id:
            return Peer("technician", name)
        if primary is not None and group_id in os.getgrouplist(user, primary):
            return Peer("technician", name)
    return Peer(
        "technician",
        name,
        False,
        f"user {user} (uid {uid}) may not use the technician socket: only root, "
        f"lockerd's own user and members of "
        + (f"the group {group}" if group else "a technician group (none is configured)")
        + " may",
    )


# ======================================================================================
# Bounds: technician actions, failed accepts
# ======================================================================================


class ActionLimiter:
    """A token bucket per technician: ``burst`` actions at once, coming back at
    ``per_minute``. :meth:`take` answers 0 (go) or the seconds to wait."""

    MAX_ACTORS = 1024  # full buckets are forgotten past this many

    def __init__(
        self, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # actor -> (tokens, at)
        self.refused: dict[str, int] = {}  # actions refused per actor, since the last done

    def take(self, actor: str) -> float:
        now = self.clock()
        tokens, at = self._buckets.get(actor, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[actor] = (tokens - 1.0, now)
            self.refused.pop(actor, None)
            self._forget_full(now)
            return 0.0
        self._buckets[actor] = (tokens, now)
        self.refused[actor] = self.refused.get(actor, 0) + 1
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        if len(self._buckets) <= self.MAX_ACTORS:
            return
        for actor, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[actor]


class AcceptErrors:
    """The loop's exception handler for failed accepts (EMFILE, ENFILE, ENOBUFS, ENOMEM).

    asyncio logs each one with a traceback, and tries again every second while the
    condition lasts (about 1 MB/s of log on a busy socket). This logs the first one,
    then how many more there were, at most once every ``every_s``. Everything else
    goes to the handler that was there before (or asyncio's default)."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.total = 0
        self._unlogged = 0
        self._next_log = -math.inf
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self.handle)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self.handle:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    @staticmethod
    def is_accept_error(context: dict[str, Any]) -> bool:
        exc = context.get("exception")
        if not isinstance(exc, OSError):
            return False
        return "accept" in str(context.get("message", "")) or "_accept_connection" in repr(
            context.get("handle")
        )

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not self.is_accept_error(context):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.total += 1
        self._unlogged += 1
        now = self.clock()
        if now < self._next_log:
            return
        exc = context["exception"]
        log.error(
            "api_accept_failed",
            error=f"{type(exc).__name__}: {exc}",
            failures=self._unlogged,
            total=self.total,
            hint="out of file handles (or memory): connections are refused until some "
            "close; check LimitNOFILE against [api] max_connections, or look for a leak",
        )
        self._unlogged = 0
        self._next_log = now + self.every_s


class SocketGroupError(LockerdError):
    """An API socket cannot be given its configured group."""


def _give_group(path: Path, group: str) -> None:
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        raise SocketGroupError(
            f"the group {group} of the socket {path} does not exist: create it "
            f"(groupadd --system {group}, docs/install.md) or correct the config"
        ) from None
    except PermissionError:
        raise SocketGroupError(
            f"lockerd may not give the socket {path} the group {group}: it must be a "
            f"member (the unit's SupplementaryGroups=, or usermod -aG {group} lockerd)"
        ) from None


def _ensure_file_handles(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` if the hard limit allows;
    warn when it does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < needed:
        log.warning(
            "api_file_handles_low",
            limit=soft,
            needed=needed,
            hint="every socket may hold [api] max_connections connections: raise "
            "LimitNOFILE in the unit, or lower max_connections",
        )


# ======================================================================================
# The server
# ======================================================================================


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_active: float  # time.monotonic() of the connect or the last reply
    busy: bool = False  # a request is being handled

    def close(self) -> None:
        self.writer.close()

    def has_input(self) -> bool:
        """Whether the client has sent something not yet handled: a request on its way
        (a keypad's, just connected) is not what an idle connection is."""
        if getattr(self.reader, "_buffer", None):  # read from the socket, not yet taken
            return True
        sock = self.writer.get_extra_info("socket")
        try:
            waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, AttributeError, ValueError):
            return False
        return bool(struct.unpack("i", waiting)[0])


@dataclass(eq=False)
class _Socket:
    path: Path
    role: Role
    group: str | None
    terminal: str | None = None  # the terminal's name (its identity)
    server: asyncio.Server | None = None
    conns: set[_Conn] = field(default_factory=set)
    evicted: int = 0
    refused_busy: int = 0


class ApiServer:
    """The daemon's local API: the technician's socket and one socket per terminal.

    Who asks is known from the socket (a terminal) or from the OS (the technician's
    login, SO_PEERCRED), never from the request; :data:`OPS` says what each role may
    ask. Every request is bounded (size, read time, connections, the technician's
    rate) and answered with ``{"ok": ...}``; nothing a client sends stops the server.
    Not responsible for: the rules (the service) or who the terminals are (the
    config)."""

    def __init__(
        self,
        service: HubService,
        path: str | Path,
        *,
        group: str | None = None,
        terminals: Iterable[Terminal] = (),
        limits: Api | None = None,
        extra: dict[str, Callable[[], Awaitable[Any]]] | None = None,
        code_length: int = 8,
        pickup_window_h: float = 72.0,
    ) -> None:
        self.service = service
        # a reservation made here (lockerctl reserve): its codes' digits, its default
        # pickup window ([codes] length, [timers] pickup_window_h)
        self.code_length = code_length
        self.pickup_window_h = pickup_window_h
        self.path = Path(path)
        self.limits = limits or Api()
        self.sockets = [_Socket(self.path, "technician", group)] + [
            _Socket(Path(t.socket), "terminal", t.group, t.name) for t in terminals
        ]
        self.extra = extra or {}  # read-only extras, e.g. "bus": the buses' health
        # on a simulated hub: play the person at a door (lockerctl sim door LABEL open|close)
        self.sim_door: Callable[[str, str], str] | None = None
        # ... and every board of a bus losing power (lockerctl sim bus NAME dead|alive)
        self.sim_bus: Callable[[str, str], str] | None = None
        # how long ``sim door LABEL open|close`` waits for the hub to see the door so
        self.sim_seen_within_s = SIM_SEEN_WITHIN_S
        self.limiter = ActionLimiter(
            self.limits.technician_burst, self.limits.technician_per_minute
        )
        self.accept_errors = AcceptErrors()

    async def start(self) -> None:
        _ensure_file_handles(len(self.sockets) * self.limits.max_connections + FDS_BESIDES_THE_API)
        self.accept_errors.install(asyncio.get_running_loop())
        for sock in self.sockets:
            await self._listen(sock)

    async def _listen(self, sock: _Socket) -> None:
        sock.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.path.unlink()  # a stale socket of a previous run (daemon.py checked it)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._client(sock, reader, writer)

        sock.server = await asyncio.start_unix_server(client, sock.path, limit=MAX_LINE)
        os.chmod(sock.path, 0o660)
        if sock.group:
            _give_group(sock.path, sock.group)
        log.info(
            "api_listening",
            socket=str(sock.path),
            role=sock.role,
            terminal=sock.terminal,
            group=sock.group,
        )

    def stop_accepting(self) -> None:
        """No new connections (a stop drains); requests on open ones are still answered."""
        for sock in self.sockets:
            if sock.server is not None:
                sock.server.close()

    async def close(self) -> None:
        for sock in self.sockets:
            if sock.server is not None:
                sock.server.close()
                await sock.server.wait_closed()
                sock.server = None
            for conn in list(sock.conns):
                conn.close()
            with contextlib.suppress(FileNotFoundError):
                sock.path.unlink()
        self.accept_errors.uninstall()

    def stats(self) -> dict[str, Any]:
        """Per socket: open connections, idle ones closed to make room, newcomers told
        busy; failed accepts (out of file handles) since the start."""
        return {
            "sockets": [
                {
                    "socket": str(s.path),
                    "role": s.role,
                    "terminal": s.terminal,
                    "connections": len(s.conns),
                    "evicted": s.evicted,
                    "refused_busy": s.refused_busy,
                }
                for s in self.sockets
            ],
            "accept_failures": self.accept_errors.total,
        }

    # ------------------------------------------------------------------ a connection
    def _admit(self, sock: _Socket, conn: _Conn) -> bool:
        """Room for ``conn`` on ``sock``: at the cap the longest-idle connection is
        closed, one that has sent nothing rather than one whose request is waiting to be
        read (a flood of silent connections never pushes out a keypad's request); when
        every one is mid-request, none is (the newcomer is told busy)."""
        if len(sock.conns) >= self.limits.max_connections:
            idle = sorted((c for c in sock.conns if not c.busy), key=lambda c: c.last_active)
            if not idle:
                sock.refused_busy += 1
                return False
            victim = next((c for c in idle if not c.has_input()), idle[0])
            sock.conns.discard(victim)
            victim.close()
            sock.evicted += 1
        sock.conns.add(conn)
        return True

    def _identify(self, sock: _Socket, writer: asyncio.StreamWriter) -> Peer:
        if sock.role == "terminal":
            assert sock.terminal is not None
            return Peer("terminal", sock.terminal)
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error) as exc:
            return Peer("technician", "tech:?", False, f"the peer is unknown ({exc})")
        peer = technician(uid, gid, sock.group)
        if not peer.allowed:
            log.warning(
                "api_peer_forbidden",
                socket=str(sock.path),
                pid=pid,
                uid=uid,
                gid=gid,
                user=peer.name.removeprefix("tech:"),
                why=peer.why,
            )
        return peer

    async def _client(
        self, sock: _Socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _Conn(reader, writer, time.monotonic())
        try:
            if not self._admit(sock, conn):
                busy = f"every one of the {self.limits.max_connections} connections of this "
                busy += "socket is in the middle of a request; try again"
                await self._send(writer, _error("busy", busy))
                return
            peer = self._identify(sock, writer)
            idle_s = self.limits.idle_timeout_s if peer.allowed else self.limits.read_timeout_s
            while True:
                try:
                    line = await self._read_request(reader, idle_s)
                except ValueError:  # longer than MAX_LINE
                    too_long = _error("bad_request", f"request over {MAX_LINE} bytes")
                    await self._send(writer, too_long if peer.allowed else _forbidden(peer))
                    break
                if not line:
                    break
                conn.busy = True
                try:
                    if not peer.allowed:
                        await self._send(writer, _forbidden(peer))
                        break
                    await self._send(writer, await self.handle(line, peer))
                finally:
                    conn.busy = False
                    conn.last_active = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            sock.conns.discard(conn)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader, idle_s: float) -> bytes:
        """The next request line; empty at the end, after ``idle_s`` without a request, or
        when a line that has begun is not complete within the read timeout."""
        try:
            async with asyncio.timeout(idle_s):
                first = await reader.read(1)
        except TimeoutError:
            return b""  # idle: the client reconnects when it needs to
        if not first or first == b"\n":
            return first
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):
                rest = await reader.readline()
        except TimeoutError:
            log.info("api_read_timeout", seconds=self.limits.read_timeout_s)
            return b""
        return first + rest

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        """A reply, which the client must take within the read timeout."""
        writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        async with asyncio.timeout(self.limits.read_timeout_s):
            await writer.drain()

    # ------------------------------------------------------------------ a request
    async def handle(self, line: bytes, peer: Peer) -> dict[str, Any]:  # noqa: PLR0911
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error("bad_request", f"not JSON: {exc}")
        op = raw.get("op") if isinstance(raw, dict) else None
        access = OPS.get(op) if isinstance(op, str) else None
        if (refusal := _refusal(raw, op, access, peer)) is not None:
            return refusal
        if isinstance(op, str) and op in self.extra and len(raw) == 1:
            return {"ok": True, "result": await self.extra[op]()}
        try:
            req = _REQUEST.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return _error("bad_request", f"{where}: {first['msg']}" if where else first["msg"])
        log.info("api_request", op=req.op, by=peer.name)  # never the code itself
        if access is not None and access.limited and (wait := self.limiter.take(peer.name)):
            return {"ok": True, "result": self._slow_down(req, peer, wait)}
        try:
            with bound(request=req.op):
                return {"ok": True, "result": await self._dispatch(req, peer)}
        except ApiError as exc:
            return _error(exc.kind, exc.message)
        except Exception as exc:
            log.exception("api_request_failed", op=req.op)
            return _error("internal", f"{type(exc).__name__}: the request failed; see the log")

    def _slow_down(self, req: Request, peer: Peer, wait: float) -> Any:
        """The rate limit's answer: an outcome with status wait (a list for empty_expired)."""
        if self.limiter.refused.get(peer.name) == 1:  # once per spell, not once per request
            log.warning(
                "technician_rate_limited",
                actor=peer.name,
                op=req.op,
                burst=self.limits.technician_burst,
                per_minute=self.limits.technician_per_minute,
            )
        wait_s = math.ceil(wait * 10) / 10
        out = _outcome(
            Outcome(
                "wait",
                f"Too many technician actions: please wait {wait_s:g} s before the next one.",
                wait_s=wait_s,
            ),
            peer,
        )
        return [out] if isinstance(req, EmptyExpired) else out

    async def _status(self, req: Status) -> dict[str, Any]:
        """Compartments and alarms (the service), boards (the buses' health); each
        compartment with its bus and board, and whether lockerd can reach that board now
        (``reachable``: its state and door are what was last seen, not what is); the
        summary (:func:`_summary`) of every compartment, the list filtered by ``req``."""
        status = await self.service.status()
        status["version"] = __version__
        status["api"] = self.stats()
        if "cloud" in self.extra:
            status["cloud"] = await self.extra["cloud"]()
        if "watchdog" in self.extra:
            status["watchdog"] = await self.extra["watchdog"]()
        if "bus" in self.extra:
            buses = await self.extra["bus"]()
            status["boards"] = [
                {"bus": bus["bus"], **board} for bus in buses for board in bus["boards"]
            ]
            for comp in status["compartments"]:
                comp.update(self._board_of(comp["label"], buses))
        status["summary"] = _summary(status["compartments"], status["alarms"])
        if req.states is not None or req.sizes is not None:
            status["compartments"] = [
                c
                for c in status["compartments"]
                if (req.states is None or c["state"] in req.states)
                and (req.sizes is None or c["size"] in req.sizes)
            ]
        return status

    def _board_of(self, label: str, buses: list[dict[str, Any]]) -> dict[str, Any]:
        """Where a compartment is (its bus and board) and whether its board is reachable:
        its bus's port open and the board online (``unreachable``: why not)."""
        door = self.service.doors.get(label)
        if door is None:
            return {"bus": None, "board": None, "reachable": None}
        bus, board = door.board.bus.name, door.board.key
        found = {"bus": bus, "board": board, "reachable": True}
        snap = next((b for b in buses if b["bus"] == bus), None)
        if snap is None:
            return found
        health = next((h for h in snap["boards"] if h["board"] == board), None)
        if not snap["open"]:
            why = (health or {}).get("last_error") or _without_bus(snap["port_error"], bus)
            return found | {
                "reachable": False,
                "unreachable": why or f"the port of bus {bus} is not open",
            }
        if health is not None and not health["online"]:
            return found | {
                "reachable": False,
                "unreachable": health["last_error"] or "it does not answer",
            }
        return found

    async def _sim(self, req: SimDoor | SimBus | SimStall) -> Any:
        """A simulated hub's stage: the person at a door, a bus losing power, a stall."""
        if self.sim_door is None or self.sim_bus is None:
            raise ApiError("bad_request", "this hub is not simulated: nothing to play with")
        try:
            match req:
                case SimStall(seconds=seconds):
                    log.warning("sim_stall", seconds=seconds)
                    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
                    return {"message": f"the event loop was blocked for {seconds:g} s"}
                case SimBus(bus=bus, action=action):
                    return {"message": self.sim_bus(bus, action)}
                case SimDoor(label=label, action="open" | "close" as action):
                    return await self._sim_door_moved(label, action == "open")
                case SimDoor(label=label, action=action):
                    return {"message": self.sim_door(label, action)}
        except KeyError as exc:
            raise ApiError("bad_request", str(exc.args[0])) from None

    async def _sim_door_moved(self, label: str, is_open: bool) -> dict[str, Any]:
        """A person opens or shuts a simulated door; the reply waits (at most
        :attr:`sim_seen_within_s`) until the hub has seen the door so, so that the next
        step (a pickup code after a deposit's door shut) finds the hub where the person
        left it. A door already so is said to be (nothing changes)."""
        s = self.service
        word = "open" if is_open else "shut"
        before = await s.run_db(s.store.compartment, label)
        assert self.sim_door is not None
        said = self.sim_door(label, "open" if is_open else "close")  # KeyError: no such door
        if before is not None and before.door_open == is_open:
            return {"message": f"{label} is already {word}", "changed": False}
        deadline = time.monotonic() + self.sim_seen_within_s
        while True:
            comp = await s.run_db(s.store.compartment, label)
            if comp is None or comp.door_open == is_open:
                break
            if time.monotonic() >= deadline:
                why = self._unseen_why(label)
                raise ApiError(
                    "not_seen",
                    f"{said}, but the hub did not see it {word} within "
                    f"{self.sim_seen_within_s:g} s{why} (lockerctl status {label})",
                )
            await asyncio.sleep(SIM_POLL_S)
        said += f"; the hub saw it {word}"
        if comp is not None:
            said += f": {label} is {comp.state.value.replace('_', ' ')}"
            said += f" (parcel {comp.parcel_id})" if comp.parcel_id else ""
        return {"message": said, "changed": True}

    def _unseen_why(self, label: str) -> str:
        """Why a door's move may have gone unseen: its board is not online."""
        door = self.service.doors.get(label)
        if door is None:
            return ""
        health = door.board.bus.health_of(door.board.key)
        if health.online:
            return ""
        return f": board {door.board.key} on bus {door.board.bus.name} is offline" + (
            f" ({health.last_error})" if health.last_error else ""
        )

    async def _dispatch(self, req: Request, peer: Peer) -> Any:  # noqa: PLR0911, PLR0912
        """The service's answer to a valid request, by its type (``OPS`` says who may):
        one case per op."""
        s = self.service
        actor = peer.name
        match req:
            case Status(label=None):
                return await self._status(req)
            case Status(label=str(label)):
                return await self._compartment(label)
            case EnterCode(code=code):
                return _outcome(await s.enter_code(code, actor), peer)
            case Open(label=label, reason=reason):
                return _outcome(await s.open_compartment(label, actor=actor, reason=reason), peer)
            case SetService(label=label, in_service=in_service):
                return _outcome(await s.set_service(label, in_service, actor=actor), peer)
            case Inspect(label=label, holds_parcel=holds_parcel):
                return _outcome(await s.inspect(label, holds_parcel, actor=actor), peer)
            case Alarms():
                return await s.alarms()
            case Quarantine(limit=limit):
                return await s.run_db(s.store.quarantined, limit)
            case Ack(id=alarm_id):
                return _outcome(await s.ack(alarm_id, actor=actor), peer)
            case AckAll():
                return _outcome(await s.ack_all(actor=actor), peer)
            case EmptyExpired():
                return [_outcome(o, peer) for o in await s.empty_expired(actor=actor)]
            case Reserve():
                return await self._reserve(req, peer)
            case Cancel(parcel=parcel_id):
                return _outcome(await s.cancel(parcel_id, actor=actor), peer)
            case SimDoor() | SimBus() | SimStall():
                return await self._sim(req)
            case Parcels(states=states, sizes=sizes):
                return [
                    _parcel(p) for p in await s.parcels(states) if sizes is None or p.size in sizes
                ]
            case Events():
                return await self._history(req)
            case Outbox(after_seq=after_seq, limit=limit):
                return [
                    {"seq": r.seq, "id": r.id, "type": r.type, "at": r.at, "data": r.data}
                    for r in await s.events(after_seq, limit)
                ]
            case Audit(limit=limit, since=since):
                rows = await s.run_db(s.store.audit_log, limit=limit, since=since)
                return [
                    {
                        "id": r.id,
                        "at": r.at,
                        "actor": r.actor,
                        "action": r.action,
                        "target": r.target,
                        "detail": r.detail,
                    }
                    for r in reversed(rows)
                ]

    async def _compartment(self, label: str) -> dict[str, Any]:
        """``status LABEL``: one compartment, its parcel, where it is, its board's state
        (reachable or not, and why), its open alarms and its board's."""
        s = self.service
        comp = await s.run_db(s.store.compartment, label)
        if comp is None:
            raise ApiError("bad_request", f"no compartment {label}")
        parcel = await s.run_db(s.store.parcel, comp.parcel_id) if comp.parcel_id else None
        door = s.doors.get(label)
        where: dict[str, Any] = {"bus": None, "board": None}
        board_state: dict[str, Any] | None = None
        if "bus" in self.extra:
            buses = await self.extra["bus"]()
            where = self._board_of(label, buses)
            snap = next((b for b in buses if b["bus"] == where["bus"]), None)
            health = next(
                (h for h in (snap or {}).get("boards", []) if h["board"] == where["board"]), None
            )
            if snap is not None:
                board_state = {
                    "online": bool(where["reachable"]),
                    "last_error": (health or {}).get("last_error") or where.get("unreachable", ""),
                    "port": snap["port"],
                    "port_open": snap["open"],
                }
        elif door is not None:
            where = {"bus": door.board.bus.name, "board": door.board.key, "reachable": True}
        board = where["board"]
        return {
            "compartment": {
                "label": comp.label,
                "size": comp.size.value,
                "state": comp.state.value,
                "door_open": comp.door_open,
                "parcel": comp.parcel_id,
                **where,
                "channel": door.channel if door else None,
            },
            "parcel": None if parcel is None else _parcel(parcel),
            "board": board_state,
            "alarms": [
                a
                for a in await s.alarms()
                if a["target"] == label or (board is not None and a["target"] == board)
            ],
            "version": __version__,
        }

    async def _history(self, req: Events) -> list[dict[str, Any]]:
        """The local history, in the order it happened: the newest ``limit`` events, or
        the first ``limit`` after ``after_seq`` (read backwards from the newest, a page
        at a time, down to ``after_seq``: a follower is near the newest)."""
        s = self.service
        read = s.store.history
        types = None if req.types is None else [str(t) for t in req.types]
        if req.after_seq is None:
            rows = await s.run_db(read, limit=req.limit, since=req.since, types=types)
        else:
            rows, before = [], None
            while True:
                page = await s.run_db(
                    read, limit=HISTORY_PAGE, since=req.since, before_seq=before, types=types
                )
                newer = [r for r in page if r.seq > req.after_seq]
                rows = (rows + newer)[-req.limit :]  # newest first: keep the oldest ones
                if len(newer) < HISTORY_PAGE:
                    break
                before = page[-1].seq
        return [
            {
                "seq": r.seq,
                "type": r.type,
                "at": r.at,
                "data": r.data,
                "actor": r.actor,
                "target": r.target,
            }
            for r in reversed(rows)
        ]

    async def _reserve(self, req: Reserve, peer: Peer) -> dict[str, Any]:
        """A parcel reserved at the hub: two new codes, given to the service as hashes;
        the reply holds the codes themselves, once (nothing else keeps or logs them)."""
        s = self.service
        now = s.clock()
        parcel_id = req.parcel or f"L-{secrets.token_hex(4).upper()}"
        hours = req.hours if req.hours is not None else self.pickup_window_h
        parcel = d.Parcel(
            parcel_id,
            d.Kind.DELIVERY,
            req.size,
            deposit_from=now,
            deposit_until=now + DEPOSIT_WINDOW_S,
            collect_window_s=hours * 3600,
            accessible=req.accessible,
        )
        deposit = new_code(self.code_length)
        pickup = new_code(self.code_length)
        while pickup == deposit:
            pickup = new_code(self.code_length)
        hashes = {
            d.Purpose.DEPOSIT: s.hasher.hash(deposit),
            d.Purpose.COLLECT: s.hasher.hash(pickup),
        }
        outcome = await s.reserve(parcel, hashes, actor=peer.name)
        out = _outcome(outcome, peer)
        out["parcel"] = parcel_id
        if outcome.status == "ok":
            out |= {
                "size": req.size.value,
                "accessible": req.accessible,
                "deposit_code": deposit,
                "pickup_code": pickup,
                "deposit_until": parcel.deposit_until,
                "pickup_window_h": hours,
            }
        return out


def _parcel(p: d.Parcel) -> dict[str, Any]:
    return {
        "id": p.id,
        "kind": p.kind.value,
        "size": p.size.value,
        "state": p.state.value,
        "compartment": p.compartment,
        "collect_until": p.collect_until,
    }


def _summary(comps: list[dict[str, Any]], alarms: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the compartments free and reachable, and all of them; those on a board
    lockerd cannot reach now (never counted free), those out of service; open alarms."""
    sizes = [s.value for s in d.Size if any(c["size"] == s.value for c in comps)]
    reachable = [c for c in comps if c.get("reachable") is not False]
    free = d.CompartmentState.FREE.value
    return {
        "free": {
            size: sum(c["size"] == size and c["state"] == free for c in reachable) for size in sizes
        },
        "of_size": {size: sum(c["size"] == size for c in comps) for size in sizes},
        "unreachable": len(comps) - len(reachable),
        "out_of_service": sum(c["state"] == d.CompartmentState.OUT_OF_SERVICE.value for c in comps),
        "open_alarms": len(alarms),
    }


def _without_bus(error: str, bus: str) -> str:
    """A bus's error without the ``bus NAME:`` it starts with (said where it is shown)."""
    return error.removeprefix(f"bus {bus}: ")


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


def _forbidden(peer: Peer) -> dict[str, Any]:
    return _error("forbidden", peer.why)


def _refusal(raw: Any, op: Any, access: Access | None, peer: Peer) -> dict[str, Any] | None:
    """An op this role may not ask for (``forbidden``), or a request that names who asks
    (``bad_request``): identity comes from the socket or the login, never the request."""
    if access is not None and not (
        access.terminal if peer.role == "terminal" else access.technician
    ):
        return _error(
            "forbidden",
            f"{op} is not allowed on the socket of terminal {peer.name}: a terminal may "
            f"only {', '.join(TERMINAL_OPS)}; technicians use the technician socket",
        )
    named = [f for f in IDENTITY_FIELDS if isinstance(raw, dict) and f in raw]
    if named:
        return _error(
            "bad_request",
            f"{named[0]!r} is not a request field: who asks comes from the socket (a "
            "terminal's own socket) or from the technician's login (the kernel says who "
            "connected)",
        )
    return None


async def _connect(path: str, within: float) -> socket.socket:
    """A Unix socket connected to ``path``. While the daemon's backlog is full (a flood
    of connections) a connect fails with EAGAIN, which asyncio takes for a connection
    made; this waits for room instead, in a blocking connect on a thread that gives up
    after ``within`` seconds (SO_SNDTIMEO bounds a Unix socket's connect)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(path)
    except BlockingIOError:

        def wait_for_room() -> None:
            whole, part = divmod(max(within, 0.001), 1)
            sock.setblocking(True)
            timeval = struct.pack("ll", int(whole), int(part * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock.connect(path)
            sock.setblocking(False)

        try:
            await asyncio.to_thread(wait_for_room)
        except OSError:
            sock.close()
            raise
    except BaseException:
        sock.close()
        raise
    return sock


async def call(
    path: str | Path, request: dict[str, Any], *, within: float = 10.0
) -> dict[str, Any]:
    """One request to the daemon's socket (what lockerctl does).

    A connection the daemon closed before it read the request (it makes room that way
    under a flood of connections, ADR 0016) is tried again on a new one, within the
    same deadline: the request was never read, so it cannot be done twice. A
    connection closed after the daemon took the request is not retried."""
    payload = json.dumps(request).encode() + b"\n"
    async with asyncio.timeout(within):
        line = await _exchange(str(path), payload, within)
        while line is None:  # a retry on a new connection
            await asyncio.sleep(0.01)  # the daemon is making room: a moment, not a spin
            line = await _exchange(str(path), payload, within)
    if not line:
        raise ConnectionError("lockerd closed the connection without a reply (did it stop?)")
    reply: dict[str, Any] = json.loads(line)
    return reply


async def _exchange(path: str, payload: bytes, within: float) -> bytes | None:
    """Send one request and read its reply line: b"" if the daemon closed the
    connection after taking the request without a reply, None if it closed it before
    reading the request (a broken pipe on the send, or a reset with the request still
    unread). A reply already written (``busy``) is read even then."""
    loop = asyncio.get_running_loop()
    with await _connect(path, within) as sock:
        taken = True
        try:
            await loop.sock_sendall(sock, payload)
        except (BrokenPipeError, ConnectionResetError):
            taken = False
        reply = bytearray()
        # replies can be long (status of a 1,000-door hub is ~80 kB): the request
        # limit protects the daemon, not the client
        while len(reply) <= MAX_REPLY:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:  # closed with our request unread
                taken = False
                chunk = b""
            reply += chunk
            if not chunk or b"\n" in chunk:
                break
        if b"\n" in reply:
            return bytes(reply[: reply.index(b"\n") + 1])
        if len(reply) > MAX_REPLY:
            raise ConnectionError(f"a reply longer than {MAX_REPLY} bytes")
        return b"" if taken else None
