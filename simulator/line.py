"""An RS-485 line of simulated boards, served on a real pseudo-terminal or on TCP.

Every board on a line hears every byte, as on a real bus: each protocol present
decodes the stream with its own incremental decoder (frames of other protocols
are garbage to it), and the board whose address a frame carries answers it.
Replies go back through the same pty or TCP connection, optionally delayed by
the frames' wire time at the configured baud rate so timing behaves like the
field.

The line also checks the master's half-duplex discipline (:attr:`SimLine.stats`):
a request that starts while a reply is still pending or on the wire would
collide with it on a real RS-485 line, and one that starts less than 3.5
character times after the end of a reply runs into it (Modbus RTU framing).
Both are counted; with ``strict=True`` a collided request is not answered, as a
real board would have heard garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from lockerd.drivers import kerong, modbus
from lockerd.drivers.framing import StreamDecoder, frame_silence, wire_time
from lockerd.simulator.boards import BOARD_TYPES, SimBoard

log = structlog.get_logger(__name__)

Send = Callable[[bytes], None]


def request_len(request: Any) -> int:
    """Wire length of a decoded request, for line-speed emulation."""
    if isinstance(request, kerong.Cu48Request):
        return kerong.CU48_REQUEST_LEN
    if isinstance(request, kerong.Cu16Request):
        return kerong.CU16_REQUEST_LEN
    if isinstance(request, modbus.ModbusRequest) and request.function == modbus.FC_WRITE_COILS:
        return 9 + (request.count + 7) // 8
    return 8


def _decoder_for(protocol: str) -> StreamDecoder[Any]:
    if protocol == "kerong-cu48":
        return kerong.Cu48RequestDecoder()
    if protocol == "kerong-cu16":
        return kerong.Cu16RequestDecoder()
    return modbus.ModbusRequestDecoder()


_TIMER_SLACK = 0.0015
# timers may fire a hair early (the loop's clock resolution) and floats round: a
# request this close to the required silence is not a violation
_CLOCK_TOLERANCE = 1e-6
_KEPT_VIOLATIONS = 8

ViolationKind = Literal["collision", "gap"]


@dataclass(frozen=True, slots=True)
class Violation:
    """A request that started too early, with its timings (loop clock, seconds).

    ``collision``: it started while a reply was still pending (scheduled but not yet
    fully written: the board's turnaround, or its bytes on the wire). ``gap``: it
    started after the reply's last byte, but less than ``silence`` after it.
    """

    kind: ViolationKind
    at: float  # when the request's first byte arrived
    reply_end: float  # when the reply's last byte was (or is due to be) written
    silence: float  # the silence the line requires after a frame
    request: str = ""

    @property
    def gap(self) -> float:
        """Seconds from the reply's end to the request's start (negative: overlapped)."""
        return self.at - self.reply_end

    def __str__(self) -> str:
        ms = self.gap * 1000
        if self.kind == "collision":
            when = f"{-ms:.2f} ms before the end of a pending reply"
        else:
            when = f"{ms:.2f} ms after the end of a reply"
        return (
            f"{self.kind}: {self.request or 'request'} started at {self.at:.6f}, {when} "
            f"(needs {self.silence * 1000:.2f} ms of silence after it)"
        )


@dataclass(slots=True)
class LineStats:
    """What the line saw of the master's half-duplex discipline; a correct master keeps
    ``collisions`` and ``gap_violations`` at zero."""

    requests: int = 0  # complete requests decoded from the master's bytes
    replies: int = 0  # replies whose last byte was written back
    collisions: int = 0  # requests started while a reply was pending or on the wire
    gap_violations: int = 0  # requests started less than frame_silence after a reply
    dropped: int = 0  # collided requests not answered (strict mode)
    violations: deque[Violation] = field(default_factory=lambda: deque(maxlen=_KEPT_VIOLATIONS))

    @property
    def clean(self) -> bool:
        return self.collisions == 0 and self.gap_violations == 0

    def reset(self) -> None:
        fresh = LineStats()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def summary(self) -> str:
        """The counts on one line."""
        return (
            f"requests={self.requests} replies={self.replies} collisions={self.collisions} "
            f"gap_violations={self.gap_violations} dropped={self.dropped}"
        )

    def __str__(self) -> str:
        """The counts, then the last violations with their timings (for assert messages)."""
        return "\n  ".join([self.summary(), *map(str, self.violations)])


def _send_at(at: float, send: Send, data: bytes) -> None:
    """Send ``data`` at loop time ``at`` precisely (a short blocking wait; simulator only)."""
    remaining = at - asyncio.get_running_loop().time()
    if remaining > 0:
        time.sleep(remaining)
    send(data)


class SimLine:
    """The boards of one bus and the rules of the wire between them and the master."""

    def __init__(
        self,
        boards: Sequence[SimBoard],
        *,
        baudrate: int = 19200,
        emulate_line_speed: bool = False,
        strict: bool = False,
    ) -> None:
        self.boards = list(boards)
        seen: set[tuple[str, int]] = set()
        for board in self.boards:
            key = (board.protocol, board.address)
            if key in seen:
                raise ValueError(f"two {board.protocol} boards at address {board.address}")
            seen.add(key)
        self.baudrate = baudrate
        self.emulate_line_speed = emulate_line_speed
        self._decoders = {b.protocol: _decoder_for(b.protocol) for b in self.boards}
        self.strict = strict
        self.stats = LineStats()
        self._silence = frame_silence(baudrate)
        self._last_rx = 0.0
        # the request being received: when its first byte came, and what was then on the line
        self._rx_start: float | None = None
        self._rx_verdict: tuple[ViolationKind, float] | None = None
        # replies scheduled but not fully written, the latest time one is due, and when
        # the last byte of the latest written reply went out
        self._pending = 0
        self._pending_until = -math.inf
        self._reply_end = -math.inf

    @property
    def requests(self) -> int:
        return self.stats.requests

    def board(self, address: int, kind: str | None = None) -> SimBoard:
        for b in self.boards:
            if b.address == address and (kind is None or b.kind == kind):
                return b
        raise KeyError(f"no simulated board at address {address}" + (f" ({kind})" if kind else ""))

    def receive(self, data: bytes, send: Send) -> None:
        """Bytes from the master; answers go to ``send``.

        As on a real line, a silence of 3.5 character times ends any frame in
        progress: a partial frame before it is dropped, not glued to what follows.
        A request is checked against the replies on the line as of its first byte,
        however many chunks it arrives in.
        """
        now = asyncio.get_running_loop().time()
        if now - self._last_rx >= self._silence:
            for decoder in self._decoders.values():
                decoder.flush()
            self._rx_start = None
        self._last_rx = now
        if self._rx_start is None:
            self._rx_start, self._rx_verdict = now, self._check(now)
        requests = [
            (protocol, request)
            for protocol, decoder in self._decoders.items()
            for request in decoder.feed(data)
        ]
        if not requests:
            return  # a request in progress (or garbage): judged when it completes
        start, verdict = self._rx_start, self._rx_verdict
        assert start is not None
        self._rx_start = self._rx_verdict = None
        for i, (protocol, request) in enumerate(requests):
            if i:  # a further request in the same chunk started just now
                start, verdict = now, self._check(now)
            self.stats.requests += 1
            if verdict is not None and self._violated(verdict, start, request) and self.strict:
                self.stats.dropped += 1
                continue  # the boards heard the request garbled by the reply
            for board in self.boards:
                if board.protocol == protocol and board.addressed(request):
                    self._answer(board, request, send)

    def _check(self, at: float) -> tuple[ViolationKind, float] | None:
        """What a request starting at ``at`` runs into: (kind, end of the reply) or None."""
        if self._pending:
            return "collision", self._pending_until
        if at - self._reply_end < self._silence - _CLOCK_TOLERANCE:
            return "gap", self._reply_end
        return None

    def _violated(self, verdict: tuple[ViolationKind, float], at: float, request: Any) -> bool:
        """Count a violation; whether the request collided."""
        kind, reply_end = verdict
        v = Violation(kind, at, reply_end, self._silence, repr(request))
        if kind == "collision":
            self.stats.collisions += 1
        else:
            self.stats.gap_violations += 1
        self.stats.violations.append(v)
        log.warning("sim_line_" + kind, detail=str(v), gap_ms=round(v.gap * 1000, 3))
        return kind == "collision"

    def _written(self, last: bool, send: Send, data: bytes) -> None:
        """Write a part of a reply; after the last one, the reply is off the line."""
        end = asyncio.get_running_loop().time()
        send(data)
        if last:
            self._pending -= 1
            if not self._pending:
                self._pending_until = -math.inf
            self._reply_done(end)

    def _reply_done(self, end: float) -> None:
        # ``end`` is read *before* the write: the write may wake the master on another
        # core and delay us, and a late timestamp would report gaps that were not there
        self.stats.replies += 1
        self._reply_end = max(self._reply_end, end)

    def _answer(self, board: SimBoard, request: Any, send: Send) -> None:
        faults = board.faults
        if faults.dead:
            return
        reply = board.handle(request)
        if reply is None or faults.no_reply:
            return
        if faults.corrupt_checksum:
            reply = board.corrupt(reply)
        delay = faults.late_reply_s
        if self.emulate_line_speed:
            delay += wire_time(request_len(request) + len(reply), self.baudrate)
        parts = [reply]
        if faults.split_reply:
            cut = max(1, len(reply) // 2)
            parts = [reply[:cut], reply[cut:]]
        if faults.garbage:
            parts = [faults.garbage, *parts, faults.garbage]
        loop = asyncio.get_running_loop()
        if delay <= 0 and len(parts) == 1:
            end = loop.time()
            send(reply)  # bytes go out at once: the reply is off the line now
            self._reply_done(end)
            return
        at = loop.time() + delay
        # the reply is pending until its last byte is written (with line speed emulated,
        # ``at`` is when that byte would reach the master: request + reply wire time);
        # trailing noise is not the board's answer, and a master cannot wait for it
        last = len(parts) - (2 if faults.garbage else 1)
        self._pending += 1
        for i, part in enumerate(parts):
            pause = faults.split_pause_s * i if faults.split_reply else 0.0
            write = functools.partial(self._written, i == last, send)
            if i <= last:
                self._pending_until = max(self._pending_until, at + pause)
            if self.emulate_line_speed:
                # the loop's timers wake up to 1 ms late (epoll's resolution): wake early
                # and wait out the rest, so replies leave when the wire would deliver them
                loop.call_at(at + pause - _TIMER_SLACK, _send_at, at + pause, write, part)
            else:
                loop.call_at(at + pause, write, part)


class PtyPort:
    """Serves a line on a pseudo-terminal; the driver opens :attr:`path` like a tty.

    With ``link``, :attr:`path` is a symlink to the pty (as /dev/serial/by-id is to
    /dev/ttyUSBn), so :meth:`vanish` and :meth:`reappear` can play an adapter that
    is unplugged and comes back as another device.
    """

    def __init__(self, line: SimLine, *, link: str | None = None) -> None:
        self.line = line
        self.link = link
        self.dropped_bytes = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._tty = ""

    @property
    def path(self) -> str:
        return self.link or self._tty

    @property
    def url(self) -> str:
        return self.path

    async def start(self) -> str:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._tty = os.ttyname(slave)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self._tty, tmp)
            os.replace(tmp, self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)
        return self.path

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open; we hold one, so only while closing
            return
        if data:
            self.line.receive(data, self._send)

    def _send(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except (BlockingIOError, OSError):
            self.dropped_bytes += len(data)  # nobody reads the other end: bytes are lost

    def vanish(self) -> None:
        """The adapter is unplugged: the tty goes away (and the by-id link with it)."""
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    async def reappear(self) -> str:
        """The adapter is plugged back in (as a new tty; the link points to it again)."""
        self.vanish()
        return await self.start()

    async def close(self) -> None:
        self.vanish()


class _TcpConnection(asyncio.Protocol):
    def __init__(self, port: TcpPort) -> None:
        self._port = port
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._port.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._port.line.receive(data, self._send)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.connections.discard(self)


class TcpPort:
    """Serves a line on TCP, as a serial-to-Ethernet gateway (e.g. Kerong KR-BU) does."""

    def __init__(self, line: SimLine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.line = line
        self.host = host
        self.port = port
        self.connections: set[_TcpConnection] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TcpConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    def vanish(self) -> None:
        """The gateway goes away: listener closed, connections cut."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()

    async def reappear(self) -> str:
        self.vanish()
        return await self.start()

    async def close(self) -> None:
        self.vanish()


def parse_board(spec: str, **kw: Any) -> SimBoard:
    """``KIND:ADDRESS[:CHANNELS]``, e.g. ``kerong-cu48:0`` or ``modbus-relay:1:8``."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in BOARD_TYPES:
        raise ValueError(
            f"bad board {spec!r}: expected KIND:ADDRESS[:CHANNELS] with KIND one of "
            + ", ".join(BOARD_TYPES)
        )
    try:
        address = int(parts[1], 0)
        channels = int(parts[2], 0) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(f"bad board {spec!r}: ADDRESS and CHANNELS are numbers") from None
    return BOARD_TYPES[parts[0]](address, channels, **kw)


class Simulator:
    """Boards on one line, served on a pty (default) or TCP: the scripting interface.

    >>> async with Simulator([SimCu48(0)]) as sim:      # doctest: +SKIP
    ...     bus_settings = BusSettings(port=sim.url)
    ...     sim.board(0).close_door(3)
    """

    def __init__(
        self,
        boards: Sequence[SimBoard],
        *,
        baudrate: int = 19200,
        emulate_line_speed: bool = False,
        strict: bool = False,
        tcp: tuple[str, int] | None = None,
        link: str | None = None,
    ) -> None:
        self.line = SimLine(
            boards, baudrate=baudrate, emulate_line_speed=emulate_line_speed, strict=strict
        )
        self.port: PtyPort | TcpPort = (
            TcpPort(self.line, *tcp) if tcp is not None else PtyPort(self.line, link=link)
        )
        self.url = ""

    async def start(self) -> str:
        self.url = await self.port.start()
        return self.url

    async def close(self) -> None:
        await self.port.close()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stats(self) -> LineStats:
        """The line's request/reply counts and half-duplex violations (see :class:`LineStats`)."""
        return self.line.stats

    def board(self, address: int, kind: str | None = None) -> SimBoard:
        return self.line.board(address, kind)

    def vanish(self) -> None:
        self.port.vanish()

    async def reappear(self) -> str:
        self.url = await self.port.reappear()
        return self.url
