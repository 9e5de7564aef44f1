"""Modbus RTU codec: the only module that imports pymodbus (pinned to one minor, ADR 0003).

pymodbus gives us the PDU classes, frame sizes and the CRC. We do not use its
client (it owns the port and closes it after a few no-replies, taking every other
board on the bus with it) nor its ``FramerRTU.handleFrame`` stream decoder (it
throws the whole buffer away at the first bad candidate, so one stray byte
before a frame from device 1 loses that frame). Instead :class:`_RtuDecoder`
resynchronises one byte at a time with pymodbus's own pieces.

Everything here speaks our own types (:class:`ModbusRequest`,
:class:`ModbusReply`), so a pymodbus upgrade touches this file only.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any, Final

from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
)
from pymodbus.pdu.register_message import (
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from lockerd.drivers.errors import EncodeError
from lockerd.drivers.framing import BufferedDecoder

# pymodbus logs every decode at debug and some failures with tracebacks; our own
# decoders report what matters through DecoderStats and the bus's structured log.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

FC_READ_COILS: Final = 0x01
FC_READ_DISCRETE_INPUTS: Final = 0x02
FC_WRITE_COIL: Final = 0x05
FC_WRITE_REGISTER: Final = 0x06
FC_WRITE_COILS: Final = 0x0F

EX_ILLEGAL_FUNCTION: Final = 0x01
EX_ILLEGAL_ADDRESS: Final = 0x02
EX_ILLEGAL_VALUE: Final = 0x03

COIL_ON: Final = 0xFF00
COIL_OFF: Final = 0x0000
MAX_READ_BITS: Final = 2000
MAX_WRITE_BITS: Final = 1968


class _WriteCoilRaw(ModbusPDU):
    """FC05 with its 16-bit value kept as it is.

    The stock class folds any value into ON/OFF, but boards with a board-timed
    pulse ("flash on") take FC05 with a duration in the value field, e.g.
    ``01 05 02 00 00 05 0C 71`` = pulse relay 0 for 500 ms. Request and echo
    have the same shape.
    """

    function_code = FC_WRITE_COIL
    rtu_frame_size = 8

    def __init__(self, value: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.value)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])


def _decoder(is_server: bool) -> DecodePDU:
    dec = DecodePDU(is_server=is_server)
    dec.register(_WriteCoilRaw)
    return dec


_CLIENT_PDUS: Final = _decoder(is_server=False)  # decodes replies
_SERVER_PDUS: Final = _decoder(is_server=True)  # decodes requests
_FRAMER: Final = FramerRTU(_CLIENT_PDUS)


def crc(body: bytes) -> bytes:
    """The two CRC bytes of an RTU frame body, as they go on the wire."""
    return int(FramerRTU.compute_CRC(body)).to_bytes(2, "big")


def _frame(device: int, pdu: ModbusPDU) -> bytes:
    _check_device(device)
    pdu.dev_id = device
    return bytes(_FRAMER.buildFrame(pdu))


def _check_device(device: int) -> None:
    if not 0 <= device <= 247:
        raise EncodeError(f"Modbus device id {device} out of range 1..247 (0 = broadcast)")


def _check_range(address: int, count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise EncodeError(f"Modbus count {count} out of range 1..{limit}")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise EncodeError(f"Modbus address {address:#06x}+{count} out of range")


# ======================================================================================
# Requests (what the driver sends)
# ======================================================================================


def read_coils(device: int, address: int, count: int) -> bytes:
    _check_range(address, count, MAX_READ_BITS)
    return _frame(device, ReadCoilsRequest(address=address, count=count))


def read_discrete_inputs(device: int, address: int, count: int) -> bytes:
    """E.g. 8 inputs of device 1: ``01 02 00 00 00 08 79 CC``."""
    _check_range(address, count, MAX_READ_BITS)
    return _frame(device, ReadDiscreteInputsRequest(address=address, count=count))


def write_coil(device: int, address: int, on: bool) -> bytes:
    return write_coil_value(device, address, COIL_ON if on else COIL_OFF)


def write_coil_value(device: int, address: int, value: int) -> bytes:
    """FC05 with any value: ON/OFF, or a flash-on pulse length in 100 ms units."""
    _check_range(address, 1, 1)
    if not 0 <= value <= 0xFFFF:
        raise EncodeError(f"FC05 value {value} out of range 0..0xFFFF")
    return _frame(device, _WriteCoilRaw(address=address, value=value))


def write_register(device: int, address: int, value: int) -> bytes:
    _check_range(address, 1, 1)
    if not 0 <= value <= 0xFFFF:
        raise EncodeError(f"register value {value} out of range 0..0xFFFF")
    return _frame(device, WriteSingleRegisterRequest(address=address, registers=[value]))


def write_coils(device: int, address: int, bits: tuple[bool, ...] | list[bool]) -> bytes:
    _check_range(address, len(bits), MAX_WRITE_BITS)
    return _frame(device, WriteMultipleCoilsRequest(address=address, bits=list(bits)))


# ======================================================================================
# Replies (what a board sends; the simulator uses these)
# ======================================================================================


def bits_reply(device: int, function: int, bits: tuple[bool, ...] | list[bool]) -> bytes:
    """Reply to FC01/FC02: byte count then the bits, LSB first, padded with zeros."""
    pdu: ModbusPDU
    if function == FC_READ_COILS:
        pdu = ReadCoilsResponse(bits=list(bits))
    elif function == FC_READ_DISCRETE_INPUTS:
        pdu = ReadDiscreteInputsResponse(bits=list(bits))
    else:
        raise EncodeError(f"function {function:#04x} does not reply with bits")
    return _frame(device, pdu)


def echo_reply(device: int, function: int, address: int, value: int) -> bytes:
    """Reply to FC05/FC06: the request echoed."""
    if function == FC_WRITE_COIL:
        return write_coil_value(device, address, value)
    if function == FC_WRITE_REGISTER:
        return _frame(device, WriteSingleRegisterResponse(address=address, registers=[value]))
    raise EncodeError(f"function {function:#04x} does not echo")


def write_coils_reply(device: int, address: int, count: int) -> bytes:
    return _frame(device, WriteMultipleCoilsResponse(address=address, count=count))


def exception_reply(device: int, function: int, code: int) -> bytes:
    return _frame(device, ExceptionResponse(function & 0x7F, exception_code=code))


# ======================================================================================
# Decoded frames, in our own types
# ======================================================================================


@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """A request as a board sees it (the simulator's side)."""

    device: int
    function: int
    address: int = 0
    count: int = 0
    value: int = 0
    bits: tuple[bool, ...] = ()
    valid: bool = True  # False: well framed, but its fields contradict each other


@dataclass(frozen=True, slots=True)
class ModbusReply:
    """A reply as the driver sees it. ``exception`` is set for an exception reply."""

    device: int
    function: int
    exception: int | None = None
    address: int = 0
    value: int = 0
    count: int = 0
    bits: tuple[bool, ...] = ()


def _as_request(device: int, pdu: ModbusPDU, body: bytes) -> ModbusRequest:
    fc = int(pdu.function_code)
    if fc in (FC_READ_COILS, FC_READ_DISCRETE_INPUTS):
        return ModbusRequest(device, fc, address=pdu.address, count=pdu.count)
    if isinstance(pdu, _WriteCoilRaw):
        return ModbusRequest(device, fc, address=pdu.address, value=pdu.value)
    if fc == FC_WRITE_REGISTER:
        return ModbusRequest(device, fc, address=pdu.address, value=int(pdu.registers[0]))
    if fc == FC_WRITE_COILS:
        bits = tuple(bool(b) for b in pdu.bits)
        count = int.from_bytes(body[4:6], "big")
        # the byte count must match the quantity (the spec's exception 03 otherwise)
        valid = body[6] == (count + 7) // 8 and len(bits) == count
        return ModbusRequest(device, fc, address=pdu.address, count=count, bits=bits, valid=valid)
    # any other function a board may be asked: keep the code so it can refuse it
    return ModbusRequest(device, fc, address=getattr(pdu, "address", 0))


def _as_reply(device: int, pdu: ModbusPDU) -> ModbusReply | None:
    if isinstance(pdu, ExceptionResponse):
        return ModbusReply(device, int(pdu.function_code) & 0x7F, exception=int(pdu.exception_code))
    fc = int(pdu.function_code)
    if fc in (FC_READ_COILS, FC_READ_DISCRETE_INPUTS):
        return ModbusReply(device, fc, bits=tuple(bool(b) for b in pdu.bits))
    if isinstance(pdu, _WriteCoilRaw):
        return ModbusReply(device, fc, address=pdu.address, value=pdu.value)
    if fc == FC_WRITE_REGISTER:
        return ModbusReply(device, fc, address=pdu.address, value=int(pdu.registers[0]))
    if fc == FC_WRITE_COILS:
        return ModbusReply(device, fc, address=pdu.address, count=pdu.count)
    return None


MAX_RTU_FRAME: Final = 256  # Modbus over serial line spec, 2.5.1.1
# Functions whose frame size pymodbus computes from bytes past the first few
# (diagnostics sub-functions, device identification): sized only on a full header,
# so the result never depends on how the stream was split.
_SIZED_BY_LATER_BYTES: Final = frozenset({0x08, 0x2B})


class _RtuDecoder(BufferedDecoder):
    """Incremental RTU decoder: frames with a good CRC out of any chunking and garbage.

    A candidate starts at any byte; its function code gives its length (pymodbus's
    table). A candidate with a bad CRC, an unknown function or a length beyond the
    256-byte RTU maximum is dropped one byte at a time, so garbage that cannot start
    a frame costs nothing.

    Without timing, a stream is ambiguous: a frame can hide inside the data of a
    longer one. So the decoder never guesses: it waits for the longer candidate to
    complete (at most 256 bytes). RTU resolves the ambiguity with 3.5 character
    times of silence between frames; whoever knows the timing calls :meth:`flush`
    at such a silence (the bus uses one decoder per transaction; the simulator
    flushes when its line has been idle that long).
    """

    __slots__ = ("_device", "_function", "_pdus")

    def __init__(
        self, *, is_server: bool, device: int | None = None, function: int | None = None
    ) -> None:
        super().__init__()
        self._device = device
        self._function = function
        self._pdus = _SERVER_PDUS if is_server else _CLIENT_PDUS

    def _candidate(self, pos: int) -> tuple[int, bytes]:  # noqa: PLR0911 - one per verdict
        """(size, body) of a good frame at ``pos``; (0, b"") when more bytes are
        needed; (-1, b"") when no frame starts here."""
        buf = self._buf
        dev = buf[pos]
        if (self._device is not None and dev != self._device) or dev > 247:
            return -1, b""
        if self._function is not None and buf[pos + 1] & 0x7F != self._function:
            return -1, b""
        head = bytes(buf[pos : pos + 12])
        if buf[pos + 1] in _SIZED_BY_LATER_BYTES and len(head) < 12:
            return 0, b""  # pymodbus sizes these differently on a short header: wait
        try:
            cls = self._pdus.lookupPduClass(head)
            size = int(cls.calculateRtuFrameSize(head)) if cls is not None else -1
        except ModbusException:
            size = -1
        if size > MAX_RTU_FRAME or (size == 0 and len(head) == 12):
            size = -1  # longer than any RTU frame, or a header we cannot size
        if size < 0:
            return -1, b""
        if size == 0 or len(buf) - pos < size:
            return 0, b""
        body = bytes(buf[pos : pos + size - 2])
        if bytes(buf[pos + size - 2 : pos + size]) != crc(body):
            # complete and wrong: counted once, since the scan never comes back here
            self.stats.reject(f"bad CRC in {bytes(buf[pos : pos + size]).hex(' ')}")
            return -1, b""
        return size, body

    def _decode(self, body: bytes) -> ModbusPDU | None:
        """The PDU of a CRC-checked frame body (device id first), or ``None``.

        Instantiates the class directly rather than through ``DecodePDU.decode``,
        which formats every PDU for a debug log on the hot path.
        """
        try:
            cls = self._pdus.lookupPduClass(body)
            if cls is None:
                return None
            if cls is ExceptionResponse:
                pdu: ModbusPDU = ExceptionResponse(body[1] & 0x7F)
            else:
                pdu = cls()
            pdu.decode(body[2:])
        except (ModbusException, struct.error, IndexError, ValueError):
            return None
        return pdu

    def _frames(self) -> list[tuple[int, ModbusPDU, bytes]]:
        buf = self._buf
        out: list[tuple[int, ModbusPDU, bytes]] = []
        pos = 0
        while len(buf) - pos >= 4:
            size, body = self._candidate(pos)
            if size == 0:
                break  # wait for more bytes
            pdu = None
            if size > 0:
                pdu = self._decode(body)
                if pdu is None:
                    self.stats.reject(f"undecodable PDU {body.hex(' ')}")
            if pdu is None:
                pos += 1
                self.stats.discarded_bytes += 1
                continue
            out.append((buf[pos], pdu, body))
            self.stats.frames += 1
            pos += size
        del buf[:pos]
        return out


class ModbusReplyDecoder(_RtuDecoder):
    """Driver side: replies from ``device`` to ``function`` (either may be ``None`` = any).

    Exception replies to ``function`` (``function | 0x80``) are replies too.
    """

    def __init__(self, device: int | None = None, function: int | None = None) -> None:
        super().__init__(is_server=False, device=device, function=function)

    def feed(self, data: bytes) -> list[ModbusReply]:
        self._buf += data
        return [r for dev, pdu, _ in self._frames() if (r := _as_reply(dev, pdu)) is not None]


class ModbusRequestDecoder(_RtuDecoder):
    """Board side (simulator): requests to any device."""

    def __init__(self) -> None:
        super().__init__(is_server=True)

    def feed(self, data: bytes) -> list[ModbusRequest]:
        self._buf += data
        return [_as_request(dev, pdu, body) for dev, pdu, body in self._frames()]
