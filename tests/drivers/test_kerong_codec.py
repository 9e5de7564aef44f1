"""Byte-exact and property tests for the Kerong KR-CU48 / KR-CU16 codecs (``drivers/kerong.py``).

Byte vectors are the ones in ``shared/design/HARDWARE.md``. Every other expected frame
is built here from the documented rule (``STX body ETX SUM``, SUM = low byte of the sum
of every byte before it), never with the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerd.drivers.errors import EncodeError, FrameError
from lockerd.drivers.framing import StreamDecoder
from lockerd.drivers.kerong import (
    CU16_REQUEST_CMDS,
    Cu16ReplyDecoder,
    Cu16Request,
    Cu16RequestDecoder,
    Cu16Status,
    Cu48ReplyDecoder,
    Cu48Request,
    Cu48RequestDecoder,
    Cu48Status,
    cu16_read_status,
    cu16_unlock,
    cu48_read_status,
    cu48_unlock,
    decode_cu16_status,
    decode_cu48_status,
)

STX = 0x02
ETX = 0x03

PROPS = settings(max_examples=50, deadline=None)
FEW = settings(max_examples=25, deadline=None)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def sealed(*body: int) -> bytes:
    """``STX body ETX SUM`` built from the documented rule, independently of the driver."""
    head = bytes((STX, *body, ETX))
    return head + bytes((sum(head) & 0xFF,))


def with_sum(raw: bytes) -> bytes:
    """``raw`` followed by its SUM byte, whatever ``raw`` is (to build one-fault frames)."""
    return raw + bytes((sum(raw) & 0xFF,))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` taken modulo its length + 1 (repeats give empty chunks)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


# ======================================================================================
# KR-CU48 byte vectors
# ======================================================================================


def test_cu48_read_status_board0_is_the_hardware_md_vector() -> None:
    assert cu48_read_status(0).encode() == h("02 00 00 50 03 55")


def test_cu48_unlock_lock1_board0_is_the_hardware_md_vector() -> None:
    assert cu48_unlock(0, 1).encode() == h("02 00 00 51 03 56")


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (cu48_read_status(1), "02 01 00 50 03 56"),
        (cu48_read_status(9), "02 09 00 50 03 5e"),
        (cu48_read_status(10), "02 0a 00 50 03 5f"),  # 0x0A = every board on the bus
        (cu48_unlock(0, 2), "02 00 01 51 03 57"),
        (cu48_unlock(9, 48), "02 09 2f 51 03 8e"),
        (cu48_unlock(3, 17), "02 03 10 51 03 69"),
    ],
    ids=["status-b1", "status-b9", "status-broadcast", "unlock-b0-l2", "unlock-b9-l48", "b3-l17"],
)
def test_cu48_request_hand_computed_vectors(request_: Cu48Request, wire: str) -> None:
    assert request_.encode() == h(wire)


def test_cu48_encoders_follow_the_checksum_rule_for_every_board_and_lock() -> None:
    for address in range(11):
        assert cu48_read_status(address).encode() == sealed(address, 0x00, 0x50)
        for channel in range(1, 49):
            assert cu48_unlock(address, channel).encode() == sealed(address, channel - 1, 0x51)


@pytest.mark.parametrize("address", [-1, 11, 0x30, 255])
def test_cu48_read_status_rejects_address_out_of_range(address: int) -> None:
    with pytest.raises(EncodeError):
        cu48_read_status(address)


@pytest.mark.parametrize("address", [-1, 11, 255])
def test_cu48_unlock_rejects_address_out_of_range(address: int) -> None:
    with pytest.raises(EncodeError):
        cu48_unlock(address, 1)


@pytest.mark.parametrize("channel", [-1, 0, 49, 255])
def test_cu48_unlock_rejects_channel_out_of_range(channel: int) -> None:
    with pytest.raises(EncodeError):
        cu48_unlock(0, channel)


def test_encode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="channel"):
        cu48_unlock(0, 0)


# A status reply built by hand: board 3, locks 1, 10 and 48 set.
# b1 = 0x01 (lock 1), b2 = 0x02 (lock 10), b6 = 0x80 (lock 48).
# SUM = 02+03+00+65+01+02+00+00+00+80+03 = 0xF0.
CU48_STATUS_WIRE = h("02 03 00 65 01 02 00 00 00 80 03 f0")


def test_cu48_hand_built_status_reply_decodes_its_fields() -> None:
    status = decode_cu48_status(CU48_STATUS_WIRE)
    assert (status.address, status.lock, status.bitmap) == (3, 0, h("01 02 00 00 00 80"))


def test_cu48_status_bits_map_b1_bit0_to_lock1_and_b6_bit7_to_lock48() -> None:
    bits = decode_cu48_status(CU48_STATUS_WIRE).bits()
    assert len(bits) == 48
    assert [lock for lock, bit in enumerate(bits, start=1) if bit] == [1, 10, 48]


def test_cu48_status_bits_each_lock_alone() -> None:
    for lock in range(1, 49):
        bitmap = bytearray(6)
        bitmap[(lock - 1) // 8] = 1 << ((lock - 1) % 8)
        bits = Cu48Status(0, 0, bytes(bitmap)).bits()
        assert [i for i, bit in enumerate(bits, start=1) if bit] == [lock], f"lock {lock}"


def test_cu48_status_encodes_to_the_hand_built_reply() -> None:
    assert Cu48Status(3, 0, h("01 02 00 00 00 80")).encode() == CU48_STATUS_WIRE


@pytest.mark.parametrize("size", [0, 5, 7])
def test_cu48_status_with_bitmap_not_6_bytes_refuses_to_encode(size: int) -> None:
    with pytest.raises(EncodeError):
        Cu48Status(0, 0, bytes(size)).encode()


@given(bitmap=st.binary(min_size=6, max_size=6))
@PROPS
def test_cu48_status_bits_are_the_little_endian_bitmap(bitmap: bytes) -> None:
    value = int.from_bytes(bitmap, "little")
    assert Cu48Status(0, 0, bitmap).bits() == tuple(bool(value >> i & 1) for i in range(48))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(CU48_STATUS_WIRE[:-1] + b"\xf1", id="bad-checksum"),
        pytest.param(sealed(3, 0, 0x65, 1, 2, 0, 0, 0)[:-1], id="short"),
        pytest.param(sealed(3, 0, 0x65, 1, 2, 0, 0, 0), id="11-bytes"),
        pytest.param(sealed(3, 0, 0x65, 1, 2, 0, 0, 0, 0x80, 0), id="13-bytes"),
        pytest.param(sealed(3, 0, 0x50, 1, 2, 0, 0, 0, 0x80), id="command-50"),
        pytest.param(with_sum(b"\x00" + CU48_STATUS_WIRE[1:-1]), id="no-stx"),
        pytest.param(with_sum(CU48_STATUS_WIRE[:-2] + b"\x04"), id="no-etx"),
        pytest.param(b"", id="empty"),
    ],
)
def test_decode_cu48_status_rejects_malformed_frame(raw: bytes) -> None:
    with pytest.raises(FrameError):
        decode_cu48_status(raw)


# ======================================================================================
# KR-CU16 byte vectors
# ======================================================================================


def test_cu16_unlock_lock1_board0_is_the_hardware_md_vector() -> None:
    assert cu16_unlock(0, 1).encode() == h("02 00 31 03 36")


def test_cu16_read_status_board0() -> None:
    assert cu16_read_status(0).encode() == h("02 00 30 03 35")


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (cu16_unlock(0, 2), "02 01 31 03 37"),
        (cu16_unlock(1, 16), "02 1f 31 03 55"),
        (cu16_unlock(15, 16), "02 ff 31 03 35"),  # sum 0x135: only the low byte
        (cu16_read_status(1), "02 10 30 03 45"),
        (cu16_read_status(15), "02 f0 30 03 25"),
    ],
    ids=["b0-l2", "b1-l16", "b15-l16", "status-b1", "status-b15"],
)
def test_cu16_request_hand_computed_vectors(request_: Cu16Request, wire: str) -> None:
    assert request_.encode() == h(wire)


def test_cu16_encoders_put_board_in_high_nibble_and_lock_in_low_nibble() -> None:
    for board in range(16):
        assert cu16_read_status(board).encode() == sealed(board << 4, 0x30)
        for channel in range(1, 17):
            expected = sealed(board << 4 | (channel - 1), 0x31)
            assert cu16_unlock(board, channel).encode() == expected


@pytest.mark.parametrize("board", [-1, 16, 255])
def test_cu16_read_status_rejects_board_out_of_range(board: int) -> None:
    with pytest.raises(EncodeError):
        cu16_read_status(board)


@pytest.mark.parametrize("board", [-1, 16])
def test_cu16_unlock_rejects_board_out_of_range(board: int) -> None:
    with pytest.raises(EncodeError):
        cu16_unlock(board, 1)


@pytest.mark.parametrize("channel", [-1, 0, 17])
def test_cu16_unlock_rejects_channel_out_of_range(channel: int) -> None:
    with pytest.raises(EncodeError):
        cu16_unlock(0, channel)


# Board 2 (ADDR 0x20); locks 1, 3, 16; infrared 1-4 and 13-16.
# SUM = 02+20+35+05+80+0F+F0+03 = 0x1DE -> 0xDE.
CU16_STATUS_WIRE = h("02 20 35 05 80 0f f0 03 de")


def test_cu16_hand_built_status_reply_decodes_its_fields() -> None:
    status = decode_cu16_status(CU16_STATUS_WIRE)
    assert (status.board, status.locks, status.infrared) == (2, h("05 80"), h("0f f0"))


def test_cu16_status_lock_bits() -> None:
    bits = decode_cu16_status(CU16_STATUS_WIRE).lock_bits()
    assert len(bits) == 16
    assert [lock for lock, bit in enumerate(bits, start=1) if bit] == [1, 3, 16]


def test_cu16_status_infrared_bits() -> None:
    bits = decode_cu16_status(CU16_STATUS_WIRE).infrared_bits()
    assert len(bits) == 16
    assert [sensor for sensor, bit in enumerate(bits, start=1) if bit] == [
        1, 2, 3, 4, 13, 14, 15, 16,
    ]  # fmt: skip


def test_cu16_status_encodes_to_the_hand_built_reply() -> None:
    assert Cu16Status(2, h("05 80"), h("0f f0")).encode() == CU16_STATUS_WIRE


@pytest.mark.parametrize(
    ("locks", "infrared"), [(b"", b"\x00\x00"), (b"\x00\x00", b"\x00"), (b"\x00" * 3, b"\x00" * 2)]
)
def test_cu16_status_with_wrong_field_sizes_refuses_to_encode(
    locks: bytes, infrared: bytes
) -> None:
    with pytest.raises(EncodeError):
        Cu16Status(0, locks, infrared).encode()


@given(locks=st.binary(min_size=2, max_size=2), infrared=st.binary(min_size=2, max_size=2))
@PROPS
def test_cu16_status_bits_are_little_endian(locks: bytes, infrared: bytes) -> None:
    status = Cu16Status(0, locks, infrared)
    lock_value = int.from_bytes(locks, "little")
    ir_value = int.from_bytes(infrared, "little")
    assert status.lock_bits() == tuple(bool(lock_value >> i & 1) for i in range(16))
    assert status.infrared_bits() == tuple(bool(ir_value >> i & 1) for i in range(16))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(CU16_STATUS_WIRE[:-1] + b"\xdf", id="bad-checksum"),
        pytest.param(sealed(0x20, 0x35, 5, 0x80, 0x0F), id="8-bytes"),
        pytest.param(sealed(0x20, 0x35, 5, 0x80, 0x0F, 0xF0, 0), id="10-bytes"),
        pytest.param(sealed(0x20, 0x36, 5, 0x80, 0x0F, 0xF0), id="command-36"),
        pytest.param(sealed(0x20, 0x31, 5, 0x80, 0x0F, 0xF0), id="command-31"),
        pytest.param(with_sum(b"\x00" + CU16_STATUS_WIRE[1:-1]), id="no-stx"),
        pytest.param(with_sum(CU16_STATUS_WIRE[:-2] + b"\x04"), id="no-etx"),
        pytest.param(h("02 00 31 03 36"), id="a-request"),
        pytest.param(
            sealed(0x25, 0x35, 5, 0x80, 0x0F, 0xF0),
            id="addr-low-nibble",
        ),
    ],
)
def test_decode_cu16_status_rejects_malformed_frame(raw: bytes) -> None:
    with pytest.raises(FrameError):
        decode_cu16_status(raw)


# ======================================================================================
# Incremental decoders: the four of them share these properties
# ======================================================================================


class Frame(Protocol):
    def encode(self) -> bytes: ...


KerongDecoder: TypeAlias = (
    Cu48ReplyDecoder | Cu48RequestDecoder | Cu16ReplyDecoder | Cu16RequestDecoder
)


@dataclass(frozen=True)
class Codec:
    name: str
    decoder: Callable[[], KerongDecoder]
    frames: st.SearchStrategy[Frame]
    length: int
    vector: bytes  # one valid frame with no STX byte after its first


_byte = st.integers(0, 255)
_cu48_address = st.integers(0, 0x0A)

cu48_status_frames: st.SearchStrategy[Cu48Status] = st.builds(
    Cu48Status, address=_cu48_address, lock=_byte, bitmap=st.binary(min_size=6, max_size=6)
)
cu48_request_frames: st.SearchStrategy[Cu48Request] = st.one_of(
    st.builds(
        Cu48Request,
        address=_cu48_address,
        lock=st.integers(0, 0x30),
        command=st.sampled_from([0x50, 0x51]),
    ),
    st.builds(cu48_read_status, _cu48_address),
    st.builds(cu48_unlock, _cu48_address, st.integers(1, 48)),
)
cu16_status_frames: st.SearchStrategy[Cu16Status] = st.builds(
    Cu16Status,
    board=st.integers(0, 15),
    locks=st.binary(min_size=2, max_size=2),
    infrared=st.binary(min_size=2, max_size=2),
)
cu16_request_frames: st.SearchStrategy[Cu16Request] = st.one_of(
    st.builds(
        Cu16Request,
        board=st.integers(0, 15),
        lock=st.integers(0, 15),
        command=st.sampled_from(sorted(CU16_REQUEST_CMDS)),
    ),
    st.builds(cu16_read_status, st.integers(0, 15)),
    st.builds(cu16_unlock, st.integers(0, 15), st.integers(1, 16)),
)

CODECS = [
    Codec(
        "cu48-reply",
        Cu48ReplyDecoder,
        cu48_status_frames,
        12,
        sealed(0x00, 0x00, 0x65, 0x01, 0x00, 0x00, 0x00, 0x00, 0x80),
    ),
    Codec("cu48-request", Cu48RequestDecoder, cu48_request_frames, 6, h("02 00 00 51 03 56")),
    Codec("cu16-reply", Cu16ReplyDecoder, cu16_status_frames, 9, CU16_STATUS_WIRE),
    Codec("cu16-request", Cu16RequestDecoder, cu16_request_frames, 5, h("02 00 31 03 36")),
]
each_codec = pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])

no_stx_garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\x02", b""))
cut_points = st.lists(st.integers(0, 2000), max_size=12)


def feed_chunks(decoder: StreamDecoder[Frame], data: bytes, cuts: Sequence[int]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in split(data, cuts):
        out.extend(decoder.feed(chunk))
    return out


def sealed_windows(data: bytes, length: int) -> set[bytes]:
    """Every ``length``-byte window of ``data`` that is ``STX ... ETX SUM`` with a good SUM."""
    return {
        data[i : i + length]
        for i in range(len(data) - length + 1)
        if data[i] == STX
        and data[i + length - 2] == ETX
        and data[i + length - 1] == sum(data[i : i + length - 1]) & 0xFF
    }


@st.composite
def soups(draw: st.DrawFn, codec: Codec) -> bytes:
    """Line noise that is hard on a decoder: random bytes, whole frames, cut frames,
    frames with one byte changed, lone STX bytes."""

    def mutated(frame: Frame) -> bytes:
        raw = bytearray(frame.encode())
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(_byte)
        return bytes(raw)

    def truncated(frame: Frame) -> bytes:
        raw = frame.encode()
        return raw[: draw(st.integers(0, len(raw) - 1))]

    piece = st.one_of(
        st.binary(max_size=12),
        st.just(b"\x02"),
        codec.frames.map(lambda f: f.encode()),
        codec.frames.map(truncated),
        codec.frames.map(mutated),
    )
    return b"".join(draw(st.lists(piece, max_size=10)))


@each_codec
@given(data=st.data())
@PROPS
def test_decoder_round_trips_one_frame(codec: Codec, data: st.DataObject) -> None:
    frame = data.draw(codec.frames)
    assert codec.decoder().feed(frame.encode()) == [frame]


@each_codec
@given(data=st.data())
@PROPS
def test_encoded_frame_is_sealed_by_the_documented_rule(codec: Codec, data: st.DataObject) -> None:
    raw = data.draw(codec.frames).encode()
    assert len(raw) == codec.length
    assert raw == sealed(*raw[1:-2])


@each_codec
@given(data=st.data(), cuts=cut_points)
@PROPS
def test_decoder_finds_the_same_frames_whatever_the_chunking(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    frames = data.draw(st.lists(codec.frames, min_size=1, max_size=6))
    decoder = codec.decoder()
    assert feed_chunks(decoder, b"".join(f.encode() for f in frames), cuts) == frames
    assert (decoder.stats.frames, decoder.stats.discarded_bytes) == (len(frames), 0)
    assert decoder.stats.bad_frames == 0


@each_codec
@given(garbage=st.binary(max_size=300), cuts=cut_points)
@PROPS
def test_random_bytes_never_raise_and_yield_only_frames_with_a_good_checksum(
    codec: Codec, garbage: bytes, cuts: list[int]
) -> None:
    decoder = codec.decoder()
    out = feed_chunks(decoder, garbage, cuts)  # must not raise
    on_wire = sealed_windows(garbage, codec.length)
    assert all(f.encode() in on_wire for f in out), out
    assert decoder.stats.frames == len(out)
    assert decoder.stats.discarded_bytes <= len(garbage)


@each_codec
@given(data=st.data(), cuts=cut_points)
@PROPS
def test_noisy_line_yields_only_frames_that_were_on_the_wire(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    stream = data.draw(soups(codec))
    out = feed_chunks(codec.decoder(), stream, cuts)
    on_wire = sealed_windows(stream, codec.length)
    assert all(f.encode() in on_wire for f in out), out


@each_codec
@given(data=st.data(), cuts=cut_points)
@PROPS
def test_chunking_changes_neither_frames_nor_stats(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    stream = data.draw(soups(codec))
    whole, chunked = codec.decoder(), codec.decoder()
    assert feed_chunks(chunked, stream, cuts) == whole.feed(stream)
    assert chunked.stats == whole.stats
    assert chunked.flush() == whole.flush()
    assert chunked.stats == whole.stats


@each_codec
@given(data=st.data(), cuts=cut_points)
@PROPS
def test_garbage_without_stx_before_and_between_frames_costs_no_frame(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    frames = data.draw(st.lists(codec.frames, min_size=1, max_size=5))
    gaps = data.draw(st.lists(no_stx_garbage, min_size=len(frames), max_size=len(frames)))
    trailer = data.draw(no_stx_garbage)
    stream = b"".join(g + f.encode() for g, f in zip(gaps, frames, strict=True)) + trailer
    decoder = codec.decoder()
    assert feed_chunks(decoder, stream, cuts) == frames
    assert decoder.stats.discarded_bytes == sum(map(len, gaps)) + len(trailer)
    assert decoder.stats.frames == len(frames)


@each_codec
@given(data=st.data(), garbage=st.binary(max_size=60), cuts=cut_points)
@PROPS
def test_garbage_whose_tail_holds_no_stx_costs_no_frame(
    codec: Codec, data: st.DataObject, garbage: bytes, cuts: list[int]
) -> None:
    """Arbitrary garbage, then at least (frame length - 1) bytes without STX, then frames:
    no candidate starting in the garbage can reach into a real frame."""
    quiet = data.draw(
        st.binary(min_size=codec.length - 1, max_size=codec.length + 8).map(
            lambda b: b.replace(b"\x02", b"\x00")
        )
    )
    frames = data.draw(st.lists(codec.frames, min_size=1, max_size=4))
    out = feed_chunks(codec.decoder(), garbage + quiet + b"".join(f.encode() for f in frames), cuts)
    assert out[len(out) - len(frames) :] == frames


@each_codec
@given(data=st.data(), garbage=st.binary(max_size=60), cuts=cut_points)
@PROPS
def test_random_garbage_then_two_frames_the_second_is_found(
    codec: Codec, data: st.DataObject, garbage: bytes, cuts: list[int]
) -> None:
    """Holds for line noise; for CU48 replies hand-made garbage can hide both (see the
    *_limit_* test), for the others see the any-garbage test below."""
    first, second = data.draw(codec.frames), data.draw(codec.frames)
    out = feed_chunks(codec.decoder(), garbage + first.encode() + second.encode(), cuts)
    assert out[-1:] == [second]


@each_codec
def test_bad_checksum_is_counted_and_the_next_frame_still_found(codec: Codec) -> None:
    corrupt = codec.vector[:-1] + bytes(((codec.vector[-1] + 1) & 0xFF,))
    decoder = codec.decoder()
    assert decoder.feed(corrupt) == []
    assert decoder.stats.bad_frames == 1
    assert decoder.stats.discarded_bytes == codec.length
    assert [f.encode() for f in decoder.feed(codec.vector)] == [codec.vector]
    assert decoder.stats.frames == 1


@each_codec
def test_frame_cut_short_then_a_whole_frame_the_whole_one_is_found(codec: Codec) -> None:
    """A reply cut off by noise must not take the next frame down with it: after a bad
    candidate the decoder resumes on the next byte, not after the candidate's length."""
    for cut in range(1, codec.length):
        decoder = codec.decoder()
        out = decoder.feed(codec.vector[:cut] + codec.vector)
        assert [f.encode() for f in out] == [codec.vector], f"cut after {cut} bytes"
        assert decoder.stats.discarded_bytes == cut


@each_codec
def test_frame_fed_one_byte_at_a_time_comes_out_on_its_last_byte(codec: Codec) -> None:
    decoder = codec.decoder()
    for byte in codec.vector[:-1]:
        assert decoder.feed(bytes((byte,))) == []
    assert [f.encode() for f in decoder.feed(codec.vector[-1:])] == [codec.vector]


@each_codec
def test_decoder_counts_garbage_without_stx_as_discarded(codec: Codec) -> None:
    decoder = codec.decoder()
    assert decoder.feed(h("00 ff 03 55 65 35")) == []
    assert decoder.stats.discarded_bytes == 6
    assert decoder.stats.bad_frames == 0


def test_cu48_reply_decoder_does_not_take_a_request_echo_for_a_reply() -> None:
    decoder = Cu48ReplyDecoder()
    assert decoder.feed(h("02 00 00 50 03 55") + CU48_STATUS_WIRE) == [
        decode_cu48_status(CU48_STATUS_WIRE)
    ]


def test_cu16_reply_decoder_does_not_take_a_request_echo_for_a_reply() -> None:
    decoder = Cu16ReplyDecoder()
    assert decoder.feed(h("02 20 30 03 55") + CU16_STATUS_WIRE) == [
        decode_cu16_status(CU16_STATUS_WIRE)
    ]


def test_cu48_request_decoder_ignores_a_status_reply() -> None:
    assert Cu48RequestDecoder().feed(CU48_STATUS_WIRE) == []


def test_cu48_request_decoder_rejects_lock_beyond_all_locks() -> None:
    assert Cu48RequestDecoder().feed(sealed(0, 0x31, 0x51)) == []


def test_cu48_decoders_reject_address_beyond_broadcast() -> None:
    assert Cu48RequestDecoder().feed(sealed(0x0B, 0, 0x50)) == []
    assert Cu48ReplyDecoder().feed(sealed(0x0B, 0, 0x65, 0, 0, 0, 0, 0, 0)) == []


def test_cu16_request_decoder_rejects_unknown_command() -> None:
    assert Cu16RequestDecoder().feed(sealed(0x00, 0x34)) == []


@pytest.mark.parametrize("nibble", range(1, 16))
def test_cu16_reply_decoder_refuses_an_addr_with_a_low_nibble(nibble: int) -> None:
    """Replies carry the board in the high nibble and 0 in the low one: anything else is
    not a candidate (so it costs its STX byte only, and is no bad frame)."""
    raw = sealed(0x20 | nibble, 0x35, 0x05, 0x80, 0x0F, 0xF0)
    decoder = Cu16ReplyDecoder()
    assert decoder.feed(raw) == []
    assert (decoder.stats.discarded_bytes, decoder.stats.bad_frames) == (len(raw), 0)


def test_cu16_reply_with_a_low_nibble_before_a_real_reply_costs_it_nothing() -> None:
    decoder = Cu16ReplyDecoder()
    raw = sealed(0x21, 0x35, 0x05, 0x80, 0x0F, 0xF0)
    assert decoder.feed(raw + CU16_STATUS_WIRE) == [decode_cu16_status(CU16_STATUS_WIRE)]
    assert decoder.stats.discarded_bytes == len(raw)


@given(frame=cu16_status_frames)
@FEW
def test_cu16_reply_decoder_yields_replies_whose_addr_low_nibble_is_0(frame: Cu16Status) -> None:
    (decoded,) = Cu16ReplyDecoder().feed(frame.encode())
    assert decoded.encode()[1] == frame.board << 4


# --- flush: the line fell silent ------------------------------------------------------


@each_codec
def test_flush_drops_a_partial_frame_and_counts_its_bytes(codec: Codec) -> None:
    for cut in range(1, codec.length):
        decoder = codec.decoder()
        assert decoder.feed(codec.vector[:cut]) == []
        assert decoder.stats.discarded_bytes == 0, f"cut after {cut} bytes"  # waited for
        assert decoder.flush() == cut
        assert (decoder.stats.discarded_bytes, decoder.stats.bad_frames) == (cut, 0)
        assert decoder.flush() == 0
        assert [f.encode() for f in decoder.feed(codec.vector)] == [codec.vector]
        assert decoder.stats.frames == 1


@each_codec
def test_flush_of_an_empty_decoder_drops_nothing(codec: Codec) -> None:
    decoder = codec.decoder()
    assert decoder.flush() == 0
    assert decoder.stats == codec.decoder().stats


@each_codec
@given(data=st.data(), garbage=st.binary(max_size=60), cuts=cut_points)
@FEW
def test_garbage_then_silence_then_frames_all_are_found(
    codec: Codec, data: st.DataObject, garbage: bytes, cuts: list[int]
) -> None:
    decoder = codec.decoder()
    before = feed_chunks(decoder, garbage, cuts)
    held = len(decoder._buf)
    assert decoder.flush() == held
    assert decoder.stats.discarded_bytes == len(garbage) - codec.length * len(before)
    frames = data.draw(st.lists(codec.frames, min_size=1, max_size=4))
    assert feed_chunks(decoder, b"".join(f.encode() for f in frames), cuts) == frames


@each_codec
@given(data=st.data(), cuts=cut_points)
@FEW
def test_decoder_never_holds_a_whole_frame(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    """What is held after a feed is the start of one candidate: an STX and fewer bytes
    than a frame."""
    stream = data.draw(st.one_of(soups(codec), st.binary(max_size=300)))
    decoder = codec.decoder()
    fed = b""
    for chunk in split(stream, cuts):
        decoder.feed(chunk)
        fed += chunk
        assert len(decoder._buf) < codec.length
        assert fed.endswith(decoder._buf)
        assert decoder._buf[:1] in (b"", bytes((STX,)))


# --- crafted garbage ------------------------------------------------------------------

AT_MOST_ONE_HIDDEN = [c for c in CODECS if c.name != "cu48-reply"]


@pytest.mark.parametrize("codec", AT_MOST_ONE_HIDDEN, ids=[c.name for c in AT_MOST_ONE_HIDDEN])
@given(data=st.data(), cuts=cut_points)
@FEW
def test_any_garbage_then_two_frames_the_second_is_found(
    codec: Codec, data: st.DataObject, cuts: list[int]
) -> None:
    """Garbage, however crafted, hides at most the frame it overlaps: a candidate that starts
    in it ends inside the first frame, and with these layouts no valid candidate starts
    inside a frame and runs into the next one (e.g. a CU16 reply candidate on the first's
    infrared byte 02 takes its ETX 03 for ADDR, whose low nibble is not 0). Not so for CU48
    replies: see the *_limit_* test."""
    garbage = data.draw(soups(codec))
    first, second = data.draw(codec.frames), data.draw(codec.frames)
    out = feed_chunks(codec.decoder(), garbage + first.encode() + second.encode(), cuts)
    assert out[-1:] == [second]


def test_cu16_former_crafted_garbage_hides_nothing_now() -> None:
    """``02 85 35`` + f1 is a 9-byte frame with a good SUM ending inside f1, and f1's tail
    + f2's head another one: both replies were lost. ADDR 0x85 has a low nibble, so it is
    no candidate now and both replies are found."""
    first = Cu16Status(0, h("00 03"), h("f6 02"))
    second = Cu16Status(1, h("00 03"), h("84 00"))
    out = Cu16ReplyDecoder().feed(h("02 85 35") + first.encode() + second.encode())
    assert out == [first, second]


def test_cu16_limit_crafted_garbage_can_hide_the_frame_it_overlaps() -> None:
    """Documents a limit of STX/ETX/SUM framing, not a wish.

    ``02 30 35 00 00 00 98 03`` + f1's STX (its SUM) is a valid reply of board 3: it comes
    out, f1 is lost, and the decoder resyncs on f2.
    """
    first = decode_cu16_status(CU16_STATUS_WIRE)
    second = Cu16Status(1, h("00 03"), h("84 00"))
    out = Cu16ReplyDecoder().feed(h("02 30 35 00 00 00 98 03") + first.encode() + second.encode())
    assert out == [Cu16Status(3, h("00 00"), h("00 98")), second]


def test_cu48_limit_crafted_garbage_can_hide_two_good_frames() -> None:
    """Documents a limit of STX/ETX/SUM framing, not a wish.

    ``02 00 00 65 00 00 00 00 00 98 03`` + f1's STX (its SUM) is a valid status of board 0;
    the decoder resumes inside f1, where ``02 00 00 65 00 12 03 e4`` (f1's bitmap onwards)
    + ``02 00 03 65`` (f2's head: its LOCK 03 as ETX, its 65 as SUM) is another. Both real
    replies are lost and two phantom replies come out. The decoder's docstring only says
    crafted garbage can hide the frame it overlaps; for CU48 replies that frame's bytes can
    in turn hide the next one.
    """
    first = Cu48Status(1, 0, h("02 00 00 65 00 12"))
    second = Cu48Status(0, 3, bytes(6))
    garbage = h("02 00 00 65 00 00 00 00 00 98 03")
    out = Cu48ReplyDecoder().feed(garbage + first.encode() + second.encode())
    assert out == [
        Cu48Status(0, 0, h("00 00 00 00 00 98")),
        Cu48Status(0, 0, h("00 12 03 e4 02 00")),
    ]
