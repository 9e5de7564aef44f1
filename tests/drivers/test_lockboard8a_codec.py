"""Byte-exact and property tests for the 0x8A/0x80 lock-board codec (``drivers/lockboard8a.py``).

Byte vectors are the ones in ``shared/design/HARDWARE.md``. Other expected frames are
built here from the documented rule (BCC = XOR of the bytes before it), never with the
code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from itertools import pairwise
from operator import xor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerd.drivers.errors import EncodeError, FrameError
from lockerd.drivers.lockboard8a import (
    AllStatus,
    ByteOrder,
    Codec8aSettings,
    LockStatus,
    Polarity,
    Reply,
    ReplyDecoder,
    Request,
    RequestDecoder,
    UnlockManyRequest,
    UnlockReply,
    decode_reply,
    is_echo,
    keep_off,
    keep_on,
    open_all,
    pack_status,
    query,
    query_all,
    unlock,
    unlock_many,
)

PROPS = settings(max_examples=60, deadline=None)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def sealed(*body: int) -> bytes:
    return bytes(body) + bytes((reduce(xor, body, 0),))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def feed_all(decoder: ReplyDecoder | RequestDecoder, chunks: Sequence[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# ======================================================================================
# HARDWARE.md byte vectors
# ======================================================================================


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (unlock(1, 1), "8A 01 01 11 9B"),
        (open_all(1), "8A 01 00 11 9A"),
        (query(1, 1), "80 01 01 33 B3"),
        (query_all(1), "80 01 00 33 B2"),
    ],
    ids=["unlock", "open-all", "query-one", "query-all"],
)
def test_requests_are_the_hardware_md_vectors(request_: Request, wire: str) -> None:
    assert request_.encode() == h(wire)
    assert RequestDecoder().feed(h(wire)) == [request_]


def test_query_one_replies_of_the_hardware_md_decode() -> None:
    closed = decode_reply(h("80 01 01 11 91"))
    opened = decode_reply(h("80 01 01 00 80"))
    assert closed == LockStatus(1, 1, 0x11)
    assert opened == LockStatus(1, 1, 0x00)
    assert closed.encode() == h("80 01 01 11 91")
    assert opened.encode() == h("80 01 01 00 80")
    assert isinstance(closed, LockStatus)
    assert isinstance(opened, LockStatus)
    assert closed.closed() is True
    assert opened.closed() is False
    assert closed.closed(Polarity.SET_IS_OPEN) is False
    assert ReplyDecoder().feed(h("80 01 01 11 91 80 01 01 00 80")) == [closed, opened]


def test_still_locked_unlock_reply_equals_the_request_and_is_flagged_as_echo() -> None:
    sent = unlock(1, 1)
    frames = ReplyDecoder().feed(h("8A 01 01 11 9B"))
    assert frames == [UnlockReply(1, 1, 0x11)]
    assert is_echo(frames[0], sent)
    assert is_echo(h("8A 01 01 11 9B"), sent)
    assert frames[0].closed() is True  # common polarity: still locked
    opened = UnlockReply(1, 1, 0x00)
    assert opened.encode() == h("8A 01 01 00 8A")
    assert not is_echo(opened, sent)
    assert not is_echo(UnlockReply(1, 2, 0x11), sent)


def test_query_echo_is_flagged_and_its_status_is_unknown() -> None:
    sent = query(1, 1)
    (frame,) = ReplyDecoder().feed(sent.encode())
    assert is_echo(frame, sent)
    assert isinstance(frame, LockStatus)
    assert frame.closed() is None


def test_query_all_echo_is_skipped_and_the_real_reply_found() -> None:
    decoder = ReplyDecoder()
    decoder.expect(query_all(1))
    reply = sealed(0x80, 0x01, 0x00, 0x00, 0x05, 0x33)
    assert decoder.feed(h("80 01 00 33 B2") + reply) == [AllStatus(1, h("00 00 05"))]
    assert decoder.stats.discarded_bytes == 5


def test_query_all_reply_bits_in_both_orders() -> None:
    raw = sealed(0x80, 0x02, 0x80, 0x00, 0x05, 0x33)
    frame = decode_reply(raw, query_all=True)
    assert frame == AllStatus(2, h("80 00 05"))
    assert isinstance(frame, AllStatus)
    high = [i for i, b in enumerate(frame.bits(), start=1) if b]
    low = [i for i, b in enumerate(frame.bits(ByteOrder.LOW_FIRST), start=1) if b]
    assert high == [1, 3, 24]
    assert low == [8, 17, 19]
    assert frame.closed()[0] is True
    assert frame.closed(Polarity.SET_IS_OPEN)[0] is False
    assert pack_status(frame.bits(), 3, ByteOrder.HIGH_FIRST) == h("80 00 05")


@pytest.mark.parametrize("n", [3, 4, 7])
def test_query_all_reply_length_follows_the_status_byte_setting(n: int) -> None:
    raw = sealed(0x80, 0x01, *range(1, n + 1), 0x33)
    decoder = ReplyDecoder(Codec8aSettings(status_bytes=n))
    decoder.expect(query_all(1))
    assert decoder.feed(raw) == [AllStatus(1, bytes(range(1, n + 1)))]
    assert decode_reply(raw, query_all=True, status_bytes=n) == AllStatus(1, bytes(range(1, n + 1)))


def test_keep_on_off_and_unlock_many_follow_the_rule() -> None:
    assert keep_on(3, 4).encode() == sealed(0x9A, 3, 4, 0x11)
    assert keep_off(3, 4).encode() == sealed(0x9B, 3, 4, 0x11)
    assert unlock_many(1, [1, 9, 24]).encode() == sealed(0x90, 1, 0x80, 0x01, 0x01)
    many = unlock_many(1, [1], order=ByteOrder.LOW_FIRST)
    assert many.encode() == sealed(0x90, 1, 0x01, 0x00, 0x00)
    assert RequestDecoder().feed(many.encode()) == [many]


def test_encoders_follow_the_xor_rule_for_every_board_and_lock() -> None:
    for board in range(1, 32):
        assert open_all(board).encode() == sealed(0x8A, board, 0, 0x11)
        assert query_all(board).encode() == sealed(0x80, board, 0, 0x33)
        for lock in range(1, 57):
            assert unlock(board, lock).encode() == sealed(0x8A, board, lock, 0x11)
            assert query(board, lock).encode() == sealed(0x80, board, lock, 0x33)


# ======================================================================================
# Range errors
# ======================================================================================


@pytest.mark.parametrize("board", [-1, 0, 32, 255])
def test_board_out_of_range_raises(board: int) -> None:
    for make in (open_all, query_all):
        with pytest.raises(EncodeError):
            make(board)
    for make2 in (unlock, query, keep_on, keep_off):
        with pytest.raises(EncodeError):
            make2(board, 1)
    with pytest.raises(EncodeError):
        unlock_many(board, [1])


@pytest.mark.parametrize("lock", [-1, 0, 57, 256])
def test_lock_out_of_range_raises(lock: int) -> None:
    for make in (unlock, query, keep_on, keep_off):
        with pytest.raises(EncodeError):
            make(1, lock)
    with pytest.raises(EncodeError):
        unlock(1, 25, channels=24)
    with pytest.raises(EncodeError):
        unlock_many(1, [lock])


def test_whole_frame_decoder_rejects_bad_frames() -> None:
    for bad in ("8A 01 01 11 9C", "8A 01 01 11", "81 01 01 11 91", "80 40 01 11 d0"):
        with pytest.raises(FrameError):
            decode_reply(h(bad))
    with pytest.raises(FrameError):
        decode_reply(sealed(0x80, 1, 1, 2, 3, 0x34), query_all=True)


# ======================================================================================
# Properties
# ======================================================================================

boards = st.integers(1, 31)
locks = st.integers(1, 56)
status = st.sampled_from([0x00, 0x11])

requests = st.one_of(
    st.builds(unlock, boards, locks),
    st.builds(open_all, boards),
    st.builds(query, boards, locks),
    st.builds(query_all, boards),
    st.builds(keep_on, boards, locks),
    st.builds(keep_off, boards, locks),
    st.builds(unlock_many, boards, st.lists(st.integers(1, 24), max_size=5)),
)
short_replies = st.one_of(
    st.builds(UnlockReply, boards, st.integers(0, 56), status),
    st.builds(LockStatus, boards, locks, status),
)
cuts = st.lists(st.integers(0, 10_000), max_size=8)


@given(req=requests)
@PROPS
def test_request_round_trip(req: Request | UnlockManyRequest) -> None:
    assert RequestDecoder().feed(req.encode()) == [req]


@given(frames=st.lists(short_replies, min_size=1, max_size=6), cut=cuts)
@PROPS
def test_replies_round_trip_in_any_chunking(frames: list[Reply], cut: list[int]) -> None:
    wire = b"".join(f.encode() for f in frames)
    decoder = ReplyDecoder()
    assert feed_all(decoder, split(wire, cut)) == frames
    assert decoder.stats.frames == len(frames)
    assert decoder.stats.discarded_bytes == 0
    for f in frames:
        assert decode_reply(f.encode()) == f


@given(
    n=st.integers(1, 7),
    data=st.data(),
    cut=cuts,
)
@PROPS
def test_query_all_replies_round_trip_in_any_chunking(
    n: int, data: st.DataObject, cut: list[int]
) -> None:
    frames = data.draw(
        st.lists(st.builds(AllStatus, boards, st.binary(min_size=n, max_size=n)), max_size=4)
    )
    decoder = ReplyDecoder(Codec8aSettings(status_bytes=n))
    decoder.expect(query_all(1))
    wire = b"".join(f.encode() for f in frames)
    assert feed_all(decoder, split(wire, cut)) == frames
    for f in frames:
        assert decode_reply(f.encode(), query_all=True, status_bytes=n) == f


# Garbage holding no header byte (0x80, 0x8A) cannot start a frame.
no_head = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x not in (0x80, 0x8A)))


@given(frames=st.lists(short_replies, min_size=1, max_size=5), junk=st.data(), cut=cuts)
@PROPS
def test_garbage_between_frames_is_skipped_and_counted(
    frames: list[Reply], junk: st.DataObject, cut: list[int]
) -> None:
    pieces = [junk.draw(no_head) for _ in range(len(frames) + 1)]
    wire = pieces[0] + b"".join(f.encode() + g for f, g in zip(frames, pieces[1:], strict=True))
    decoder = ReplyDecoder()
    assert feed_all(decoder, split(wire, cut)) == frames
    assert decoder.stats.discarded_bytes == sum(map(len, pieces))
    assert decoder.stats.frames == len(frames)


@given(garbage=st.binary(max_size=300), cut=cuts, expect_all=st.booleans())
@PROPS
def test_random_bytes_never_raise(garbage: bytes, cut: list[int], expect_all: bool) -> None:
    replies = ReplyDecoder()
    if expect_all:
        replies.expect(query_all(1))
    for frame in feed_all(replies, split(garbage, cut)):
        assert not reduce(xor, frame.encode(), 0)  # type: ignore[attr-defined]
    requests_ = RequestDecoder()
    feed_all(requests_, split(garbage, cut))
    for dec in (replies, requests_):
        leftover = dec.flush()
        assert dec.stats.discarded_bytes + 0 >= leftover


@given(garbage=st.binary(max_size=60), frames=st.lists(short_replies, min_size=2, max_size=2))
@PROPS
def test_after_any_garbage_the_second_frame_is_found(garbage: bytes, frames: list[Reply]) -> None:
    decoder = ReplyDecoder()
    got = decoder.feed(garbage + b"".join(f.encode() for f in frames))
    assert got[-1] == frames[-1]
