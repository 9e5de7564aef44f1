"""Byte-exact and property tests for the Modbus RTU codec (``lockerd.drivers.modbus``).

Vectors: ``shared/design/HARDWARE.md`` and the examples of the Modbus Application
Protocol spec v1.1b3. Expected frames are laid out here from the spec (big-endian
fields, coils LSB first) and sealed with a CRC-16/MODBUS written in this file, so
neither pymodbus nor the code under test checks itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeAlias, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerd.drivers.errors import EncodeError
from lockerd.drivers.framing import StreamDecoder, frame_silence, unpack_bits
from lockerd.drivers.modbus import (
    FC_READ_COILS,
    FC_READ_DISCRETE_INPUTS,
    FC_WRITE_COIL,
    FC_WRITE_COILS,
    FC_WRITE_REGISTER,
    ModbusReply,
    ModbusReplyDecoder,
    ModbusRequest,
    ModbusRequestDecoder,
    bits_reply,
    crc,
    echo_reply,
    exception_reply,
    read_coils,
    read_discrete_inputs,
    write_coil,
    write_coil_value,
    write_coils,
    write_coils_reply,
    write_register,
)

PROPS = settings(max_examples=50, deadline=None)
F = TypeVar("F")
RtuDecoder: TypeAlias = ModbusRequestDecoder | ModbusReplyDecoder

MAX_RTU_FRAME = 256  # Modbus over serial line spec, 2.5.1.1
# Device id 255 cannot start a frame, and this many bytes complete any pending candidate:
# what a decoder sees when the line goes on with bytes that are not a frame.
NO_FRAME_TAIL = b"\xff" * MAX_RTU_FRAME


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ======================================================================================
# Reference CRC-16/MODBUS and frame layout, independent of pymodbus
# ======================================================================================


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return value


def seal(body: bytes) -> bytes:
    """``body`` + its CRC, low byte first on the wire."""
    value = crc16_modbus(body)
    return body + bytes((value & 0xFF, value >> 8))


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and seal(frame[:-2]) == frame


def crc_good_frames_at(data: bytes, start: int) -> Iterator[bytes]:
    """Every frame of 4..256 bytes starting at ``start`` whose last two bytes are its CRC."""
    value = 0xFFFF
    for end in range(start, min(len(data) - 2, start + 254)):
        value ^= data[end]
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
        if end - start >= 1 and data[end + 1 : end + 3] == bytes((value & 0xFF, value >> 8)):
            yield data[start : end + 3]


def pack_lsb_first(bits: Sequence[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def frame_of(device: int, function: int, fmt: str, *fields: int) -> bytes:
    return seal(bytes((device, function)) + struct.pack(">" + fmt, *fields))


def wire_of_request(r: ModbusRequest) -> bytes | None:
    """The frame a decoded request came from, laid out from the spec (None: not modelled)."""
    if r.function in (FC_READ_COILS, FC_READ_DISCRETE_INPUTS):
        return frame_of(r.device, r.function, "HH", r.address, r.count)
    if r.function in (FC_WRITE_COIL, FC_WRITE_REGISTER):
        return frame_of(r.device, r.function, "HH", r.address, r.value)
    if r.function == FC_WRITE_COILS:
        data = pack_lsb_first(r.bits)
        head = struct.pack(">HHB", r.address, r.count, len(data))
        return seal(bytes((r.device, r.function)) + head + data)
    return None


def wire_of_reply(r: ModbusReply) -> bytes:
    """The frame a decoded reply came from, laid out from the spec."""
    if r.exception is not None:
        return seal(bytes((r.device, r.function | 0x80, r.exception)))
    if r.function in (FC_READ_COILS, FC_READ_DISCRETE_INPUTS):
        data = pack_lsb_first(r.bits)
        return seal(bytes((r.device, r.function, len(data))) + data)
    if r.function in (FC_WRITE_COIL, FC_WRITE_REGISTER):
        return frame_of(r.device, r.function, "HH", r.address, r.value)
    assert r.function == FC_WRITE_COILS, r
    return frame_of(r.device, r.function, "HH", r.address, r.count)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` taken modulo its length + 1 (repeats give empty chunks)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def feed_chunks(decoder: StreamDecoder[F], data: bytes, cuts: Sequence[int]) -> list[F]:
    out: list[F] = []
    for chunk in split(data, cuts):
        out.extend(decoder.feed(chunk))
    return out


def feed_bytewise(decoder: StreamDecoder[F], data: bytes) -> list[F]:
    return [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]


def takes_as_a_frame(decoder: RtuDecoder, window: bytes) -> bool:
    """Whether ``decoder`` takes the whole of ``window`` as one frame."""
    decoder.feed(window)
    stats = decoder.stats
    taken_whole = (stats.frames, stats.discarded_bytes, stats.bad_frames) == (1, 0, 0)
    return taken_whole and not decoder._buf


def stray_frame(
    stream: bytes,
    positions: Iterable[int],
    decoder: Callable[[], RtuDecoder],
    *,
    ending_after: int = -1,
) -> bool:
    """A CRC-good window starting at one of ``positions`` (and ending after ``ending_after``)
    that ``decoder`` takes as a frame. Without timing such a window is a frame; it can turn
    up by chance in line noise (2**-16 a candidate) and then hides what it overlaps (see
    the *_limit_* test). Only called when a property fails, to tell that case apart."""
    return any(
        i + len(window) > ending_after and takes_as_a_frame(decoder(), window)
        for i in positions
        for window in crc_good_frames_at(stream, i)
    )


# ======================================================================================
# CRC
# ======================================================================================


def test_reference_crc_has_the_catalogued_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # CRC-16/MODBUS check value


def test_crc_of_read_8_inputs_is_the_hardware_md_vector() -> None:
    assert crc(h("01 02 00 00 00 08")) == h("79 cc")


def test_crc_of_flash_pulse_is_the_hardware_md_vector() -> None:
    assert crc(h("01 05 02 00 00 05")) == h("0c 71")


def test_crc_of_nothing_is_the_initial_value() -> None:
    assert crc(b"") == h("ff ff")


@given(body=st.binary(max_size=256))
@settings(max_examples=200, deadline=None)
def test_crc_matches_the_reference_low_byte_first(body: bytes) -> None:
    value = crc16_modbus(body)
    assert crc(body) == bytes((value & 0xFF, value >> 8))


@given(body=st.binary(max_size=256))
@PROPS
def test_crc_over_a_sealed_frame_is_zero(body: bytes) -> None:
    assert crc(body + crc(body)) == b"\x00\x00"


# ======================================================================================
# Requests: byte vectors
# ======================================================================================


def test_read_8_discrete_inputs_of_slave_1_is_the_hardware_md_vector() -> None:
    assert read_discrete_inputs(1, 0x0000, 8) == h("01 02 00 00 00 08 79 cc")


def test_flash_pulse_relay_0_for_500ms_is_the_hardware_md_vector() -> None:
    assert write_coil_value(1, 0x0200, 5) == h("01 05 02 00 00 05 0c 71")


def test_read_coils_matches_the_public_rtu_example() -> None:
    # Slave 0x11, coils 20..56 (address 0x13, 0x25 coils): a classic RTU example.
    assert read_coils(0x11, 0x0013, 0x25) == h("11 01 00 13 00 25 0e 84")


def test_read_8_coils_of_slave_1() -> None:
    assert read_coils(1, 0, 8) == h("01 01 00 00 00 08 3d cc")


def test_write_coil_on_is_ff00() -> None:
    assert write_coil(1, 0, on=True) == h("01 05 00 00 ff 00 8c 3a")


def test_write_coil_off_is_0000() -> None:
    assert write_coil(1, 0, on=False) == h("01 05 00 00 00 00 cd ca")


def test_write_coils_puts_coil_0_in_the_lsb_of_the_first_data_byte() -> None:
    assert write_coils(1, 0, [True] + [False] * 7) == h("01 0f 00 00 00 08 01 01 3f 55")


def test_write_coils_matches_the_modbus_spec_example() -> None:
    # Spec 6.11: coils 20..29 = 1011 0011 10 -> data CD 01.
    bits = [True, False, True, True, False, False, True, True, True, False]
    assert write_coils(1, 0x0013, bits) == seal(h("01 0f 00 13 00 0a 02 cd 01"))


def test_write_8_coils_off_is_the_regression_frame() -> None:
    assert write_coils(1, 0, [False] * 8) == h("01 0f 00 00 00 08 01 00 fe 95")


def test_write_register_flash_pulse() -> None:
    assert write_register(1, 0x0200, 5) == h("01 06 02 00 00 05 48 71")


def test_write_coil_value_keeps_the_value_unfolded() -> None:
    assert write_coil_value(7, 0x0203, 0x1234) == frame_of(7, 5, "HH", 0x0203, 0x1234)


def test_broadcast_device_0_is_accepted() -> None:
    assert write_coil(0, 3, on=False) == frame_of(0, 5, "HH", 3, 0)


# ======================================================================================
# Replies: byte vectors
# ======================================================================================


def test_exception_reply_illegal_address_to_fc05() -> None:
    assert exception_reply(1, FC_WRITE_COIL, 0x02) == h("01 85 02 c3 51")


def test_exception_reply_takes_the_function_with_its_high_bit_set_too() -> None:
    assert exception_reply(1, 0x85, 0x02) == h("01 85 02 c3 51")


def test_bits_reply_matches_the_modbus_spec_example() -> None:
    # Spec 6.1: 19 coils -> CD 6B 05, coil 20 = LSB of the first byte.
    bits = [c == "1" for c in "1011001111010110101"]
    assert bits_reply(1, FC_READ_COILS, bits) == seal(h("01 01 03 cd 6b 05"))


def test_bits_reply_to_fc02() -> None:
    bits = [True, False, True] + [False] * 5
    assert bits_reply(1, FC_READ_DISCRETE_INPUTS, bits) == seal(h("01 02 01 05"))


def test_echo_reply_to_fc05_is_the_request() -> None:
    assert echo_reply(1, FC_WRITE_COIL, 0x0200, 5) == h("01 05 02 00 00 05 0c 71")


def test_echo_reply_to_fc06_is_the_request() -> None:
    assert echo_reply(1, FC_WRITE_REGISTER, 0x0200, 5) == h("01 06 02 00 00 05 48 71")


def test_write_coils_reply_matches_the_modbus_spec_example() -> None:
    assert write_coils_reply(1, 0x0013, 10) == seal(h("01 0f 00 13 00 0a"))


# ======================================================================================
# Encoding errors
# ======================================================================================


@pytest.mark.parametrize("device", [-1, 248, 255])
def test_device_out_of_range_is_refused(device: int) -> None:
    with pytest.raises(EncodeError):
        read_coils(device, 0, 1)


@pytest.mark.parametrize(
    ("address", "count"),
    [(0, 0), (0, 2001), (0xFFFF, 2), (0x10000, 1), (-1, 1)],
    ids=["count-0", "count-2001", "past-ffff", "address-10000", "address-negative"],
)
def test_read_range_out_of_bounds_is_refused(address: int, count: int) -> None:
    with pytest.raises(EncodeError):
        read_discrete_inputs(1, address, count)


@pytest.mark.parametrize("value", [-1, 0x10000])
def test_fc05_value_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(EncodeError):
        write_coil_value(1, 0, value)


@pytest.mark.parametrize("value", [-1, 0x10000])
def test_register_value_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(EncodeError):
        write_register(1, 0, value)


@pytest.mark.parametrize("count", [0, 1969])
def test_write_coils_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(EncodeError):
        write_coils(1, 0, [False] * count)


def test_write_coils_of_the_maximum_1968_coils_fits_one_frame() -> None:
    frame = write_coils(1, 0, [True] * 1968)
    assert len(frame) == 9 + 246
    assert crc_ok(frame)


def test_bits_reply_to_a_write_function_is_refused() -> None:
    with pytest.raises(EncodeError):
        bits_reply(1, FC_WRITE_COIL, [True])


def test_echo_reply_to_a_read_function_is_refused() -> None:
    with pytest.raises(EncodeError):
        echo_reply(1, FC_READ_COILS, 0, 1)


# ======================================================================================
# Decoding vectors
# ======================================================================================


def test_exception_reply_decodes() -> None:
    assert ModbusReplyDecoder(1).feed(h("01 85 02 c3 51")) == [
        ModbusReply(1, FC_WRITE_COIL, exception=2)
    ]


def test_bits_reply_decodes_padded_to_whole_bytes() -> None:
    """The reply carries no bit count: 19 coils come back as 24 bits, the last 5 zero."""
    bits = tuple(c == "1" for c in "1011001111010110101")
    (reply,) = ModbusReplyDecoder(1).feed(seal(h("01 01 03 cd 6b 05")))
    assert reply.bits == bits + (False,) * 5


def test_read_8_inputs_request_decodes() -> None:
    assert ModbusRequestDecoder().feed(h("01 02 00 00 00 08 79 cc")) == [
        ModbusRequest(1, FC_READ_DISCRETE_INPUTS, address=0, count=8)
    ]


def test_flash_pulse_request_decodes_with_its_value_not_folded_to_on() -> None:
    assert ModbusRequestDecoder().feed(h("01 05 02 00 00 05 0c 71")) == [
        ModbusRequest(1, FC_WRITE_COIL, address=0x200, value=5)
    ]


def test_flash_pulse_echo_decodes_with_its_value_not_folded_to_on() -> None:
    assert ModbusReplyDecoder(1).feed(h("01 05 02 00 00 05 0c 71")) == [
        ModbusReply(1, FC_WRITE_COIL, address=0x200, value=5)
    ]


def test_write_coils_spec_example_decodes_coil_20_from_the_lsb() -> None:
    (request,) = ModbusRequestDecoder().feed(seal(h("01 0f 00 13 00 0a 02 cd 01")))
    assert request.bits == (True, False, True, True, False, False, True, True, True, False)
    assert (request.address, request.count) == (0x13, 10)


# ======================================================================================
# Strategies: every frame the codec can build, with what decoding it must give
# ======================================================================================

devices = st.integers(0, 247)
words = st.integers(0, 0xFFFF)


@dataclass(frozen=True)
class RequestCase:
    wire: bytes  # built by lockerd.drivers.modbus
    reference: bytes  # laid out here from the spec
    decoded: ModbusRequest


@dataclass(frozen=True)
class ReplyCase:
    wire: bytes
    reference: bytes
    decoded: ModbusReply


@st.composite
def ranges(draw: st.DrawFn, limit: int) -> tuple[int, int]:
    count = draw(st.integers(1, limit))
    return draw(st.integers(0, 0x10000 - count)), count


@st.composite
def request_cases(draw: st.DrawFn, device: st.SearchStrategy[int] = devices) -> RequestCase:
    dev = draw(device)
    kind = draw(st.sampled_from(["fc01", "fc02", "fc05", "fc05-onoff", "fc06", "fc0f"]))
    if kind in ("fc01", "fc02"):
        address, count = draw(ranges(2000))
        fc, encode = (1, read_coils) if kind == "fc01" else (2, read_discrete_inputs)
        return RequestCase(
            encode(dev, address, count),
            frame_of(dev, fc, "HH", address, count),
            ModbusRequest(dev, fc, address=address, count=count),
        )
    if kind == "fc0f":
        bits = draw(st.lists(st.booleans(), min_size=1, max_size=80))
        address = draw(st.integers(0, 0x10000 - len(bits)))
        data = pack_lsb_first(bits)
        head = struct.pack(">HHB", address, len(bits), len(data))
        return RequestCase(
            write_coils(dev, address, bits),
            seal(bytes((dev, 0x0F)) + head + data),
            ModbusRequest(dev, 0x0F, address=address, count=len(bits), bits=tuple(bits)),
        )
    address = draw(words)
    if kind == "fc05-onoff":
        on = draw(st.booleans())
        value = 0xFF00 if on else 0
        wire = write_coil(dev, address, on=on)
    else:
        value = draw(words)
        wire = (write_coil_value if kind == "fc05" else write_register)(dev, address, value)
    fc = 6 if kind == "fc06" else 5
    return RequestCase(
        wire, frame_of(dev, fc, "HH", address, value), ModbusRequest(dev, fc, address, value=value)
    )


@st.composite
def reply_cases(draw: st.DrawFn, device: st.SearchStrategy[int] = devices) -> ReplyCase:
    dev = draw(device)
    kind = draw(st.sampled_from(["bits", "echo", "fc0f", "exception"]))
    if kind == "bits":
        fc = draw(st.sampled_from([FC_READ_COILS, FC_READ_DISCRETE_INPUTS]))
        bits = draw(st.lists(st.booleans(), min_size=1, max_size=120))
        data = pack_lsb_first(bits)
        padded = tuple(bits) + (False,) * (8 * len(data) - len(bits))
        return ReplyCase(
            bits_reply(dev, fc, bits),
            seal(bytes((dev, fc, len(data))) + data),
            ModbusReply(dev, fc, bits=padded),
        )
    if kind == "echo":
        fc = draw(st.sampled_from([FC_WRITE_COIL, FC_WRITE_REGISTER]))
        address, value = draw(words), draw(words)
        return ReplyCase(
            echo_reply(dev, fc, address, value),
            frame_of(dev, fc, "HH", address, value),
            ModbusReply(dev, fc, address=address, value=value),
        )
    if kind == "fc0f":
        address, count = draw(ranges(1968))
        return ReplyCase(
            write_coils_reply(dev, address, count),
            frame_of(dev, 0x0F, "HH", address, count),
            ModbusReply(dev, 0x0F, address=address, count=count),
        )
    fc = draw(st.sampled_from([1, 2, 5, 6, 0x0F, 3, 0x10]))
    code = draw(st.integers(1, 0x0B))
    return ReplyCase(
        exception_reply(dev, fc, code),
        seal(bytes((dev, fc | 0x80, code))),
        ModbusReply(dev, fc, exception=code),
    )


cut_points = st.lists(st.integers(0, 3000), max_size=12)


# ======================================================================================
# Round trips
# ======================================================================================


@given(case=request_cases())
@PROPS
def test_request_encoders_lay_out_frames_as_the_spec_says(case: RequestCase) -> None:
    assert case.wire == case.reference


@given(case=request_cases())
@PROPS
def test_request_decoder_round_trips_one_frame(case: RequestCase) -> None:
    assert ModbusRequestDecoder().feed(case.wire) == [case.decoded]


@given(case=reply_cases())
@PROPS
def test_reply_encoders_lay_out_frames_as_the_spec_says(case: ReplyCase) -> None:
    assert case.wire == case.reference


@given(case=reply_cases())
@PROPS
def test_reply_decoder_for_any_device_round_trips_one_frame(case: ReplyCase) -> None:
    assert ModbusReplyDecoder().feed(case.wire) == [case.decoded]


@given(case=reply_cases())
@PROPS
def test_reply_decoder_for_the_frames_device_round_trips_one_frame(case: ReplyCase) -> None:
    assert ModbusReplyDecoder(case.decoded.device).feed(case.wire) == [case.decoded]


# ======================================================================================
# Streams: chunking, garbage, statistics
# ======================================================================================


@given(cases=st.lists(request_cases(), min_size=1, max_size=6), cuts=cut_points)
@PROPS
def test_request_decoder_finds_the_same_frames_whatever_the_chunking(
    cases: list[RequestCase], cuts: list[int]
) -> None:
    decoder = ModbusRequestDecoder()
    out = feed_chunks(decoder, b"".join(c.wire for c in cases), cuts)
    assert out == [c.decoded for c in cases]
    assert (decoder.stats.frames, decoder.stats.discarded_bytes) == (len(cases), 0)


@given(cases=st.lists(reply_cases(), min_size=1, max_size=6), cuts=cut_points)
@PROPS
def test_reply_decoder_finds_the_same_frames_whatever_the_chunking(
    cases: list[ReplyCase], cuts: list[int]
) -> None:
    decoder = ModbusReplyDecoder()
    out = feed_chunks(decoder, b"".join(c.wire for c in cases), cuts)
    assert out == [c.decoded for c in cases]
    assert (decoder.stats.frames, decoder.stats.discarded_bytes) == (len(cases), 0)


@given(
    cases=st.lists(reply_cases(device=st.just(1)), min_size=1, max_size=6),
    cuts=cut_points,
)
@PROPS
def test_reply_decoder_for_device_1_finds_the_same_frames_whatever_the_chunking(
    cases: list[ReplyCase], cuts: list[int]
) -> None:
    out = feed_chunks(ModbusReplyDecoder(1), b"".join(c.wire for c in cases), cuts)
    assert out == [c.decoded for c in cases]


def found_on_wire_request(r: ModbusRequest, data: bytes) -> bool:
    """A CRC-good frame in ``data`` that decodes to ``r``."""
    wire = wire_of_request(r)
    if wire is not None and r.function != FC_WRITE_COILS:
        return wire in data
    # FC0F (its byte count may disagree with its quantity: valid=False, and the padding bits
    # are not kept) and functions we do not model: a CRC-good window that starts with this
    # device and function.
    head = bytes((r.device, r.function))
    return any(
        data.startswith(head, i) and any(crc_good_frames_at(data, i)) for i in range(len(data))
    )


@given(garbage=st.binary(max_size=300), cuts=cut_points)
@PROPS
def test_request_decoder_on_random_bytes_never_raises_nor_yields_a_bad_crc(
    garbage: bytes, cuts: list[int]
) -> None:
    decoder = ModbusRequestDecoder()
    out = feed_chunks(decoder, garbage, cuts)  # must not raise
    assert all(found_on_wire_request(r, garbage) for r in out), out
    assert decoder.stats.frames >= len(out)


@given(garbage=st.binary(max_size=300), cuts=cut_points, device=st.sampled_from([None, 1]))
@PROPS
def test_reply_decoder_on_random_bytes_never_raises_nor_yields_a_bad_crc(
    garbage: bytes, cuts: list[int], device: int | None
) -> None:
    decoder = ModbusReplyDecoder(device)
    out = feed_chunks(decoder, garbage, cuts)  # must not raise
    assert all(wire_of_reply(r) in garbage for r in out), out


@st.composite
def crc_good_frames(draw: st.DrawFn) -> bytes:
    """Any device, any function code, any payload, with a good CRC: reaches every
    pymodbus PDU class, including the ones lockerd never sends."""
    head = bytes((draw(st.integers(0, 255)), draw(st.integers(0, 255))))
    return seal(head + draw(st.binary(max_size=24)))


@st.composite
def soups(draw: st.DrawFn) -> bytes:
    """Line noise that is hard on a decoder: random bytes, our frames whole, cut short or
    with one byte changed, and CRC-good frames of any function."""

    def mutated(raw: bytes) -> bytes:
        out = bytearray(raw)
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)

    def truncated(raw: bytes) -> bytes:
        return raw[: draw(st.integers(0, len(raw) - 1))]

    ours = st.one_of(request_cases().map(lambda c: c.wire), reply_cases().map(lambda c: c.wire))
    piece = st.one_of(
        st.binary(max_size=12), ours, ours.map(truncated), ours.map(mutated), crc_good_frames()
    )
    return b"".join(draw(st.lists(piece, max_size=8)))


@given(stream=soups(), cuts=cut_points)
@PROPS
def test_request_decoder_on_a_noisy_line_yields_only_frames_that_were_on_it(
    stream: bytes, cuts: list[int]
) -> None:
    out = feed_chunks(ModbusRequestDecoder(), stream, cuts)
    assert all(found_on_wire_request(r, stream) for r in out), out


@given(stream=soups(), cuts=cut_points, device=st.sampled_from([None, 1]))
@PROPS
def test_reply_decoder_on_a_noisy_line_yields_only_frames_that_were_on_it(
    stream: bytes, cuts: list[int], device: int | None
) -> None:
    out = feed_chunks(ModbusReplyDecoder(device), stream, cuts)
    assert all(wire_of_reply(r) in stream for r in out), out


# --- chunking: output and stats never depend on it -----------------------------------

REPLY_FILTERS = [
    (None, None),
    (1, None),
    (None, FC_READ_COILS),
    (1, FC_WRITE_COIL),
    (1, FC_WRITE_COILS),
]
reply_filters = st.sampled_from(REPLY_FILTERS)


@given(stream=soups(), cuts=cut_points)
@PROPS
def test_request_decoder_on_a_noisy_line_yields_the_same_frames_and_stats_whatever_the_chunking(
    stream: bytes, cuts: list[int]
) -> None:
    whole, chunked = ModbusRequestDecoder(), ModbusRequestDecoder()
    assert feed_chunks(chunked, stream, cuts) == whole.feed(stream)
    assert chunked.stats == whole.stats
    assert chunked._buf == whole._buf
    assert chunked.flush() == whole.flush()


@given(stream=soups(), cuts=cut_points, filters=reply_filters)
@PROPS
def test_reply_decoder_on_a_noisy_line_yields_the_same_frames_and_stats_whatever_the_chunking(
    stream: bytes, cuts: list[int], filters: tuple[int | None, int | None]
) -> None:
    whole, chunked = ModbusReplyDecoder(*filters), ModbusReplyDecoder(*filters)
    assert feed_chunks(chunked, stream, cuts) == whole.feed(stream)
    assert chunked.stats == whole.stats
    assert chunked._buf == whole._buf
    assert chunked.flush() == whole.flush()


@given(stream=soups(), filters=reply_filters)
@PROPS
def test_reply_decoder_fed_byte_by_byte_yields_the_same_frames_and_stats_as_whole(
    stream: bytes, filters: tuple[int | None, int | None]
) -> None:
    whole, bytewise = ModbusReplyDecoder(*filters), ModbusReplyDecoder(*filters)
    assert feed_bytewise(bytewise, stream) == whole.feed(stream)
    assert bytewise.stats == whole.stats


# A 64-coil write whose data bytes happen to be a whole "coil 0 ON" frame of device 1.
EMBEDDED = write_coil(1, 0, on=True)  # 01 05 00 00 ff 00 8c 3a
OUTER_REQUEST = write_coils(1, 0, unpack_bits(EMBEDDED, 64))  # 17 bytes
OUTER_REPLY = bits_reply(1, FC_READ_COILS, unpack_bits(EMBEDDED, 64))  # 13 bytes


def test_outer_request_whole_decodes_as_one_fc0f() -> None:
    assert [r.function for r in ModbusRequestDecoder().feed(OUTER_REQUEST)] == [FC_WRITE_COILS]


def test_fc0f_request_split_inside_decodes_as_when_whole() -> None:
    """The FC05 frame inside the FC0F's data is not taken when the stream is split there
    (it was, with the former look-ahead: 01 0f 00 00 00 40 08 01 05 00 00 ff 00 8c 3a ab af
    split after byte 15 gave 'coil 0 ON' and lost the write)."""
    decoder = ModbusRequestDecoder()
    out = decoder.feed(OUTER_REQUEST[:15]) + decoder.feed(OUTER_REQUEST[15:])
    assert [r.function for r in out] == [FC_WRITE_COILS]


def test_fc01_reply_split_inside_decodes_as_when_whole() -> None:
    decoder = ModbusReplyDecoder(1)
    out = decoder.feed(OUTER_REPLY[:11]) + decoder.feed(OUTER_REPLY[11:])
    assert [r.function for r in out] == [FC_READ_COILS]


@pytest.mark.parametrize(
    ("decoder", "frame"),
    [(ModbusRequestDecoder, OUTER_REQUEST), (ModbusReplyDecoder, OUTER_REPLY)],
    ids=["fc0f-request", "fc01-reply"],
)
def test_frame_with_a_frame_in_its_data_split_anywhere_decodes_as_when_whole(
    decoder: Callable[[], RtuDecoder], frame: bytes
) -> None:
    whole = decoder().feed(frame)
    for cut in range(len(frame) + 1):
        split_decoder = decoder()
        out = split_decoder.feed(frame[:cut]) + split_decoder.feed(frame[cut:])
        assert out == whole, f"cut after {cut} bytes"


def test_bad_frame_count_does_not_depend_on_chunking() -> None:
    """A complete candidate with a bad CRC is counted once, however the bytes arrive (the
    former look-ahead counted the same windows again on every feed: 5 whole, 57 bytewise)."""
    stream = h("01 0f 00 00 00 08 f7") + h("01 05 00 00 ff 00 00 00") + b"\xff" * 10
    stream += NO_FRAME_TAIL  # completes the FC0F candidate (byte count f7: 256 bytes)
    whole, bytewise = ModbusRequestDecoder(), ModbusRequestDecoder()
    whole.feed(stream)
    feed_bytewise(bytewise, stream)
    assert bytewise.stats == whole.stats
    # the 256-byte FC0F at 0, exception "08 f7 01 05 00" at 5, FC01 "f7 01 05 00 00 ff 00 00"
    # at 6, FC05 at 7, exceptions "00 ff 00 00 00" at 10 and "00 ff ff ff ff" at 14
    assert whole.stats.bad_frames == 6


# Chunk-dependence that remains: pymodbus sizes two reply classes from a head that is not
# yet complete, and differently once it is. The bus always names the function it waits
# for (FC01/02/05/0F), so only a decoder without a function filter is concerned.
FC2B_HEAD = h("01 2b 0e 00 00 00 00 01 00 64")  # Read Device Identification, 1 object of 0x64
FC08_HEAD = h("01 08 00 15 00 00 00")  # Diagnostics 0x15 (Get/Clear Modbus Plus)
EXC_REPLY = h("01 85 02 c3 51")


def test_fc2b_reply_head_split_decodes_as_when_whole() -> None:
    stream = FC2B_HEAD + EXC_REPLY
    whole, chunked = ModbusReplyDecoder(1), ModbusReplyDecoder(1)
    assert chunked.feed(stream[:4]) + chunked.feed(stream[4:]) == whole.feed(stream)
    assert chunked.stats == whole.stats


def test_fc08_0015_reply_head_split_decodes_as_when_whole() -> None:
    stream = FC08_HEAD + EXC_REPLY
    whole, chunked = ModbusReplyDecoder(1), ModbusReplyDecoder(1)
    assert chunked.feed(stream[:7]) + chunked.feed(stream[7:]) == whole.feed(stream)
    assert chunked.stats == whole.stats


@pytest.mark.parametrize("head", [FC2B_HEAD, FC08_HEAD], ids=["fc2b", "fc08-0015"])
def test_with_a_function_filter_those_heads_cost_nothing(head: bytes) -> None:
    decoder = ModbusReplyDecoder(1, FC_WRITE_COIL)
    assert decoder.feed(head[:4]) + decoder.feed(head[4:] + EXC_REPLY) == [
        ModbusReply(1, FC_WRITE_COIL, exception=2)
    ]
    assert (decoder.stats.discarded_bytes, decoder.stats.bad_frames) == (len(head), 0)


# --- an incomplete candidate is waited for, at most one RTU frame ---------------------


@given(case=request_cases(), cut=st.integers(0, 1000))
@PROPS
def test_request_decoder_waits_for_the_rest_of_an_incomplete_frame(
    case: RequestCase, cut: int
) -> None:
    cut %= len(case.wire)
    decoder = ModbusRequestDecoder()
    assert decoder.feed(case.wire[:cut]) == []
    assert decoder._buf == case.wire[:cut]  # held, nothing skipped
    assert decoder.feed(case.wire[cut:]) == [case.decoded]
    assert decoder.stats.discarded_bytes == 0


@given(case=reply_cases(), cut=st.integers(0, 1000), filters=reply_filters)
@PROPS
def test_reply_decoder_waits_for_the_rest_of_an_incomplete_frame(
    case: ReplyCase, cut: int, filters: tuple[int | None, int | None]
) -> None:
    device, function = filters
    wanted = (device is None or case.decoded.device == device) and (
        function is None or case.decoded.function == function
    )
    cut %= len(case.wire)
    decoder = ModbusReplyDecoder(device, function)
    assert decoder.feed(case.wire[:cut]) == []
    assert decoder.feed(case.wire[cut:]) == ([case.decoded] if wanted else [])
    if wanted:
        assert decoder.stats.discarded_bytes == 0


DECODERS: dict[str, Callable[[], RtuDecoder]] = {
    "request": ModbusRequestDecoder,
    "reply": ModbusReplyDecoder,
    "reply-device-1": lambda: ModbusReplyDecoder(1),
    "reply-device-1-fc05": lambda: ModbusReplyDecoder(1, FC_WRITE_COIL),
}


@given(
    stream=st.one_of(soups(), st.binary(max_size=700)),
    cuts=cut_points,
    name=st.sampled_from(sorted(DECODERS)),
)
@PROPS
def test_decoder_never_holds_a_whole_rtu_frame(stream: bytes, cuts: list[int], name: str) -> None:
    """What is held after a feed is the start of one candidate, shorter than the frame it
    claims to be, and no candidate may claim more than 256 bytes."""
    decoder = DECODERS[name]()
    fed = b""
    for chunk in split(stream, cuts):
        decoder.feed(chunk)
        fed += chunk
        assert len(decoder._buf) < MAX_RTU_FRAME
        assert fed.endswith(decoder._buf)


@pytest.mark.parametrize(
    ("decoder", "claim"),
    [
        (ModbusRequestDecoder, h("01 17") + b"\xff" * 10),  # FC17: 0xff + 13 = 268 bytes
        (ModbusReplyDecoder, h("01 18 ff ff")),  # FC18 reply: 65539 bytes
        (ModbusReplyDecoder, h("01 03 ff ff")),  # FC03 reply: 260 bytes
    ],
    ids=["fc17-request", "fc18-reply", "fc03-reply"],
)
def test_candidate_claiming_more_than_256_bytes_is_rejected_at_once(
    decoder: Callable[[], RtuDecoder], claim: bytes
) -> None:
    """Sized from a 12-byte head (FC17's byte count is its 11th byte), rejected without
    waiting; only the last 3 bytes, too few to size anything, are held."""
    d = decoder()
    assert d.feed(claim) == []
    assert d.stats.discarded_bytes == len(claim) - 3
    assert len(d._buf) == 3


def test_fc17_request_is_sized_from_its_11th_byte_however_it_is_split() -> None:
    frame = seal(h("01 17 00 00 00 01 00 00 00 01 02 00 05"))  # read 1, write 1 register
    (whole,) = ModbusRequestDecoder().feed(frame)
    assert (whole.device, whole.function) == (1, 0x17)
    for cut in range(len(frame) + 1):
        decoder = ModbusRequestDecoder()
        assert decoder.feed(frame[:cut]) + decoder.feed(frame[cut:]) == [whole], cut


def test_request_decoder_never_holds_more_than_one_rtu_frame_of_noise() -> None:
    decoder = ModbusRequestDecoder()
    noise = h("01 17") + b"\xff" * 300
    assert decoder.feed(noise) == []
    assert decoder.stats.discarded_bytes >= len(noise) - MAX_RTU_FRAME
    assert len(decoder._buf) <= 3


def test_reply_decoder_never_holds_more_than_one_rtu_frame_of_noise() -> None:
    decoder = ModbusReplyDecoder()
    noise = h("01 18 ff ff") + b"\xff" * 300
    assert decoder.feed(noise) == []
    assert decoder.stats.discarded_bytes >= len(noise) - MAX_RTU_FRAME
    assert len(decoder._buf) <= 3


# --- flush: the silence that ends a frame --------------------------------------------


def test_frame_silence_is_3_5_character_times_up_to_19200_baud() -> None:
    assert frame_silence(9600) == pytest.approx(3.5 * 10 / 9600)
    assert frame_silence(19200) == pytest.approx(3.5 * 10 / 19200)


def test_frame_silence_is_1_75_ms_above_19200_baud() -> None:
    assert frame_silence(38400) == pytest.approx(0.00175)
    assert frame_silence(115200) == pytest.approx(0.00175)


CUT_SHORT_CASES = pytest.mark.parametrize(
    ("decoder", "frame"),
    [
        (ModbusRequestDecoder, h("01 02 00 00 00 08 79 cc")),
        (ModbusRequestDecoder, seal(h("01 0f 00 13 00 0a 02 cd 01"))),
        (ModbusReplyDecoder, h("01 85 02 c3 51")),
        (ModbusReplyDecoder, seal(h("01 01 03 cd 6b 05"))),
    ],
    ids=["fc02-request", "fc0f-request", "exception-reply", "fc01-reply"],
)


@CUT_SHORT_CASES
def test_flush_drops_a_partial_frame_and_counts_its_bytes(
    decoder: Callable[[], RtuDecoder], frame: bytes
) -> None:
    (alone,) = decoder().feed(frame)
    for cut in range(1, len(frame)):
        d = decoder()
        assert d.feed(frame[:cut]) == []
        assert d.stats.discarded_bytes == 0, f"cut after {cut} bytes"
        assert d.flush() == cut
        assert (d.stats.discarded_bytes, d.stats.bad_frames) == (cut, 0)
        assert d.flush() == 0
        assert d.feed(frame) == [alone], f"cut after {cut} bytes"
        assert d.stats.frames == 1


@CUT_SHORT_CASES
def test_frame_cut_short_then_a_whole_frame_is_held_or_found_never_lost(
    decoder: Callable[[], RtuDecoder], frame: bytes
) -> None:
    """Without the silence that ended the cut frame, its bytes and the whole frame's may form
    a candidate longer than both: the decoder waits for it (never past one RTU frame); once
    the line completes it, its CRC fails and the whole frame comes out."""
    (alone,) = decoder().feed(frame)
    for cut in range(1, len(frame)):
        d = decoder()
        out = d.feed(frame[:cut] + frame)
        assert out in ([], [alone]), f"cut after {cut} bytes"
        if not out:
            assert d._buf.endswith(frame), f"cut after {cut} bytes"  # held, not skipped
        assert out + d.feed(NO_FRAME_TAIL) == [alone], f"cut after {cut} bytes"


def test_flush_of_an_empty_decoder_drops_nothing() -> None:
    for decoder in (ModbusRequestDecoder(), ModbusReplyDecoder(), ModbusReplyDecoder(1, 5)):
        assert decoder.flush() == 0
        assert decoder.stats.discarded_bytes == 0


def test_flush_keeps_the_other_stats() -> None:
    decoder = ModbusRequestDecoder()
    decoder.feed(h("01 02 00 00 00 08 79 cd") + h("01 02 00 00 00 08 79 cc") + h("01 0f 00"))
    before = (decoder.stats.frames, decoder.stats.bad_frames, decoder.stats.discarded_bytes)
    assert decoder.flush() == 3
    assert (decoder.stats.frames, decoder.stats.bad_frames) == before[:2]
    assert decoder.stats.discarded_bytes == before[2] + 3


# --- random garbage before frames ----------------------------------------------------


@given(
    garbage=st.binary(max_size=60),
    first=request_cases(),
    second=request_cases(),
    cuts=cut_points,
)
@PROPS
def test_request_decoder_random_garbage_then_silence_then_two_frames_both_are_found(
    garbage: bytes, first: RequestCase, second: RequestCase, cuts: list[int]
) -> None:
    decoder = ModbusRequestDecoder()
    feed_chunks(decoder, garbage, cuts)
    held = len(decoder._buf)
    assert decoder.flush() == held
    assert decoder.stats.discarded_bytes <= len(garbage)
    if decoder.stats.frames == 0:
        assert decoder.stats.discarded_bytes == len(garbage)
    out = feed_chunks(decoder, first.wire + second.wire, cuts)
    assert out == [first.decoded, second.decoded]


@given(
    garbage=st.binary(max_size=60),
    first=reply_cases(),
    second=reply_cases(),
    cuts=cut_points,
)
@PROPS
def test_reply_decoder_random_garbage_then_silence_then_two_frames_both_are_found(
    garbage: bytes, first: ReplyCase, second: ReplyCase, cuts: list[int]
) -> None:
    decoder = ModbusReplyDecoder()
    feed_chunks(decoder, garbage, cuts)
    decoder.flush()
    out = feed_chunks(decoder, first.wire + second.wire, cuts)
    assert out == [first.decoded, second.decoded]


def check_garbage_then_two_frames_without_silence(
    decoder: Callable[[], RtuDecoder],
    garbage: bytes,
    wires: tuple[bytes, bytes],
    expected: list[object],
    cuts: list[int],
) -> None:
    """Without a silence the frames may be held behind a candidate that starts in the
    garbage, never lost: once the line completes that candidate it fails its CRC and the
    decoder goes on at its next byte. A frame is lost only to a CRC-good window that starts
    in the garbage and runs into it (a forged frame, see the *_limit_* test)."""
    stream = garbage + wires[0] + wires[1]
    d = decoder()
    out: list[object] = list(feed_chunks(d, stream, cuts))
    held = bytes(d._buf)
    assert stream.endswith(held)
    if out[-2:] != expected:
        # not out (yet): then the second frame is held whole, waiting
        assert len(held) >= len(wires[1]) or stray_frame(
            stream, range(len(garbage)), decoder, ending_after=len(garbage)
        ), (out, held.hex(" "))
    out += d.feed(NO_FRAME_TAIL)
    if out[-2:] != expected:
        line = stream + NO_FRAME_TAIL
        assert stray_frame(line, range(len(garbage)), decoder, ending_after=len(garbage)), out


@given(
    garbage=st.binary(max_size=60),
    first=request_cases(),
    second=request_cases(),
    cuts=cut_points,
)
@PROPS
def test_request_decoder_random_garbage_then_two_frames_they_are_held_or_found_never_lost(
    garbage: bytes, first: RequestCase, second: RequestCase, cuts: list[int]
) -> None:
    check_garbage_then_two_frames_without_silence(
        ModbusRequestDecoder,
        garbage,
        (first.wire, second.wire),
        [first.decoded, second.decoded],
        cuts,
    )


@given(
    garbage=st.binary(max_size=60),
    first=reply_cases(),
    second=reply_cases(),
    cuts=cut_points,
)
@PROPS
def test_reply_decoder_random_garbage_then_two_frames_they_are_held_or_found_never_lost(
    garbage: bytes, first: ReplyCase, second: ReplyCase, cuts: list[int]
) -> None:
    check_garbage_then_two_frames_without_silence(
        ModbusReplyDecoder,
        garbage,
        (first.wire, second.wire),
        [first.decoded, second.decoded],
        cuts,
    )


# --- garbage that cannot start a frame costs nothing ---------------------------------

# Bytes that cannot start a candidate: device ids above 247.
not_a_device = st.binary(max_size=30).map(lambda b: bytes(0xF8 | x for x in b))


@given(data=st.data(), cuts=cut_points)
@PROPS
def test_request_decoder_garbage_that_cannot_start_a_frame_costs_no_frame(
    data: st.DataObject, cuts: list[int]
) -> None:
    cases = data.draw(st.lists(request_cases(), min_size=1, max_size=5))
    gaps = data.draw(st.lists(not_a_device, min_size=len(cases), max_size=len(cases)))
    decoder = ModbusRequestDecoder()
    stream = b"".join(g + c.wire for g, c in zip(gaps, cases, strict=True))
    assert feed_chunks(decoder, stream, cuts) == [c.decoded for c in cases]
    assert decoder.stats.discarded_bytes == sum(map(len, gaps))
    assert decoder.stats.frames == len(cases)


@given(data=st.data(), cuts=cut_points)
@PROPS
def test_reply_decoder_for_device_1_garbage_without_01_costs_no_frame(
    data: st.DataObject, cuts: list[int]
) -> None:
    cases = data.draw(st.lists(reply_cases(device=st.just(1)), min_size=1, max_size=5))
    no_01 = st.binary(max_size=30).map(lambda b: b.replace(b"\x01", b""))
    gaps = data.draw(st.lists(no_01, min_size=len(cases), max_size=len(cases)))
    decoder = ModbusReplyDecoder(1)
    stream = b"".join(g + c.wire for g, c in zip(gaps, cases, strict=True))
    assert feed_chunks(decoder, stream, cuts) == [c.decoded for c in cases]
    assert decoder.stats.discarded_bytes == sum(map(len, gaps))


@st.composite
def fc05_reply_cases(draw: st.DrawFn, device: int) -> ReplyCase:
    """Replies to FC05: the echo, or an exception (function 0x85)."""
    if draw(st.booleans()):
        code = draw(st.integers(1, 0x0B))
        return ReplyCase(
            exception_reply(device, FC_WRITE_COIL, code),
            seal(bytes((device, 0x85, code))),
            ModbusReply(device, FC_WRITE_COIL, exception=code),
        )
    address, value = draw(words), draw(words)
    return ReplyCase(
        echo_reply(device, FC_WRITE_COIL, address, value),
        frame_of(device, FC_WRITE_COIL, "HH", address, value),
        ModbusReply(device, FC_WRITE_COIL, address=address, value=value),
    )


@given(data=st.data(), cuts=cut_points)
@PROPS
def test_reply_decoder_for_fc05_garbage_without_05_or_85_costs_no_frame(
    data: st.DataObject, cuts: list[int]
) -> None:
    """With a function filter, a device byte followed by another function code cannot start
    a candidate: a long frame claimed by the garbage (01 01 f0 ...) cannot hold anything."""
    cases = data.draw(st.lists(fc05_reply_cases(1), min_size=1, max_size=5))
    other = st.binary(max_size=30).map(lambda b: b.replace(b"\x05", b"").replace(b"\x85", b""))
    gaps = data.draw(st.lists(other, min_size=len(cases), max_size=len(cases)))
    decoder = ModbusReplyDecoder(1, FC_WRITE_COIL)
    stream = b"".join(g + c.wire for g, c in zip(gaps, cases, strict=True))
    assert feed_chunks(decoder, stream, cuts) == [c.decoded for c in cases]
    assert decoder.stats.discarded_bytes == sum(map(len, gaps))
    assert decoder.stats.bad_frames == 0


def test_unknown_function_codes_before_a_frame_cost_nothing() -> None:
    decoder = ModbusRequestDecoder()
    assert decoder.feed(h("01 41 64") + read_coils(0x64, 0, 8)) == [
        ModbusRequest(0x64, FC_READ_COILS, address=0, count=8)
    ]
    assert (decoder.stats.discarded_bytes, decoder.stats.bad_frames) == (3, 0)


def test_unknown_function_code_is_not_a_frame() -> None:
    decoder = ModbusReplyDecoder()
    assert decoder.feed(seal(h("01 64 00 00 00 00"))) == []


# --- the false candidate that claims a long frame ------------------------------------

FALSE_CANDIDATE = h("02 10 30 03 45")  # device 2, FC10 request: claims 24 bytes
REAL_FC0F = h("01 0f 00 00 00 08 01 00 fe 95")
REAL_FC0F_DECODED = ModbusRequest(1, FC_WRITE_COILS, address=0, count=8, bits=(False,) * 8)
READ_8_INPUTS = h("01 02 00 00 00 08 79 cc")
READ_8_INPUTS_DECODED = ModbusRequest(1, FC_READ_DISCRETE_INPUTS, address=0, count=8)


def test_false_long_candidate_holds_the_real_frame_until_it_completes() -> None:
    """Without timing, 02 10 30 03 45 01 0f ... may be the head of a 24-byte FC10 request
    of device 2: the decoder waits for it rather than guess."""
    decoder = ModbusRequestDecoder()
    assert decoder.feed(FALSE_CANDIDATE + REAL_FC0F) == []
    assert decoder._buf == FALSE_CANDIDATE + REAL_FC0F
    assert decoder.stats.discarded_bytes == 0


def test_false_long_candidate_byte_by_byte_holds_the_real_frame_too() -> None:
    assert feed_bytewise(ModbusRequestDecoder(), FALSE_CANDIDATE + REAL_FC0F) == []


def test_false_long_candidate_then_silence_then_the_real_frame_is_found() -> None:
    decoder = ModbusRequestDecoder()
    assert decoder.feed(FALSE_CANDIDATE) == []
    assert decoder.flush() == len(FALSE_CANDIDATE)
    assert decoder.feed(REAL_FC0F) == [REAL_FC0F_DECODED]
    assert (decoder.stats.discarded_bytes, decoder.stats.frames) == (len(FALSE_CANDIDATE), 1)


def test_false_long_candidate_then_silence_then_the_real_frame_byte_by_byte() -> None:
    decoder = ModbusRequestDecoder()
    assert feed_bytewise(decoder, FALSE_CANDIDATE) == []
    decoder.flush()
    assert feed_bytewise(decoder, REAL_FC0F) == [REAL_FC0F_DECODED]


def test_silence_after_the_held_frames_drops_them_with_the_false_candidate() -> None:
    decoder = ModbusRequestDecoder()
    decoder.feed(FALSE_CANDIDATE + REAL_FC0F)
    assert decoder.flush() == len(FALSE_CANDIDATE + REAL_FC0F)
    assert decoder.stats.discarded_bytes == len(FALSE_CANDIDATE + REAL_FC0F)
    assert decoder.stats.frames == 0


def test_false_long_candidate_completed_by_the_next_frames_is_rejected_and_all_are_found() -> None:
    """The next requests complete the 24-byte candidate: its CRC fails, and every frame
    that starts after it is found."""
    stream = FALSE_CANDIDATE + REAL_FC0F + READ_8_INPUTS + READ_8_INPUTS
    expected = [REAL_FC0F_DECODED, READ_8_INPUTS_DECODED, READ_8_INPUTS_DECODED]
    whole, bytewise = ModbusRequestDecoder(), ModbusRequestDecoder()
    assert whole.feed(stream) == expected
    assert feed_bytewise(bytewise, stream) == expected
    assert whole.stats == bytewise.stats
    assert whole.stats.discarded_bytes == len(FALSE_CANDIDATE)
    assert whole.stats.frames == 3
    # the FC10 at 0, FC03 "30 03 45 01 0f 00 00 00" at 2, FC01 "45 01 0f 00 00 00 08 01" at 4
    assert whole.stats.bad_frames == 3


def test_reply_claiming_240_data_bytes_holds_the_real_reply_until_silence() -> None:
    decoder = ModbusReplyDecoder(1)
    assert decoder.feed(h("01 01 f0") + EXC_REPLY) == []  # a 245-byte FC01 reply?
    assert decoder.flush() == 8
    assert decoder.feed(EXC_REPLY) == [ModbusReply(1, FC_WRITE_COIL, exception=2)]


def test_reply_claiming_240_data_bytes_is_no_candidate_for_a_decoder_waiting_for_fc05() -> None:
    decoder = ModbusReplyDecoder(1, FC_WRITE_COIL)
    assert decoder.feed(h("01 01 f0") + EXC_REPLY) == [ModbusReply(1, FC_WRITE_COIL, exception=2)]
    assert (decoder.stats.discarded_bytes, decoder.stats.bad_frames) == (3, 0)


# --- device and function filters ------------------------------------------------------


def test_reply_decoder_for_device_1_ignores_a_reply_from_device_2() -> None:
    decoder = ModbusReplyDecoder(1)
    assert decoder.feed(exception_reply(2, FC_WRITE_COIL, 2)) == []
    assert decoder.stats.frames == 0


def test_reply_decoder_for_device_1_picks_its_reply_out_of_device_2_traffic() -> None:
    ours = echo_reply(1, FC_WRITE_COIL, 0x200, 5)
    stream = echo_reply(2, FC_WRITE_COIL, 0x200, 5) + ours + bits_reply(2, 2, [True] * 8)
    assert ModbusReplyDecoder(1).feed(stream) == [
        ModbusReply(1, FC_WRITE_COIL, address=0x200, value=5)
    ]


def test_reply_decoder_for_fc05_skips_crc_good_replies_of_other_functions_and_devices() -> None:
    decoder = ModbusReplyDecoder(1, FC_WRITE_COIL)
    stream = (
        bits_reply(1, FC_READ_COILS, [True] * 8)
        + echo_reply(1, FC_WRITE_REGISTER, 0x200, 5)
        + exception_reply(1, FC_WRITE_COILS, 2)
        + echo_reply(2, FC_WRITE_COIL, 0x200, 5)
        + exception_reply(2, FC_WRITE_COIL, 2)
        + exception_reply(1, FC_WRITE_COIL, 3)  # exception replies to FC05 are replies
        + echo_reply(1, FC_WRITE_COIL, 0x200, 5)
    )
    assert decoder.feed(stream) == [
        ModbusReply(1, FC_WRITE_COIL, exception=3),
        ModbusReply(1, FC_WRITE_COIL, address=0x200, value=5),
    ]
    assert decoder.stats.frames == 2


@pytest.mark.parametrize(
    "function", [FC_READ_COILS, FC_READ_DISCRETE_INPUTS, FC_WRITE_COIL, FC_WRITE_COILS]
)
def test_reply_decoder_for_a_function_takes_its_exception_reply(function: int) -> None:
    decoder = ModbusReplyDecoder(7, function)
    assert decoder.feed(exception_reply(7, function, 4)) == [ModbusReply(7, function, exception=4)]


def frame_starts(wires: Sequence[bytes]) -> set[int]:
    starts, at = set(), 0
    for wire in wires:
        starts.add(at)
        at += len(wire)
    return starts


@given(
    cases=st.lists(reply_cases(device=st.sampled_from([1, 2])), min_size=1, max_size=8),
    cuts=cut_points,
    function=st.sampled_from([None, FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS]),
)
@PROPS
def test_reply_decoder_between_silences_yields_exactly_the_frames_it_filters_for(
    cases: list[ReplyCase], cuts: list[int], function: int | None
) -> None:
    decoder = ModbusReplyDecoder(1, function)
    out: list[ModbusReply] = []
    for case in cases:
        out += feed_chunks(decoder, case.wire, cuts)
        decoder.flush()
    assert out == [
        c.decoded for c in cases if c.decoded.device == 1 and function in (None, c.decoded.function)
    ]


@given(
    cases=st.lists(reply_cases(device=st.sampled_from([1, 2])), min_size=1, max_size=8),
    cuts=cut_points,
    function=st.sampled_from([None, FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS]),
)
@PROPS
def test_reply_decoder_without_silences_yields_the_frames_it_filters_for(
    cases: list[ReplyCase], cuts: list[int], function: int | None
) -> None:
    """Bytes inside a frame it skips may start a candidate that holds the next frames; the
    line completes it, its CRC fails, and they come out (unless it is a forged frame)."""
    stream = b"".join(c.wire for c in cases)
    decoder = ModbusReplyDecoder(1, function)
    out = feed_chunks(decoder, stream, cuts) + decoder.feed(NO_FRAME_TAIL)
    expected = [
        c.decoded for c in cases if c.decoded.device == 1 and function in (None, c.decoded.function)
    ]
    if out != expected:
        line = stream + NO_FRAME_TAIL
        starts = frame_starts([c.wire for c in cases])
        others = (i for i in range(len(stream)) if i not in starts)
        assert stray_frame(line, others, lambda: ModbusReplyDecoder(1, function)), out


# --- statistics -----------------------------------------------------------------------


def test_bad_crc_is_counted_and_the_next_frame_still_found() -> None:
    decoder = ModbusRequestDecoder()
    assert decoder.feed(h("01 02 00 00 00 08 79 cd")) == []
    assert decoder.stats.bad_frames == 1
    assert "CRC" in decoder.stats.last_error
    assert decoder.feed(h("01 02 00 00 00 08 79 cc")) == [
        ModbusRequest(1, FC_READ_DISCRETE_INPUTS, address=0, count=8)
    ]
    assert decoder.stats.frames == 1


# --- FC0F whose fields disagree ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "quantity"),
    [
        (h("01 0f 00 00 00 10 01 ff"), 16),  # 16 coils in 1 byte
        (h("01 0f 00 00 00 08 02 ff 00"), 8),  # 8 coils in 2 bytes
        (h("01 0f 00 00 00 09 01 ff"), 9),  # 9 coils in 1 byte
    ],
    ids=["16-coils-1-byte", "8-coils-2-bytes", "9-coils-1-byte"],
)
def test_fc0f_whose_byte_count_disagrees_with_its_quantity_is_not_a_shorter_write(
    body: bytes, quantity: int
) -> None:
    """The spec wants byte count = ceil(quantity / 8); a board answers exception 03. The
    decoder keeps the quantity and marks the request invalid, never a shorter write."""
    out = ModbusRequestDecoder().feed(seal(body))
    assert [(r.device, r.function, r.address, r.count, r.valid) for r in out] == [
        (1, FC_WRITE_COILS, 0, quantity, False)
    ]


def test_well_formed_fc0f_requests_are_valid() -> None:
    for frame in (OUTER_REQUEST, REAL_FC0F, seal(h("01 0f 00 13 00 0a 02 cd 01"))):
        (request,) = ModbusRequestDecoder().feed(frame)
        assert request.valid, frame.hex(" ")


@given(case=request_cases())
@PROPS
def test_every_request_the_encoders_build_decodes_as_valid(case: RequestCase) -> None:
    assert [r.valid for r in ModbusRequestDecoder().feed(case.wire)] == [True]


# --- limits ---------------------------------------------------------------------------


def test_limit_forged_crc_in_garbage_can_hide_the_next_frame() -> None:
    """Documents a limit of RTU framing without timing, not a wish.

    ``01 05 3d e4`` + the first 4 bytes of the real request form an FC05 frame with a
    good CRC (CRC(01 05 3d e4 01 02) = 00 00): the decoder takes it and the real request
    is lost. Without timing nothing tells such a window from a frame; a silence (flush)
    between the garbage and the request would have kept it.
    """
    out = ModbusRequestDecoder().feed(h("01 05 3d e4") + h("01 02 00 00 00 08 79 cc"))
    assert out == [ModbusRequest(1, FC_WRITE_COIL, address=0x3DE4, value=0x0102)]
    decoder = ModbusRequestDecoder()
    decoder.feed(h("01 05 3d e4"))
    decoder.flush()
    assert decoder.feed(h("01 02 00 00 00 08 79 cc")) == [READ_8_INPUTS_DECODED]


def test_stray_frame_finds_the_forged_frame_of_the_limit_test() -> None:
    """The helper the properties fall back on, checked on the one known forged frame."""
    stream = h("01 05 3d e4") + h("01 02 00 00 00 08 79 cc")
    assert stray_frame(stream, range(4), ModbusRequestDecoder, ending_after=4)
    assert not stray_frame(stream, range(1, 4), ModbusRequestDecoder, ending_after=4)
    assert not stray_frame(stream, range(4), lambda: ModbusReplyDecoder(2), ending_after=4)
