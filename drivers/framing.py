"""Shared pieces of the wire codecs: decoder statistics, bit maps, wire time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

F_co = TypeVar("F_co", covariant=True)


@dataclass(slots=True)
class DecoderStats:
    """What an incremental decoder has skipped, for bus health and logs."""

    frames: int = 0
    discarded_bytes: int = 0
    bad_frames: int = 0
    last_error: str = ""

    def reject(self, reason: str) -> None:
        self.bad_frames += 1
        self.last_error = reason


class StreamDecoder(Protocol[F_co]):
    """Bytes in, in any chunking, complete valid frames out; garbage is skipped and counted."""

    stats: DecoderStats

    def feed(self, data: bytes) -> Sequence[F_co]: ...

    def flush(self) -> int:
        """Drop a partial frame (the line fell silent); the number of bytes dropped."""
        ...


class BufferedDecoder:
    """Base of the stream decoders: the bytes not yet framed, and what was skipped."""

    __slots__ = ("_buf", "stats")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()

    def flush(self) -> int:
        """Drop a partial frame (the line fell silent); the number of bytes dropped."""
        dropped = len(self._buf)
        self.stats.discarded_bytes += dropped
        self._buf.clear()
        return dropped


def unpack_bits(data: bytes, count: int, *, lsb_first: bool = True) -> tuple[bool, ...]:
    """Bits of ``data`` as booleans, byte 0 first; within a byte LSB first by default."""
    out: list[bool] = []
    for byte in data:
        for bit in range(8):
            shift = bit if lsb_first else 7 - bit
            out.append(bool((byte >> shift) & 1))
            if len(out) == count:
                return tuple(out)
    if len(out) < count:
        raise ValueError(f"{len(data)} bytes hold {len(out)} bits, {count} wanted")
    return tuple(out)


def pack_bits(bits: Sequence[bool], nbytes: int, *, lsb_first: bool = True) -> bytes:
    """Inverse of :func:`unpack_bits`; missing bits are zero."""
    out = bytearray(nbytes)
    for i, bit in enumerate(bits):
        if bit:
            shift = i % 8 if lsb_first else 7 - i % 8
            out[i // 8] |= 1 << shift
    return bytes(out)


def wire_time(nbytes: int, baudrate: int, bits_per_char: int = 10) -> float:
    """Seconds the bytes take on the line (8N1 = 10 bits a character)."""
    return nbytes * bits_per_char / baudrate


def frame_silence(baudrate: int) -> float:
    """Silence that ends a frame on a serial line: 3.5 character times, and a fixed
    1.75 ms above 19200 baud (Modbus over serial line, 2.5.1.1)."""
    if baudrate > 19200:
        return 0.00175
    return wire_time(1, baudrate) * 3.5
