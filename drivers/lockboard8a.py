"""Wire codec for the generic 0x8A/0x80 RS-485 lock boards (kind ``lockboard-8a``).

Pure code: bytes in, frames out, and back. No I/O, no clocks.

Every request is 5 bytes ``HEAD BOARD LOCK FUNC BCC``; BCC is the XOR of the bytes
before it, so the XOR of a whole valid frame is 0. Board (DIP address 1..31) and
lock (1-based, 0 = all locks) are plain binary. Replies:

- unlock (and open-all) reply ``8A BB LL SS BCC``, about 0.5-1 s after the request;
- query-one reply ``80 BB LL SS BCC``;
- query-all reply ``80 BB S1 .. Sn 33 BCC``, n packed status bytes fixed by the firmware.

Where the sources disagree the codec takes a setting (:class:`Codec8aSettings`):
polarity of the status (:class:`Polarity`), the number of packed status bytes and
their order (:class:`ByteOrder`).

The echo trap: with the common polarity the "still locked" unlock reply
``8A 01 01 11 9B`` is byte-identical to the request, so an adapter echoing its own
transmission looks exactly like a board saying "still locked". :func:`is_echo`
tells whether a received frame equals the request just sent; a driver must never
take such a frame as proof the door opened (only a status read afterwards says so).

The XOR checksum is weak (identical status bytes cancel out), so the decoders also
check length, header, board range, function/trailer bytes, not the BCC alone.

Byte-exact references are in ``shared/design/HARDWARE.md`` and in the tests.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Final, Generic, TypeAlias, TypeVar

from lockerd.drivers.errors import EncodeError, FrameError
from lockerd.drivers.framing import BufferedDecoder

HEAD_UNLOCK: Final = 0x8A
HEAD_QUERY: Final = 0x80
HEAD_UNLOCK_MANY: Final = 0x90
HEAD_KEEP_ON: Final = 0x9A
HEAD_KEEP_OFF: Final = 0x9B
FUNC_UNLOCK: Final = 0x11
FUNC_QUERY: Final = 0x33
QUERY_ALL_TRAILER: Final = 0x33

STATUS_SET: Final = 0x11
STATUS_CLEAR: Final = 0x00

ALL_LOCKS: Final = 0
MIN_BOARD: Final = 1
MAX_BOARD: Final = 31  # five DIP switches weighted 1, 2, 4, 8, 16
MAX_WIRE_BOARD: Final = 0x1F  # what a decoder accepts (DIP all off = 0 is possible)
MAX_STATUS_BYTES: Final = 7  # the 50-channel board
MAX_LOCK: Final = MAX_STATUS_BYTES * 8
UNLOCK_MANY_BYTES: Final = 3
REQUEST_LEN: Final = 5
REPLY_LEN: Final = 5
DEFAULT_STATUS_BYTES: Final = 3  # common 8- to 24-channel boards


def bcc(data: bytes | bytearray | memoryview) -> int:
    """XOR of ``data``."""
    return reduce(xor, data, 0)


def _seal(body: bytes) -> bytes:
    return body + bytes((bcc(body),))


class Polarity(enum.Enum):
    """What a status ``11`` (or a set bit) means; the vendor says it depends on wiring."""

    SET_IS_CLOSED = "set-is-closed"  # common: the "still locked" reply equals the request
    SET_IS_OPEN = "set-is-open"


class ByteOrder(enum.Enum):
    """Order of the packed status bytes of the query-all reply (bit 0 = lowest channel)."""

    HIGH_FIRST = "high-first"  # most sources: channels 1-8 in the last byte
    LOW_FIRST = "low-first"  # one 50-channel project: S1 holds channels 1-8


@dataclass(frozen=True, slots=True)
class Codec8aSettings:
    """Settings where the sources disagree."""

    polarity: Polarity = Polarity.SET_IS_CLOSED
    status_bytes: int = DEFAULT_STATUS_BYTES
    order: ByteOrder = ByteOrder.HIGH_FIRST

    def __post_init__(self) -> None:
        if not 1 <= self.status_bytes <= MAX_STATUS_BYTES:
            raise ValueError(f"status_bytes {self.status_bytes} out of range 1..{MAX_STATUS_BYTES}")


# ======================================================================================
# Frames
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Request:
    """``HEAD BOARD LOCK FUNC BCC`` (unlock, open all, query, keep-on/off)."""

    head: int
    board: int
    lock: int
    func: int

    def encode(self) -> bytes:
        return _seal(bytes((self.head, self.board, self.lock, self.func)))


@dataclass(frozen=True, slots=True)
class UnlockManyRequest:
    """``90 BB S S S BCC``: unlock the locks set in ``bitmap`` (packed like query-all)."""

    board: int
    bitmap: bytes

    def encode(self) -> bytes:
        return _seal(bytes((HEAD_UNLOCK_MANY, self.board)) + self.bitmap)


AnyRequest: TypeAlias = Request | UnlockManyRequest


def _closed(status_set: bool, polarity: Polarity) -> bool:
    return status_set == (polarity is Polarity.SET_IS_CLOSED)


def _status_closed(status: int, polarity: Polarity) -> bool | None:
    if status == STATUS_SET:
        return _closed(True, polarity)
    if status == STATUS_CLEAR:
        return _closed(False, polarity)
    return None


@dataclass(frozen=True, slots=True)
class UnlockReply:
    """``8A BB LL SS BCC``: the late answer to an unlock (lock 0: to open-all).

    It may be an echo of the request: check :func:`is_echo` before believing it.
    """

    board: int
    lock: int
    status: int

    def encode(self) -> bytes:
        return _seal(bytes((HEAD_UNLOCK, self.board, self.lock, self.status)))

    def closed(self, polarity: Polarity = Polarity.SET_IS_CLOSED) -> bool | None:
        """Lock still closed per the reply; None for a status other than 00/11."""
        return _status_closed(self.status, polarity)


@dataclass(frozen=True, slots=True)
class LockStatus:
    """``80 BB LL SS BCC``: the status of one lock."""

    board: int
    lock: int
    status: int

    def encode(self) -> bytes:
        return _seal(bytes((HEAD_QUERY, self.board, self.lock, self.status)))

    def closed(self, polarity: Polarity = Polarity.SET_IS_CLOSED) -> bool | None:
        """Lock closed per the reply; None for a status other than 00/11."""
        return _status_closed(self.status, polarity)


@dataclass(frozen=True, slots=True)
class AllStatus:
    """``80 BB S1 .. Sn 33 BCC``: packed status bits of every channel, raw bytes as sent."""

    board: int
    status: bytes

    def encode(self) -> bytes:
        return _seal(bytes((HEAD_QUERY, self.board)) + self.status + bytes((QUERY_ALL_TRAILER,)))

    def bits(self, order: ByteOrder = ByteOrder.HIGH_FIRST) -> tuple[bool, ...]:
        """Raw bit per channel, channel 1 first (8 per status byte; unwired read 0)."""
        data = self.status[::-1] if order is ByteOrder.HIGH_FIRST else self.status
        return tuple(bool((data[i // 8] >> (i % 8)) & 1) for i in range(8 * len(data)))

    def closed(
        self,
        polarity: Polarity = Polarity.SET_IS_CLOSED,
        order: ByteOrder = ByteOrder.HIGH_FIRST,
    ) -> tuple[bool, ...]:
        """Closed flag per channel, channel 1 first."""
        return tuple(_closed(bit, polarity) for bit in self.bits(order))


Reply: TypeAlias = UnlockReply | LockStatus | AllStatus


def pack_status(bits: Iterable[bool], nbytes: int, order: ByteOrder) -> bytes:
    """Channel bits (channel 1 first) packed into ``nbytes`` in the given order."""
    out = bytearray(nbytes)
    for i, bit in enumerate(bits):
        if i >= 8 * nbytes:
            raise EncodeError(f"{i + 1} channels do not fit in {nbytes} status bytes")
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out[::-1]) if order is ByteOrder.HIGH_FIRST else bytes(out)


def is_echo(received: Request | Reply | UnlockManyRequest | bytes, sent: AnyRequest) -> bool:
    """True when ``received`` is byte-identical to the request just ``sent``.

    Such a frame is either the adapter echoing our own transmission or, with the
    common polarity, the board's "still locked" unlock reply: the two cannot be told
    apart on the wire. A driver must never count it as a successful unlock; it reads
    the door status afterwards. (A query echo decodes as a status ``33``, which
    :meth:`LockStatus.closed` reports as None.)
    """
    raw = received if isinstance(received, bytes) else received.encode()
    return raw == sent.encode()


# ======================================================================================
# Encoders
# ======================================================================================


def _board(board: int) -> int:
    if not MIN_BOARD <= board <= MAX_BOARD:
        raise EncodeError(f"lock board address {board} out of range {MIN_BOARD}..{MAX_BOARD}")
    return board


def _lock(lock: int, channels: int) -> int:
    if not 1 <= channels <= MAX_LOCK:
        raise EncodeError(f"channel count {channels} out of range 1..{MAX_LOCK}")
    if not 1 <= lock <= channels:
        raise EncodeError(f"lock {lock} out of range 1..{channels} (0 = all locks)")
    return lock


def unlock(board: int, lock: int, *, channels: int = MAX_LOCK) -> Request:
    """Unlock one lock, e.g. lock 1 of board 1: ``8A 01 01 11 9B``. Answered ~0.5-1 s later."""
    return Request(HEAD_UNLOCK, _board(board), _lock(lock, channels), FUNC_UNLOCK)


def open_all(board: int) -> Request:
    """Open every lock of a board, e.g. ``8A 01 00 11 9A`` (pulsed in turn, answered late)."""
    return Request(HEAD_UNLOCK, _board(board), ALL_LOCKS, FUNC_UNLOCK)


def query(board: int, lock: int, *, channels: int = MAX_LOCK) -> Request:
    """Query one lock, e.g. ``80 01 01 33 B3``; answered by a :class:`LockStatus`."""
    return Request(HEAD_QUERY, _board(board), _lock(lock, channels), FUNC_QUERY)


def query_all(board: int) -> Request:
    """Query every lock, e.g. ``80 01 00 33 B2``; answered by an :class:`AllStatus`."""
    return Request(HEAD_QUERY, _board(board), ALL_LOCKS, FUNC_QUERY)


def keep_on(board: int, lock: int, *, channels: int = MAX_LOCK) -> Request:
    """Keep a magnetic lock powered: ``9A BB LL 11 BCC`` (not on every board).

    HARDWARE.md names the ``9A``/``9B`` pair but not its bytes after the header: this
    is the family's 5-byte form, unverified on hardware; check a board's own protocol
    text before relying on it."""
    return Request(HEAD_KEEP_ON, _board(board), _lock(lock, channels), FUNC_UNLOCK)


def keep_off(board: int, lock: int, *, channels: int = MAX_LOCK) -> Request:
    """End keep-on of a magnetic lock: ``9B BB LL 11 BCC`` (not on every board; the
    same caveat as :func:`keep_on`)."""
    return Request(HEAD_KEEP_OFF, _board(board), _lock(lock, channels), FUNC_UNLOCK)


def unlock_many(
    board: int, locks: Iterable[int], *, order: ByteOrder = ByteOrder.HIGH_FIRST
) -> UnlockManyRequest:
    """Unlock several locks (1..24) from a bitmap: ``90 BB S S S BCC`` (not on every board)."""
    bits = [False] * (8 * UNLOCK_MANY_BYTES)
    for lock in locks:
        bits[_lock(lock, 8 * UNLOCK_MANY_BYTES) - 1] = True
    return UnlockManyRequest(_board(board), pack_status(bits, UNLOCK_MANY_BYTES, order))


# ======================================================================================
# Incremental decoders
# ======================================================================================

F = TypeVar("F")

_NEED_MORE: Final = -1
_INVALID: Final = 0


class _XorFrameDecoder(BufferedDecoder, ABC, Generic[F]):
    """Incremental decoder for XOR-sealed frames starting with a known header byte.

    Accepts bytes in any chunking. Bytes that start no frame are skipped and
    counted; after a bad candidate the decoder resynchronises one byte further on.
    Never raises on input.
    """

    __slots__ = ()
    _heads: frozenset[int] = frozenset()

    @abstractmethod
    def _length(self, buf: bytearray, start: int) -> int:
        """Frame length for a candidate at ``start``, ``_NEED_MORE`` or ``_INVALID``."""

    @abstractmethod
    def _parse(self, raw: bytes) -> F:
        """A frame from checked raw bytes."""

    def _check(self, raw: bytes) -> str:
        """Why a complete, checksum-valid candidate is implausible ("" if it is fine)."""
        return ""

    def feed(self, data: bytes) -> list[F]:
        buf = self._buf
        buf += data
        out: list[F] = []
        pos = 0
        heads = self._heads
        while pos < len(buf):
            if buf[pos] not in heads:
                self.stats.discarded_bytes += 1
                pos += 1
                continue
            length = self._length(buf, pos)
            if length == _NEED_MORE:
                break
            if length == _INVALID:
                self.stats.discarded_bytes += 1
                pos += 1
                continue
            end = pos + length
            if end > len(buf):
                break
            raw = bytes(buf[pos:end])
            why = "bad BCC" if bcc(raw) else self._check(raw)
            if why:
                self.stats.reject(f"{why} in {raw.hex(' ')}")
                self.stats.discarded_bytes += 1
                pos += 1
                continue
            out.append(self._parse(raw))
            self.stats.frames += 1
            pos = end
        del buf[:pos]
        return out


class ReplyDecoder(_XorFrameDecoder[Reply]):
    """Driver side: replies out of a byte stream.

    A ``80`` reply is a :class:`LockStatus` (5 bytes) or an :class:`AllStatus`
    (``status_bytes`` + 4 bytes); the wire cannot tell which, so the driver calls
    :meth:`expect` with the request it sends (default: query-one). ``8A`` replies
    are always 5 bytes. Whatever is fed, a frame equal to the request just sent may
    be an echo: see :func:`is_echo`.
    """

    __slots__ = ("_expect_all", "status_bytes")
    _heads = frozenset({HEAD_UNLOCK, HEAD_QUERY})

    def __init__(self, settings: Codec8aSettings | None = None) -> None:
        super().__init__()
        self.status_bytes = (settings or Codec8aSettings()).status_bytes
        self._expect_all = False

    def expect(self, request: AnyRequest) -> None:
        """The request just sent: a query-all makes ``80`` replies query-all replies."""
        self._expect_all = (
            isinstance(request, Request) and request.head == HEAD_QUERY and request.lock == 0
        )

    @property
    def expecting_all(self) -> bool:
        return self._expect_all

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 2:
            return _NEED_MORE
        if buf[start + 1] > MAX_WIRE_BOARD:
            return _INVALID
        if buf[start] == HEAD_QUERY and self._expect_all:
            return self.status_bytes + 4
        return REPLY_LEN

    def _check(self, raw: bytes) -> str:
        if raw[0] == HEAD_QUERY and self._expect_all:
            return "" if raw[-2] == QUERY_ALL_TRAILER else "no 33 trailer"
        return "" if raw[2] <= MAX_LOCK else "lock out of range"

    def _parse(self, raw: bytes) -> Reply:
        if raw[0] == HEAD_UNLOCK:
            return UnlockReply(raw[1], raw[2], raw[3])
        if self._expect_all:
            return AllStatus(raw[1], raw[2:-2])
        return LockStatus(raw[1], raw[2], raw[3])


class RequestDecoder(_XorFrameDecoder[AnyRequest]):
    """Board side (simulator): requests out of a byte stream."""

    __slots__ = ()
    _heads = frozenset({HEAD_UNLOCK, HEAD_QUERY, HEAD_KEEP_ON, HEAD_KEEP_OFF, HEAD_UNLOCK_MANY})

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 2:
            return _NEED_MORE
        if buf[start + 1] > MAX_WIRE_BOARD:
            return _INVALID
        if buf[start] == HEAD_UNLOCK_MANY:
            return UNLOCK_MANY_BYTES + 3
        return REQUEST_LEN

    def _check(self, raw: bytes) -> str:
        if raw[0] == HEAD_UNLOCK_MANY:
            return ""
        func = FUNC_QUERY if raw[0] == HEAD_QUERY else FUNC_UNLOCK
        if raw[3] != func:
            return f"function {raw[3]:02x}, expected {func:02x}"
        if raw[2] > MAX_LOCK:
            return "lock out of range"
        return ""

    def _parse(self, raw: bytes) -> AnyRequest:
        if raw[0] == HEAD_UNLOCK_MANY:
            return UnlockManyRequest(raw[1], raw[2:-1])
        return Request(raw[0], raw[1], raw[2], raw[3])


# ======================================================================================
# Whole-frame decoders (for a frame known to be complete, e.g. in tests and tools)
# ======================================================================================


def decode_reply(raw: bytes, *, query_all: bool = False, status_bytes: int = 3) -> Reply:
    """One complete reply; ``query_all`` says an ``80`` frame answers a query-all."""
    length = status_bytes + 4 if raw[:1] == bytes((HEAD_QUERY,)) and query_all else REPLY_LEN
    if len(raw) != length:
        raise FrameError(f"8A/80 reply: {len(raw)} bytes, expected {length}: {raw.hex(' ')}")
    if raw[0] not in (HEAD_UNLOCK, HEAD_QUERY):
        raise FrameError(f"8A/80 reply: header {raw[0]:02x}: {raw.hex(' ')}")
    if bcc(raw):
        raise FrameError(f"8A/80 reply: BCC {raw[-1]:02x}, computed {bcc(raw[:-1]):02x}")
    if raw[1] > MAX_WIRE_BOARD:
        raise FrameError(f"8A/80 reply: board {raw[1]} out of range: {raw.hex(' ')}")
    if raw[0] == HEAD_UNLOCK:
        return UnlockReply(raw[1], raw[2], raw[3])
    if query_all:
        if raw[-2] != QUERY_ALL_TRAILER:
            raise FrameError(f"8A/80 query-all reply: no 33 trailer: {raw.hex(' ')}")
        return AllStatus(raw[1], raw[2:-2])
    return LockStatus(raw[1], raw[2], raw[3])
