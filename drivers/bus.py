"""One owner for one serial line.

A :class:`Bus` owns one port (a tty, or ``tcp://host:port`` for a serial-over-TCP
gateway) and is the only thing that writes to it. Callers hand it
:class:`Exchange` objects (a request, and how to recognise its reply) and await
the reply. The bus guarantees (ADR 0002):

- exactly one request in flight, ever (RS-485 is half duplex with one master):
  callers take turns through a priority mutex and each runs its own transaction,
  so an idle bus costs no task switch; unlocks go before control writes, which
  go before polls; each read attempt is a turn of its own, so an unlock never
  waits behind a dead board's retries;
- a silence (``gap_ms``, at least 3.5 characters) after the last byte on the line
  before the next request, counting the wire time of frames still being clocked
  out, the reply a cancelled caller was waiting for, and the reply a board may
  send to a request that is not supposed to get one;
- a per-request timeout that adds the frames' wire time at the line speed to
  the board's allowance (``timeout_ms``);
- a reply is taken only if it decodes with a good checksum *and* matches the
  request; anything else is counted and dropped, so a late reply is never taken
  for another board's or another command's answer;
- reads are retried (``read_attempts``); unlocks never are. After any unanswered
  request, an unlock is sent only once its board has answered a status read in
  the same turn: on a stalled gateway it fails with :class:`UnlockNotSent` rather
  than waiting in a buffer to open a door minutes later;
- per-board health: after ``offline_after`` failed requests a board is offline,
  its reads fail at once (:class:`BoardOffline`) without using the wire, and it is
  probed once every ``offline_probe_s``; its error is logged once, then at debug
  level until it recovers. When every board of the bus falls silent, the bus
  says so once (adapter, wiring or baud rate, not one board). While the port is not
  open (it never opened, or it was lost) no board on it is online, and each says
  why (the port's error); once the port is back each gets its full tries again. A
  board that answers again has no error left over;
- after an I/O error, an unplugged adapter or a dropped gateway the port is
  reopened with jittered exponential backoff (also when a port opens and drops at
  once), logged once per outage; meanwhile requests fail at once with
  :class:`PortUnavailable`, they do not hang;
- :meth:`close` drains: unlocks, control writes and multi-step holds (a
  software-timed pulse) finish before the port closes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

import serial
import serial_asyncio_fast
import structlog

from lockerd.drivers.errors import (
    BoardOffline,
    BusClosed,
    PortBusy,
    PortUnavailable,
    ReplyTimeout,
    UnlockNotSent,
)
from lockerd.drivers.framing import StreamDecoder, frame_silence, wire_time
from lockerd.drivers.settings import BusSettings

F = TypeVar("F")

log = structlog.get_logger(__name__)


class Priority(IntEnum):
    """Queue order: lower goes first."""

    UNLOCK = 0
    CONTROL = 1
    READ = 2


def _match_any(_frame: object) -> bool:
    return True


@dataclass(slots=True, eq=False)
class Exchange(Generic[F]):
    """One request on the wire and, if the board answers it, how to know its reply.

    ``decoder`` is ``None`` for requests the board does not answer (a Kerong
    unlock). ``reply_len`` is the reply's length in bytes, for the wire-time part
    of the timeout; for an unanswered request, the length of a reply the board
    might send anyway (the line is kept free for it). ``board`` names the board
    for health and logs.
    """

    board: str
    request: bytes
    priority: Priority
    decoder: Callable[[], StreamDecoder[F]] | None = None
    match: Callable[[F], bool] = _match_any
    reply_len: int = 0
    what: str = "request"
    # an unlock's "is the path alive" check: run first, in the same turn, whenever the
    # bus's last request went unanswered (see the module docstring)
    precheck: Exchange[Any] | None = None


# upper bounds (seconds) of the transaction latency buckets (metrics' histogram): a
# status poll at 9600 baud takes ~15 ms of wire time, a slow board up to its timeout
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(slots=True)
class BoardHealth:
    """What the bus knows of one board; also the figures ``lockerctl bus`` shows."""

    board: str
    online: bool = True
    consecutive_failures: int = 0
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    refused_offline: int = 0
    bad_frames: int = 0
    last_latency_s: float = 0.0
    max_latency_s: float = 0.0
    last_ok_at: float | None = None
    last_error: str = ""  # why the last request failed; cleared by the next answer
    next_probe_at: float = 0.0
    # not online only because the port is not open: once it is, the board gets its
    # full tries (and offline_after failures), not a probe
    port_held: bool = False
    # answered transactions' latency (request written -> reply matched), counted per
    # bucket of LATENCY_BUCKETS_S (cumulative counts are made when exported)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "board": self.board,
            "online": self.online,
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "replies": self.replies,
            "timeouts": self.timeouts,
            "refused_offline": self.refused_offline,
            "bad_frames": self.bad_frames,
            "last_latency_ms": round(self.last_latency_s * 1000, 3),
            "max_latency_ms": round(self.max_latency_s * 1000, 3),
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class Timing:
    """When the last answered transaction happened, on the loop's clock (seconds).

    ``written`` is just before the request was handed to the port, ``sent`` just
    after, ``first_byte`` when the first byte of the reply reached the bus,
    ``matched`` when the reply was complete and matched. ``first_byte - written``
    is the port, the line and the board; the rest is our own cost (see
    bench/bus_bench.py).
    """

    written: float = 0.0
    sent: float = 0.0  # the port took the bytes (the write call returned)
    first_byte: float = 0.0
    matched: float = 0.0


@dataclass(slots=True, eq=False)
class _InFlight:
    """The transaction on the wire, waiting for its reply."""

    exchange: Exchange[Any]
    decoder: StreamDecoder[Any]
    waiter: asyncio.Future[Any]
    timing: Timing
    echo_left: int = 0  # bytes of our own request an echoing adapter will send back


class _PriorityMutex:
    """One holder at a time; waiters served by (priority, arrival).

    Uncontended, :meth:`acquire` returns at once without a task switch.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    async def acquire(self, priority: int) -> None:
        if not self._held and not self._waiters:
            self._held = True
            self.idle.clear()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it ran: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # ownership passes; _held stays True
                return
        self._held = False
        self.idle.set()


@dataclass(slots=True)
class BusCounters:
    opens: int = 0
    port_losses: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    stray_bytes: int = 0
    unmatched_frames: int = 0  # good frames that were not the awaited reply (late, foreign)
    echo_bytes: int = 0


class _Link(asyncio.Protocol):
    """asyncio protocol that forwards the port's events to its bus."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._bus._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._bus._on_lost(self, exc)


class Bus:
    """The single owner of one serial line; see the module docstring."""

    DRAIN_S = 3.0

    def __init__(self, settings: BusSettings, *, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.port
        self.is_tcp = settings.port.startswith("tcp://")
        self.health: dict[str, BoardHealth] = {}
        self.counters = BusCounters()
        self.last_timing: Timing | None = None
        # never less than the 3.5 character silence that ends a frame (Modbus RTU)
        self._gap = max(settings.gap_ms / 1000, frame_silence(settings.baudrate))
        self._timeout = settings.timeout_ms / 1000
        self._turn = _PriorityMutex()
        self._holder: Exchange[Any] | None = None  # the exchange whose turn it is
        self._link: _Link | None = None
        self._current: _InFlight | None = None
        self._quiet_until = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._opened = asyncio.Event()
        self._closing = False
        self._closed = False
        self._holds = 0
        self._holds_done = asyncio.Event()
        self._holds_done.set()
        self._ever_opened = False
        self._proven = False  # the open link has answered a request
        self._outage = False  # logged once per outage; ends when the port answers again
        self._port_error = ""
        self._port_reason = ""  # the OS's words for why the port is not open
        self._port_down = True
        self._last_unanswered = False  # the last request on the wire got no valid reply
        self._silent_boards: set[str] = set()
        self._bus_silent = False
        self._log = log.bind(bus=self.name)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start keeping the port open; returns at once (it opens in the background)."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_open(), name=f"bus {self.name} port")

    async def wait_open(self, within: float) -> bool:
        """Wait until the port is open; ``False`` if it is not within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._opened.wait()
        except TimeoutError:
            return False
        return True

    @property
    def is_open(self) -> bool:
        return self._link is not None

    def wire_ahead(self) -> float:
        """Seconds the line stays taken before a new request may go out: what is left
        of the transaction on the wire (its request and expected reply at the baud
        rate, then the silence between frames), or of the silence after the last one.
        Physics, not software: benchmarks report latency over it."""
        now = asyncio.get_running_loop().time()
        silence = max(0.0, self._quiet_until - now)
        current, holder = self._current, self._holder
        if current is not None:
            ex = current.exchange
            wire = wire_time(len(ex.request) + ex.reply_len, self.settings.baudrate)
            return max(0.0, current.timing.written + wire + self._gap - now)
        if holder is not None:  # its turn came; it keeps the silence, then goes out
            wire = wire_time(len(holder.request) + holder.reply_len, self.settings.baudrate)
            return silence + wire + self._gap
        return silence

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep :meth:`close` waiting while a multi-step operation that must finish runs
        (a software-timed pulse must switch its relay off)."""
        self._holds += 1
        self._holds_done.clear()
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0:
                self._holds_done.set()

    async def close(self, drain_s: float | None = None) -> None:
        """Close the port after draining: polls are refused at once; unlocks, control
        writes and holds get up to ``drain_s`` to finish. Then the transaction on the
        wire and every waiting caller get :class:`BusClosed`."""
        if self._closed:
            return
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.DRAIN_S if drain_s is None else drain_s):
                await self._holds_done.wait()
                await self._turn.idle.wait()
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        link = self._link
        self._drop_link(BusClosed(f"bus {self.name} closed", bus=self.name))
        if link is not None:  # the tty is closed in an executor: wait for it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await link.closed.wait()

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests
    async def transact(self, exchange: Exchange[F]) -> F | None:
        """Put ``exchange`` on the wire in its turn; its reply frame, or ``None`` if none is due.

        Raises :class:`ReplyTimeout`, :class:`BoardOffline`, :class:`PortUnavailable`,
        :class:`UnlockNotSent` or :class:`BusClosed`.
        """
        self._check_usable(exchange)
        health = self.health_of(exchange.board)
        attempts = self._attempts(exchange, health)
        for attempt in range(1, attempts + 1):
            await self._turn.acquire(exchange.priority)
            self._holder = exchange
            try:
                self._check_usable(exchange)  # things may have changed while it waited
                if exchange.precheck is not None and self._last_unanswered:
                    await self._precheck(exchange)
                result: F | None = await self._once(exchange, health)
            except ReplyTimeout as exc:
                if attempt == attempts:
                    self._record_failure(health, str(exc))
                    raise
                self._log.debug(
                    "bus_retry", board=exchange.board, what=exchange.what, attempt=attempt
                )
            else:
                return result
            finally:
                self._holder = None
                self._turn.release()
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempts(self, ex: Exchange[Any], health: BoardHealth) -> int:
        """How many tries ``ex`` gets; raises :class:`BoardOffline` for a refused read."""
        if ex.priority is Priority.UNLOCK:
            return 1  # never retried; and an authorised open goes even to an offline board
        if health.online or health.port_held:
            return self.settings.read_attempts if ex.priority is Priority.READ else 1
        now = asyncio.get_running_loop().time()
        if now < health.next_probe_at:
            health.refused_offline += 1
            raise BoardOffline(
                f"board {ex.board} on bus {self.name} is offline ({health.last_error}); "
                f"next probe in {health.next_probe_at - now:.1f} s",
                bus=self.name,
                board=ex.board,
            )
        health.next_probe_at = now + self.settings.offline_probe_s
        return 1  # a probe of an offline board costs one timeout, no more

    async def _precheck(self, ex: Exchange[Any]) -> None:
        """The last request went unanswered: make sure the board answers now, before an
        unlock goes out, so the unlock cannot sit in a stalled link and fire later."""
        assert ex.precheck is not None
        try:
            await self._once(ex.precheck, self.health_of(ex.board))
        except ReplyTimeout as exc:
            raise UnlockNotSent(
                f"board {ex.board} on bus {self.name}: {ex.what} not sent: the board did not "
                "answer a status read first (the bus had a request go unanswered); safe to "
                "retry",
                bus=self.name,
                board=ex.board,
            ) from exc

    def _check_usable(self, exchange: Exchange[Any]) -> None:
        if self._closed or (self._closing and exchange.priority is Priority.READ):
            raise BusClosed(f"bus {self.name} closed", bus=self.name, board=exchange.board)
        if self._port_down:
            self._hold_for_port(self.health_of(exchange.board))
            raise PortUnavailable(
                f"bus {self.name}: port {self.settings.port} is not open "
                f"(cannot open: {self._port_reason or 'not opened yet'}); "
                "reopening in the background",
                bus=self.name,
                board=exchange.board,
            )

    def _hold_for_port(self, health: BoardHealth) -> None:
        """The port is not open, so the board cannot be reached: not online, and the
        port's error is why (the bus logged it once, with its hint)."""
        reason = self._port_reason or "not opened yet"
        health.last_error = f"port {self.settings.port} not open: {reason}"
        if health.online:
            health.online = False
            health.port_held = True

    def health_of(self, board: str) -> BoardHealth:
        health = self.health.get(board)
        if health is None:
            health = self.health[board] = BoardHealth(board)
        return health

    def snapshot(self) -> dict[str, Any]:
        return {
            "bus": self.name,
            "port": self.settings.port,
            "open": self.is_open,
            "port_error": "" if self.is_open else self._port_error,
            "silent": self._bus_silent,
            "opens": self.counters.opens,
            "port_losses": self.counters.port_losses,
            "rx_bytes": self.counters.rx_bytes,
            "tx_bytes": self.counters.tx_bytes,
            "stray_bytes": self.counters.stray_bytes,
            "unmatched_frames": self.counters.unmatched_frames,
            "waiting": self._turn.waiting,
            "boards": [h.snapshot() for h in self.health.values()],
        }

    # ------------------------------------------------------------------ one transaction
    async def _once(self, ex: Exchange[Any], health: BoardHealth) -> Any:
        loop = asyncio.get_running_loop()
        wait = self._quiet_until - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # the port may have gone, or the bus closed, while we kept the silence
        self._check_usable(ex)
        link = self._link
        transport = link.transport if link is not None else None
        if transport is None or transport.is_closing():
            raise PortUnavailable(
                f"bus {self.name}: port {self.settings.port} is closing",
                bus=self.name,
                board=ex.board,
            )
        baud = self.settings.baudrate
        health.requests += 1
        started = loop.time()
        tx_done = started + wire_time(len(ex.request), baud)
        timing = Timing(written=started)
        self.last_timing = timing
        if ex.decoder is None:
            transport.write(ex.request)
            timing.sent = loop.time()
            self.counters.tx_bytes += len(ex.request)
            hold = self._timeout + wire_time(ex.reply_len, baud) if ex.reply_len else 0.0
            self._quiet_until = max(self._quiet_until, tx_done + hold + self._gap)
            return None  # an unanswered write says nothing about the board's health
        waiter: asyncio.Future[Any] = loop.create_future()
        echo = len(ex.request) if self.settings.local_echo else 0
        inflight = _InFlight(ex, ex.decoder(), waiter, timing, echo)
        self._current = inflight
        transport.write(ex.request)
        timing.sent = loop.time()
        self.counters.tx_bytes += len(ex.request)
        self._quiet_until = max(self._quiet_until, tx_done + self._gap)
        budget = self._timeout + wire_time(len(ex.request) + ex.reply_len, baud)
        try:
            async with asyncio.timeout(budget):
                frame = await waiter
        except TimeoutError:
            health.timeouts += 1
            self._unanswered(ex.board)
            raise ReplyTimeout(
                f"board {ex.board} on bus {self.name}: no valid reply to {ex.what} "
                f"within {budget * 1000:.0f} ms",
                bus=self.name,
                board=ex.board,
            ) from None
        except asyncio.CancelledError:
            # the caller gave up, the board may still answer: keep the line free for it
            self._quiet_until = max(self._quiet_until, started + budget + self._gap)
            raise
        finally:
            self._current = None
            health.bad_frames += inflight.decoder.stats.bad_frames
        self._answered()
        self._record_ok(health, timing.matched - started, started)
        return frame

    # ------------------------------------------------------------------ health
    def _answered(self) -> None:
        self._proven = True
        self._last_unanswered = False
        self._silent_boards.clear()
        if self._bus_silent:
            self._bus_silent = False
            self._log.info("bus_answering")
        if self._outage:
            self._outage = False
            self._log.info("bus_port_recovered", port=self.settings.port)

    def _unanswered(self, board: str) -> None:
        self._last_unanswered = True
        self._silent_boards.add(board)
        known = {b for b, h in self.health.items() if h.replies}
        if not self._bus_silent and len(known) > 1 and known <= self._silent_boards:
            self._bus_silent = True
            self._log.error(
                "bus_silent",
                boards=sorted(self._silent_boards),
                hint="every board on this bus stopped answering: check the adapter or "
                "gateway, the A/B wires and termination, and the baud rate",
            )
            if self.is_tcp and self._link is not None:
                self._reset_link("every board fell silent")

    def _record_ok(self, health: BoardHealth, latency: float, now: float) -> None:
        health.replies += 1
        health.consecutive_failures = 0
        health.last_latency_s = latency
        health.max_latency_s = max(health.max_latency_s, latency)
        health.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += 1
        health.latency_sum_s += latency
        health.last_ok_at = now
        health.last_error = ""
        if not health.online:
            health.online = True
            if not health.port_held:
                self._log.info("board_online", board=health.board)
        health.port_held = False

    def _record_failure(self, health: BoardHealth, error: str) -> None:
        health.consecutive_failures += 1
        health.last_error = error
        if (health.online or health.port_held) and (
            health.consecutive_failures >= self.settings.offline_after
        ):
            health.online = health.port_held = False
            health.next_probe_at = asyncio.get_running_loop().time() + self.settings.offline_probe_s
            quiet = self._bus_silent  # the bus already said it; don't blame each board
            (self._log.debug if quiet else self._log.error)(
                "board_offline",
                board=health.board,
                failures=health.consecutive_failures,
                error=error,
                hint="check the board's power, address switches and its bus wiring; "
                f"it is probed again every {self.settings.offline_probe_s:g} s",
            )
        else:
            self._log.debug("board_request_failed", board=health.board, error=error)

    # ------------------------------------------------------------------ port
    async def _keep_open(self) -> None:
        """Open the port, and reopen it with jittered exponential backoff when it fails
        to open or is lost. The backoff resets only when a link that answered is lost,
        so a gateway that accepts and drops at once is not hammered."""
        backoff = self.settings.reopen_min_s
        while True:
            try:
                await self._open()
            except PortUnavailable as exc:
                self._port_failed(exc)
            else:
                self._lost.clear()
                await self._lost.wait()
                if self._proven:
                    backoff = self.settings.reopen_min_s
            delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, self.settings.reopen_max_s)
            await asyncio.sleep(delay)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        port = self.settings.port
        transport: asyncio.BaseTransport
        link: asyncio.BaseProtocol
        try:
            if self.is_tcp:
                host, _, tcp_port = port.removeprefix("tcp://").rpartition(":")
                async with asyncio.timeout(max(self.settings.reopen_max_s, 1.0)):
                    transport, link = await loop.create_connection(
                        lambda: _Link(self), host.strip("[]"), int(tcp_port)
                    )
                self._tune_tcp(transport)
            else:
                transport, link = await serial_asyncio_fast.create_serial_connection(
                    loop,
                    lambda: _Link(self),
                    port,
                    baudrate=self.settings.baudrate,
                    exclusive=True,
                )
                try:
                    if transport.serial is not None:
                        transport.serial.reset_input_buffer()  # bytes from before we owned it
                except (OSError, serial.SerialException):
                    transport.abort()
                    raise
        except serial.SerialException as exc:
            if "exclusively lock" in str(exc):
                raise PortBusy(
                    f"bus {self.name}: {port} is held by another process; only lockerd may "
                    "own a bus (lockerctl talks to the daemon instead)",
                    bus=self.name,
                ) from exc
            raise PortUnavailable(
                f"bus {self.name}: cannot open {port}: {exc}", bus=self.name
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise PortUnavailable(
                f"bus {self.name}: cannot open {port}: {exc or 'timed out'}", bus=self.name
            ) from exc
        assert isinstance(link, _Link)
        assert isinstance(transport, asyncio.Transport)
        link.transport = transport  # connection_made may still be pending (call_soon)
        self._link = link
        self.counters.opens += 1
        self._quiet_until = loop.time() + self._gap
        self._last_unanswered = False
        self._proven = False
        if not self._ever_opened:
            self._log.info("bus_port_open", port=port, baudrate=self.settings.baudrate)
        else:
            self._log.debug("bus_port_reopened", port=port)
        self._ever_opened = True
        self._port_down = False
        self._opened.set()

    def _tune_tcp(self, transport: asyncio.BaseTransport) -> None:
        """Find a dead gateway in seconds, not the kernel's default of minutes."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        timeout_ms = int(max(1000.0, 4 * self.settings.timeout_ms))
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)

    def _reset_link(self, reason: str) -> None:
        """Tear the TCP link down with a reset, so bytes queued towards the gateway are
        discarded rather than delivered late; the keeper reconnects."""
        link = self._link
        transport = link.transport if link is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if link is not None:
            self._on_lost(link, ConnectionResetError(f"reset by us: {reason}"))

    def _port_failed(self, exc: PortUnavailable) -> None:
        self._port_down = True
        self._port_error = str(exc)
        # the OS's words without the bus and port the board's error names anyway
        self._port_reason = (
            str(exc)
            .removeprefix(f"bus {self.name}: cannot open {self.settings.port}: ")
            .removeprefix(f"bus {self.name}: ")
        )
        errno_ = getattr(exc.__cause__, "errno", None)
        if isinstance(errno_, int) and not isinstance(exc, PortBusy):
            # pyserial's own words repeat the path: the OS's only
            self._port_reason = f"[Errno {errno_}] {os.strerror(errno_)}"
        self._opened.clear()
        for health in self.health.values():
            self._hold_for_port(health)
        if self._outage:
            self._log.debug("bus_port_still_unavailable", error=str(exc))
            return
        self._outage = True
        hint = (
            "another process holds the port: stop it (only lockerd may own a bus)"
            if isinstance(exc, PortBusy)
            else "check the adapter is plugged in and the path (prefer /dev/serial/by-id), "
            "or that the gateway is reachable"
        )
        self._log.error("bus_port_unavailable", port=self.settings.port, error=str(exc), hint=hint)

    def _on_data(self, link: _Link, data: bytes) -> None:
        if link is not self._link:
            return
        now = asyncio.get_running_loop().time()
        self.counters.rx_bytes += len(data)
        self._quiet_until = now + self._gap
        cur = self._current
        if cur is None or cur.waiter.done():
            self.counters.stray_bytes += len(data)
            return
        if cur.echo_left:  # an adapter that hears its own transmitter
            skip = min(cur.echo_left, len(data))
            cur.echo_left -= skip
            self.counters.echo_bytes += skip
            data = data[skip:]
            if not data:
                return
        if not cur.timing.first_byte:
            cur.timing.first_byte = now
        for frame in cur.decoder.feed(data):
            if not cur.waiter.done() and cur.exchange.match(frame):
                cur.timing.matched = now
                cur.waiter.set_result(frame)
            else:
                self.counters.unmatched_frames += 1
                self._log.debug("bus_unmatched_frame", during=cur.exchange.board, frame=repr(frame))

    def _on_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return
        self.counters.port_losses += 1
        reason = str(exc) if exc else "closed by the other end"
        self._drop_link(PortUnavailable(f"bus {self.name}: port lost: {reason}", bus=self.name))
        self._port_down = True
        self._port_error = reason
        self._port_reason = f"lost: {reason}"
        self._opened.clear()
        self._lost.set()
        for health in self.health.values():
            self._hold_for_port(health)
        if self._outage:
            self._log.debug("bus_port_lost_again", error=reason)
            return
        self._outage = True
        self._log.error(
            "bus_port_lost",
            port=self.settings.port,
            error=reason,
            hint="adapter unplugged or gateway gone; reopening with backoff",
        )

    def _drop_link(self, error: Exception) -> None:
        link, self._link = self._link, None
        cur, self._current = self._current, None
        if cur is not None and not cur.waiter.done():
            cur.waiter.set_exception(error)
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.abort()
