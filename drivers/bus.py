"""One owner for one serial line.

A :class:`Bus` owns one port (a tty, or ``tcp://host:port`` for a serial-over-TCP
gateway) and is the only thing that writes to it. Callers hand it
:class:`Exchange` objects (a request, and how to recognise its reply) and await
the reply. The bus guarantees:

- exactly one request in flight, ever (RS-485 is half duplex with one master):
  callers take turns through a priority mutex and each runs its own transaction,
  so an idle bus costs no task switch;
- unlocks go before control writes, which go before polls;
- a configurable silence (``gap_ms``) after the last byte on the line before the
  next request, counting the wire time of frames still being clocked out;
- a per-request timeout that adds the frames' wire time at the line speed to
  the board's allowance (``timeout_ms``);
- a reply is taken only if it decodes with a good checksum *and* matches the
  request (address, command, length); anything else is counted and dropped, so a
  late reply is never taken for the answer to the next request;
- reads are retried (``read_attempts``); unlocks never are: the caller reads the
  door and decides;
- per-board health: after ``offline_after`` failed requests a board is offline,
  its reads fail at once (:class:`BoardOffline`) without using the wire, and it is
  probed once every ``offline_probe_s``; so a dead board costs the others almost
  no bus time. Its error is logged once, then at debug level until it recovers;
- after an I/O error or an unplugged adapter the port is reopened with jittered
  exponential backoff; meanwhile requests fail at once with
  :class:`PortUnavailable`, they do not hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

import serial
import serial_asyncio_fast
import structlog

from drivers.errors import (
    BoardOffline,
    BusClosed,
    PortBusy,
    PortUnavailable,
    ReplyTimeout,
)
from drivers.framing import StreamDecoder, frame_silence, wire_time
from drivers.settings import BusSettings

F = TypeVar("F")

log = structlog.get_logger("lockerd.bus")


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
    of the timeout. ``board`` names the board for health and logs.
    """

    board: str
    request: bytes
    priority: Priority
    decoder: Callable[[], StreamDecoder[F]] | None = None
    match: Callable[[F], bool] = _match_any
    reply_len: int = 0
    what: str = "request"


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
    unmatched_frames: int = 0
    last_latency_s: float = 0.0
    max_latency_s: float = 0.0
    last_ok_at: float | None = None
    last_error: str = ""
    next_probe_at: float = 0.0

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
            "unmatched_frames": self.unmatched_frames,
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


class _PriorityMutex:
    """One holder at a time; waiters served by (priority, arrival).

    Uncontended, :meth:`acquire` returns at once without a task switch.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    async def acquire(self, priority: int) -> None:
        if not self._held and not self._waiters:
            self._held = True
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


@dataclass(slots=True)
class BusCounters:
    opens: int = 0
    port_losses: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    stray_bytes: int = field(default=0)


class _Link(asyncio.Protocol):
    """asyncio protocol that forwards the port's events to its bus."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._bus._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._bus._on_lost(self, exc)


class Bus:
    """The single owner of one serial line; see the module docstring."""

    def __init__(self, settings: BusSettings, *, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.port
        self.health: dict[str, BoardHealth] = {}
        self.counters = BusCounters()
        # never less than the 3.5 character silence that ends a frame (Modbus RTU)
        self._gap = max(settings.gap_ms / 1000, frame_silence(settings.baudrate))
        self._timeout = settings.timeout_ms / 1000
        self._turn = _PriorityMutex()
        self._link: _Link | None = None
        self._current: _InFlight | None = None
        self._lost = asyncio.Event()
        self.last_timing: Timing | None = None
        self._quiet_until = 0.0
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._port_down_since: float | None = None
        self._port_error = ""
        self._opened = asyncio.Event()
        self._log = log.bind(bus=self.name)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker; returns at once (the port opens in the background)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._keep_open(), name=f"bus {self.name} port")

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

    async def close(self) -> None:
        """Close the port. The transaction on the wire and every waiting caller get
        :class:`BusClosed`."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._drop_link(BusClosed(f"bus {self.name} closed", bus=self.name))

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests
    async def transact(self, exchange: Exchange[F]) -> F | None:
        """Put ``exchange`` on the wire in its turn; its reply frame, or ``None`` if none is due.

        Raises :class:`ReplyTimeout`, :class:`BoardOffline`, :class:`PortUnavailable`
        or :class:`BusClosed`.
        """
        self._check_usable(exchange)
        await self._turn.acquire(exchange.priority)
        try:
            self._check_usable(exchange)  # things may have changed while it waited
            result: F | None = await self._execute(exchange)
            return result
        finally:
            self._turn.release()

    def _check_usable(self, exchange: Exchange[Any]) -> None:
        if self._closed:
            raise BusClosed(f"bus {self.name} closed", bus=self.name, board=exchange.board)
        if self._port_down_since is not None:
            raise PortUnavailable(
                f"bus {self.name}: port {self.settings.port} is not open "
                f"({self._port_error}); reopening in the background",
                bus=self.name,
                board=exchange.board,
            )

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
            "port_error": self._port_error,
            "opens": self.counters.opens,
            "port_losses": self.counters.port_losses,
            "rx_bytes": self.counters.rx_bytes,
            "tx_bytes": self.counters.tx_bytes,
            "stray_bytes": self.counters.stray_bytes,
            "waiting": self._turn.waiting,
            "boards": [h.snapshot() for h in self.health.values()],
        }

    # ------------------------------------------------------------------ worker
    async def _keep_open(self) -> None:
        """Open the port, and reopen it with jittered exponential backoff when lost."""
        backoff = self.settings.reopen_min_s
        while True:
            if self._link is None:
                try:
                    await self._open()
                except PortUnavailable as exc:
                    self._port_failed(exc)
                    delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
                    backoff = min(backoff * 2, self.settings.reopen_max_s)
                    await asyncio.sleep(delay)
                    continue
                backoff = self.settings.reopen_min_s
            self._lost.clear()
            await self._lost.wait()

    async def _execute(self, ex: Exchange[Any]) -> Any:
        loop = asyncio.get_running_loop()
        health = self.health_of(ex.board)
        attempts = self.settings.read_attempts if ex.priority is Priority.READ else 1
        if not health.online and ex.priority is Priority.READ:
            now = loop.time()
            if now < health.next_probe_at:
                health.refused_offline += 1
                raise BoardOffline(
                    f"board {ex.board} on bus {self.name} is offline ({health.last_error}); "
                    f"next probe in {health.next_probe_at - now:.1f} s",
                    bus=self.name,
                    board=ex.board,
                )
            attempts = 1  # a probe of an offline board costs one timeout, no more
            health.next_probe_at = now + self.settings.offline_probe_s
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(ex, health)
            except ReplyTimeout as exc:
                if attempt == attempts:
                    self._record_failure(health, str(exc))
                    raise
                self._log.debug(
                    "bus_retry", board=ex.board, what=ex.what, attempt=attempt, error=str(exc)
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, ex: Exchange[Any], health: BoardHealth) -> Any:
        link = self._link
        if link is None or link.transport is None:
            raise PortUnavailable(
                f"bus {self.name}: port {self.settings.port} lost", bus=self.name, board=ex.board
            )
        loop = asyncio.get_running_loop()
        wait = self._quiet_until - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        baud = self.settings.baudrate
        health.requests += 1
        started = loop.time()
        tx_done = started + wire_time(len(ex.request), baud)
        timing = Timing(written=started)
        if ex.decoder is None:
            link.transport.write(ex.request)
            timing.sent = loop.time()
            self.counters.tx_bytes += len(ex.request)
            self._quiet_until = max(self._quiet_until, tx_done + self._gap)
            self.last_timing = timing
            return None  # an unanswered write says nothing about the board's health
        waiter: asyncio.Future[Any] = loop.create_future()
        inflight = _InFlight(ex, ex.decoder(), waiter, timing)
        self._current = inflight
        link.transport.write(ex.request)
        timing.sent = loop.time()
        self.counters.tx_bytes += len(ex.request)
        self._quiet_until = max(self._quiet_until, tx_done + self._gap)
        budget = self._timeout + wire_time(len(ex.request) + ex.reply_len, baud)
        try:
            async with asyncio.timeout(budget):
                frame = await waiter
        except TimeoutError:
            health.timeouts += 1
            raise ReplyTimeout(
                f"board {ex.board} on bus {self.name}: no valid reply to {ex.what} "
                f"within {budget * 1000:.0f} ms",
                bus=self.name,
                board=ex.board,
            ) from None
        finally:
            self._current = None
            health.bad_frames += inflight.decoder.stats.bad_frames
        self.last_timing = inflight.timing
        self._record_ok(health, inflight.timing.matched - started, started)
        return frame

    # ------------------------------------------------------------------ health
    def _record_ok(self, health: BoardHealth, latency: float, now: float) -> None:
        health.replies += 1
        health.consecutive_failures = 0
        health.last_latency_s = latency
        health.max_latency_s = max(health.max_latency_s, latency)
        health.last_ok_at = now
        if not health.online:
            health.online = True
            self._log.info("board_online", board=health.board)

    def _record_failure(self, health: BoardHealth, error: str) -> None:
        health.consecutive_failures += 1
        health.last_error = error
        if health.online and health.consecutive_failures >= self.settings.offline_after:
            health.online = False
            health.next_probe_at = asyncio.get_running_loop().time() + self.settings.offline_probe_s
            self._log.error(
                "board_offline",
                board=health.board,
                failures=health.consecutive_failures,
                error=error,
                hint="check the board's power, address switches and bus wiring; "
                "it is probed again every "
                f"{self.settings.offline_probe_s:g} s",
            )
        else:
            self._log.debug("board_request_failed", board=health.board, error=error)

    # ------------------------------------------------------------------ port
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        port = self.settings.port
        transport: asyncio.BaseTransport
        link: asyncio.BaseProtocol
        try:
            if port.startswith("tcp://"):
                host, _, tcp_port = port.removeprefix("tcp://").rpartition(":")
                async with asyncio.timeout(max(self.settings.reopen_max_s, 1.0)):
                    transport, link = await loop.create_connection(
                        lambda: _Link(self), host.strip("[]"), int(tcp_port)
                    )
            else:
                transport, link = await serial_asyncio_fast.create_serial_connection(
                    loop,
                    lambda: _Link(self),
                    port,
                    baudrate=self.settings.baudrate,
                    exclusive=True,
                )
                if transport.serial is not None:
                    transport.serial.reset_input_buffer()  # bytes from before we owned it
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
        if self._port_down_since is not None or self.counters.opens == 1:
            self._log.info("bus_port_open", port=port, baudrate=self.settings.baudrate)
        self._port_down_since = None
        self._port_error = ""
        self._opened.set()

    def _port_failed(self, exc: PortUnavailable) -> None:
        first = self._port_down_since is None
        if first:
            self._port_down_since = asyncio.get_running_loop().time()
        self._port_error = str(exc)
        self._opened.clear()
        if first:
            self._log.error(
                "bus_port_unavailable",
                port=self.settings.port,
                error=str(exc),
                hint="check the adapter is plugged in and the path (prefer /dev/serial/by-id)",
            )
        else:
            self._log.debug("bus_port_still_unavailable", error=str(exc))

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
        if not cur.timing.first_byte:
            cur.timing.first_byte = now
        for frame in cur.decoder.feed(data):
            if not cur.waiter.done() and cur.exchange.match(frame):
                cur.timing.matched = now
                cur.waiter.set_result(frame)
            else:
                health = self.health_of(cur.exchange.board)
                health.unmatched_frames += 1
                self._log.debug("bus_unmatched_frame", board=cur.exchange.board, frame=repr(frame))

    def _on_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return
        self.counters.port_losses += 1
        reason = str(exc) if exc else "closed by the other end"
        self._log.error(
            "bus_port_lost",
            port=self.settings.port,
            error=reason,
            hint="adapter unplugged or gateway gone; reopening with backoff",
        )
        self._drop_link(PortUnavailable(f"bus {self.name}: port lost: {reason}", bus=self.name))
        self._port_down_since = asyncio.get_running_loop().time()
        self._port_error = reason
        self._opened.clear()
        self._lost.set()

    def _drop_link(self, error: Exception) -> None:
        link, self._link = self._link, None
        cur, self._current = self._current, None
        if cur is not None and not cur.waiter.done():
            cur.waiter.set_exception(error)
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.abort()
