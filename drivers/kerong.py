"""Wire codecs for Kerong lock boards: KR-CU48 (48 locks) and KR-CU16 (16 locks + 16 IR).

Pure code: bytes in, frames out, and back. No I/O, no clocks.

Both protocols frame as ``STX ... ETX SUM`` where SUM is the low byte of the sum of
every byte before it. Frames have no transaction id, so a reply is matched to its
request by address, command and length (see :mod:`lockerd.drivers.bus`).

Byte-exact references are in ``shared/design/HARDWARE.md`` and in the tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from lockerd.drivers.errors import EncodeError, FrameError
from lockerd.drivers.framing import BufferedDecoder

STX: Final = 0x02
ETX: Final = 0x03

# --- KR-CU48 -------------------------------------------------------------------------
CU48_MAX_ADDRESS: Final = 0x09  # 0x0A addresses every board on the bus
CU48_BROADCAST: Final = 0x0A
CU48_CHANNELS: Final = 48
CU48_ALL_LOCKS: Final = 0x30
CU48_CMD_STATUS: Final = 0x50
CU48_CMD_UNLOCK: Final = 0x51
CU48_REPLY_STATUS: Final = 0x65
CU48_REQUEST_LEN: Final = 6
CU48_STATUS_LEN: Final = 12

# --- KR-CU16 -------------------------------------------------------------------------
CU16_MAX_ADDRESS: Final = 0x0F  # board number lives in the high nibble of ADDR
CU16_CHANNELS: Final = 16
CU16_CMD_STATUS: Final = 0x30
CU16_CMD_UNLOCK: Final = 0x31
CU16_CMD_STATUS_ALL: Final = 0x32
CU16_CMD_UNLOCK_ALL: Final = 0x33
CU16_CMD_UNLOCK_TIME: Final = 0x37
CU16_CMD_DELAYED_UNLOCK: Final = 0x39
CU16_REQUEST_CMDS: Final = frozenset(
    {
        CU16_CMD_STATUS,
        CU16_CMD_UNLOCK,
        CU16_CMD_STATUS_ALL,
        CU16_CMD_UNLOCK_ALL,
        CU16_CMD_UNLOCK_TIME,
        CU16_CMD_DELAYED_UNLOCK,
    }
)
CU16_REPLY_STATUS: Final = 0x35
CU16_REQUEST_LEN: Final = 5
CU16_STATUS_LEN: Final = 9


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Low byte of the sum of ``data``."""
    return sum(data) & 0xFF


def _seal(body: bytes) -> bytes:
    """``STX body ETX SUM``."""
    head = bytes((STX,)) + body + bytes((ETX,))
    return head + bytes((checksum(head),))


def _check_sealed(raw: bytes, length: int, what: str) -> None:
    if len(raw) != length:
        raise FrameError(f"{what}: {len(raw)} bytes, expected {length}: {raw.hex(' ')}")
    if raw[0] != STX or raw[-2] != ETX:
        raise FrameError(f"{what}: missing STX/ETX: {raw.hex(' ')}")
    if raw[-1] != checksum(raw[:-1]):
        raise FrameError(
            f"{what}: checksum {raw[-1]:02x}, computed {checksum(raw[:-1]):02x}: {raw.hex(' ')}"
        )


# ======================================================================================
# Frames
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Cu48Request:
    """``02 ADDR LOCK CMD 03 SUM``; LOCK is 0-based (0x00 = lock 1), 0x30 = all locks."""

    address: int
    lock: int
    command: int

    def encode(self) -> bytes:
        return _seal(bytes((self.address, self.lock, self.command)))


@dataclass(frozen=True, slots=True)
class Cu48Status:
    """``02 ADDR LOCK 65 b1..b6 03 SUM``: the hook-switch bitmap of all 48 locks.

    ``bitmap`` is the six raw data bytes; :meth:`bits` maps them to locks 1..48
    (b1 bit 0 = lock 1, see ADR 0004 for the sources).
    """

    address: int
    lock: int
    bitmap: bytes

    def encode(self) -> bytes:
        if len(self.bitmap) != 6:
            raise EncodeError("CU48 status bitmap is 6 bytes")
        return _seal(bytes((self.address, self.lock, CU48_REPLY_STATUS)) + self.bitmap)

    def bits(self) -> tuple[bool, ...]:
        """Raw bit per lock, lock 1 first (polarity is applied by the board driver)."""
        return tuple(bool((self.bitmap[i // 8] >> (i % 8)) & 1) for i in range(CU48_CHANNELS))


@dataclass(frozen=True, slots=True)
class Cu16Request:
    """``02 ADDR CMD 03 SUM``; ADDR = board << 4 | lock (lock 0-based)."""

    board: int
    lock: int
    command: int

    def encode(self) -> bytes:
        return _seal(bytes(((self.board << 4) | self.lock, self.command)))


@dataclass(frozen=True, slots=True)
class Cu16Status:
    """``02 ADDR 35 L1-8 L9-16 IR1-8 IR9-16 03 SUM``: lock bits then infrared occupancy bits."""

    board: int
    locks: bytes  # 2 bytes, lock 1 = bit 0 of the first
    infrared: bytes  # 2 bytes, sensor 1 = bit 0 of the first

    def encode(self) -> bytes:
        if len(self.locks) != 2 or len(self.infrared) != 2:
            raise EncodeError("CU16 status has 2 lock bytes and 2 infrared bytes")
        return _seal(bytes((self.board << 4, CU16_REPLY_STATUS)) + self.locks + self.infrared)

    def lock_bits(self) -> tuple[bool, ...]:
        return tuple(bool((self.locks[i // 8] >> (i % 8)) & 1) for i in range(CU16_CHANNELS))

    def infrared_bits(self) -> tuple[bool, ...]:
        return tuple(bool((self.infrared[i // 8] >> (i % 8)) & 1) for i in range(CU16_CHANNELS))


# ======================================================================================
# Encoders (what the driver sends)
# ======================================================================================


def _cu48_address(address: int) -> int:
    if not 0 <= address <= CU48_BROADCAST:
        raise EncodeError(
            f"CU48 address {address} out of range 0..{CU48_MAX_ADDRESS} "
            f"({CU48_BROADCAST} = every board)"
        )
    return address


def cu48_read_status(address: int) -> Cu48Request:
    """Read the status of all 48 locks, e.g. board 0: ``02 00 00 50 03 55``."""
    return Cu48Request(_cu48_address(address), 0x00, CU48_CMD_STATUS)


def cu48_unlock(address: int, channel: int) -> Cu48Request:
    """Unlock one lock (channel 1..48), e.g. board 0 lock 1: ``02 00 00 51 03 56``.

    The board does not reply to an unlock.
    """
    if not 1 <= channel <= CU48_CHANNELS:
        raise EncodeError(f"CU48 channel {channel} out of range 1..{CU48_CHANNELS}")
    return Cu48Request(_cu48_address(address), channel - 1, CU48_CMD_UNLOCK)


def _cu16_board(board: int) -> int:
    if not 0 <= board <= CU16_MAX_ADDRESS:
        raise EncodeError(f"CU16 address {board} out of range 0..{CU16_MAX_ADDRESS}")
    return board


def cu16_read_status(board: int) -> Cu16Request:
    """Read one board's locks and infrared sensors, e.g. board 0: ``02 00 30 03 35``."""
    return Cu16Request(_cu16_board(board), 0, CU16_CMD_STATUS)


def cu16_unlock(board: int, channel: int) -> Cu16Request:
    """Unlock one lock (channel 1..16), e.g. board 0 lock 1: ``02 00 31 03 36``."""
    if not 1 <= channel <= CU16_CHANNELS:
        raise EncodeError(f"CU16 channel {channel} out of range 1..{CU16_CHANNELS}")
    return Cu16Request(_cu16_board(board), channel - 1, CU16_CMD_UNLOCK)


# ======================================================================================
# Incremental decoders
# ======================================================================================

F = TypeVar("F")

_NEED_MORE: Final = -1
_INVALID: Final = 0


class _SealedFrameDecoder(BufferedDecoder, ABC, Generic[F]):
    """Incremental decoder for ``STX ... ETX SUM`` frames.

    Accepts bytes in any chunking. Garbage is skipped and counted: garbage without
    an STX byte never costs a frame, and after a bad candidate the decoder
    resynchronises on the next STX. (Garbage crafted to look like a frame header
    can still hide the frame it overlaps; the line recovers at the next frame, and
    the bus's reply matching rejects any fake that decodes.) Never raises on input.
    """

    __slots__ = ()

    @abstractmethod
    def _length(self, buf: bytearray, start: int) -> int:
        """Frame length for a candidate at ``start``, ``_NEED_MORE`` or ``_INVALID``."""

    @abstractmethod
    def _parse(self, raw: bytes) -> F:
        """A frame from checked raw bytes."""

    def feed(self, data: bytes) -> list[F]:
        buf = self._buf
        buf += data
        out: list[F] = []
        pos = 0
        while True:
            start = buf.find(STX, pos)
            if start < 0:
                self.stats.discarded_bytes += len(buf) - pos
                pos = len(buf)
                break
            self.stats.discarded_bytes += start - pos
            pos = start
            length = self._length(buf, start)
            if length == _NEED_MORE:
                break
            if length == _INVALID:
                self.stats.discarded_bytes += 1
                pos = start + 1
                continue
            end = start + length
            if end > len(buf):
                break
            if buf[end - 2] != ETX or buf[end - 1] != checksum(memoryview(buf)[start : end - 1]):
                self.stats.reject(f"bad ETX/checksum in {bytes(buf[start:end]).hex(' ')}")
                self.stats.discarded_bytes += 1
                pos = start + 1
                continue
            out.append(self._parse(bytes(buf[start:end])))
            self.stats.frames += 1
            pos = end
        del buf[:pos]
        return out


class Cu48ReplyDecoder(_SealedFrameDecoder[Cu48Status]):
    """Driver side: CU48 status replies out of a byte stream."""

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 4:
            return _NEED_MORE
        ok = buf[start + 1] <= CU48_BROADCAST and buf[start + 3] == CU48_REPLY_STATUS
        return CU48_STATUS_LEN if ok else _INVALID

    def _parse(self, raw: bytes) -> Cu48Status:
        return Cu48Status(raw[1], raw[2], raw[4:10])


class Cu48RequestDecoder(_SealedFrameDecoder[Cu48Request]):
    """Board side (simulator): CU48 requests out of a byte stream."""

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 4:
            return _NEED_MORE
        ok = (
            buf[start + 1] <= CU48_BROADCAST
            and buf[start + 2] <= CU48_ALL_LOCKS
            and buf[start + 3] in (CU48_CMD_STATUS, CU48_CMD_UNLOCK)
        )
        return CU48_REQUEST_LEN if ok else _INVALID

    def _parse(self, raw: bytes) -> Cu48Request:
        return Cu48Request(raw[1], raw[2], raw[3])


class Cu16ReplyDecoder(_SealedFrameDecoder[Cu16Status]):
    """Driver side: CU16 one-board status replies out of a byte stream."""

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 3:
            return _NEED_MORE
        # replies carry the board in the high nibble and 0 in the low one
        ok = buf[start + 2] == CU16_REPLY_STATUS and buf[start + 1] & 0x0F == 0
        return CU16_STATUS_LEN if ok else _INVALID

    def _parse(self, raw: bytes) -> Cu16Status:
        return Cu16Status(raw[1] >> 4, raw[3:5], raw[5:7])


class Cu16RequestDecoder(_SealedFrameDecoder[Cu16Request]):
    """Board side (simulator): CU16 requests out of a byte stream."""

    def _length(self, buf: bytearray, start: int) -> int:
        if len(buf) - start < 3:
            return _NEED_MORE
        return CU16_REQUEST_LEN if buf[start + 2] in CU16_REQUEST_CMDS else _INVALID

    def _parse(self, raw: bytes) -> Cu16Request:
        return Cu16Request(raw[1] >> 4, raw[1] & 0x0F, raw[2])


# ======================================================================================
# Whole-frame decoders (for a frame known to be complete, e.g. in tests and tools)
# ======================================================================================


def decode_cu48_status(raw: bytes) -> Cu48Status:
    _check_sealed(raw, CU48_STATUS_LEN, "CU48 status reply")
    if raw[3] != CU48_REPLY_STATUS:
        raise FrameError(f"CU48 status reply: command {raw[3]:02x}, expected 65")
    return Cu48Status(raw[1], raw[2], raw[4:10])


def decode_cu16_status(raw: bytes) -> Cu16Status:
    _check_sealed(raw, CU16_STATUS_LEN, "CU16 status reply")
    if raw[2] != CU16_REPLY_STATUS:
        raise FrameError(f"CU16 status reply: command {raw[2]:02x}, expected 35")
    if raw[1] & 0x0F:
        raise FrameError(f"CU16 status reply: address {raw[1]:02x} has a lock nibble")
    return Cu16Status(raw[1] >> 4, raw[3:5], raw[5:7])
