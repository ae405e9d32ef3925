"""Chunking and reassembly: order, duplicates, inconsistency, bounds and timeouts."""

from __future__ import annotations

import os
import random

import pytest

from edgedfl.errors import ChunkError, ConfigError, IntegrityError, PayloadTooLarge
from edgedfl.wire import (
    CHUNK_HEADER_BYTES,
    Reassembler,
    chunk_size_for,
    is_chunk,
    parse_chunk_header,
    split_message,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_round_trip_shuffled_with_duplicates() -> None:
    data = os.urandom(10_000)
    chunks = split_message(data, 777)
    assert len(chunks) == 13 and all(is_chunk(c) for c in chunks)
    assert all(len(c) <= 777 + CHUNK_HEADER_BYTES for c in chunks)
    stream = chunks + chunks[:5]
    random.Random(1).shuffle(stream)
    r = Reassembler()
    results = [r.add(c) for c in stream]
    assert [x for x in results if x is not None] == [data]
    assert r.stats.completed == 1 and r.stats.duplicates == 5
    assert r.pending_messages == 0 and r.pending_bytes == 0


def test_late_duplicates_after_completion_are_ignored() -> None:
    data = b"x" * 1000
    chunks = split_message(data, 300)
    r = Reassembler()
    assert [r.add(c) for c in chunks][-1] == data
    assert r.add(chunks[1]) is None and r.pending_messages == 0


def test_empty_and_exact_multiple() -> None:
    for data in (b"", b"a" * 600):
        chunks = split_message(data, 300)
        assert len(chunks) == max(1, len(data) // 300)
        r = Reassembler()
        assert [r.add(c) for c in chunks][-1] == data


def test_same_message_from_two_sources_kept_apart() -> None:
    data = os.urandom(1000)
    a, b = split_message(data, 400), split_message(data, 400)
    r = Reassembler()
    assert r.add(a[0], source="n1") is None
    assert r.add(b[0], source="n2") is None
    assert r.pending_messages == 2


def test_inconsistent_chunks_are_refused() -> None:
    data = os.urandom(1000)
    mid = b"m" * 16
    chunks = split_message(data, 400, mid)
    other = split_message(os.urandom(1000), 400, mid)  # same id, other content
    r = Reassembler()
    r.add(chunks[0])
    with pytest.raises(ChunkError, match="disagrees"):
        r.add(other[1])
    with pytest.raises(ChunkError, match="differing"):
        r.add(chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]))
    assert r.add(chunks[1]) is None
    assert r.add(chunks[2]) == data


def test_corrupt_data_fails_the_message_hash() -> None:
    chunks = split_message(os.urandom(1000), 400)
    bad = bytearray(chunks[1])
    bad[-1] ^= 0xFF
    r = Reassembler()
    r.add(chunks[0])
    r.add(bytes(bad))
    with pytest.raises(IntegrityError):
        r.add(chunks[2])


@pytest.mark.parametrize("mutate", ["short", "magic", "version", "index", "count", "length", "size0"])
def test_malformed_chunk_headers(mutate: str) -> None:
    chunk = bytearray(split_message(os.urandom(1000), 400)[0])
    if mutate == "short":
        chunk = chunk[:10]
    elif mutate == "magic":
        chunk[0] = ord("X")
    elif mutate == "version":
        chunk[4] = 9
    elif mutate == "index":
        chunk[22:26] = (5).to_bytes(4, "big")
    elif mutate == "count":
        chunk[26:30] = (7).to_bytes(4, "big")
    elif mutate == "length":
        chunk = chunk[:-1]
    elif mutate == "size0":
        chunk[30:34] = bytes(4)
    with pytest.raises(ChunkError):
        parse_chunk_header(bytes(chunk))
    with pytest.raises(ChunkError):
        Reassembler().add(bytes(chunk))


def test_bounds_on_size_and_count() -> None:
    data = os.urandom(5000)
    with pytest.raises(PayloadTooLarge):
        Reassembler(max_message_bytes=4999).add(split_message(data, 1000)[0])
    with pytest.raises(ChunkError):
        Reassembler(max_chunks=4).add(split_message(data, 1000)[0])


def test_pending_messages_and_bytes_are_bounded() -> None:
    r = Reassembler(max_message_bytes=10_000, max_pending_messages=3, max_pending_bytes=2_500)
    firsts = [split_message(os.urandom(2000), 1000)[0] for _ in range(5)]
    for chunk in firsts:
        r.add(chunk)
        assert r.pending_messages <= 3 and r.pending_bytes <= 2_500
    assert r.stats.evicted == 3
    assert len(r.drain_errors()) == 3 and r.drain_errors() == []


def test_unfinished_messages_expire() -> None:
    clock = FakeClock()
    r = Reassembler(timeout_s=10, clock=clock)
    chunks = split_message(os.urandom(3000), 1000)
    r.add(chunks[0])
    clock.now += 8
    r.add(chunks[1])  # progress keeps it alive
    clock.now += 8
    assert r.expire() == [] and r.pending_messages == 1
    clock.now += 3
    errors = r.expire()
    assert len(errors) == 1 and "2/3 chunks" in str(errors[0])
    assert r.pending_messages == 0 and r.pending_bytes == 0 and r.stats.expired == 1
    # The last chunk alone now starts a new partial message; it does not complete anything.
    assert r.add(chunks[2]) is None


def test_chunk_size_for() -> None:
    assert chunk_size_for(20e6, 60) == 1_000_000  # capped
    assert chunk_size_for(1e6, 3) == 125_000  # 1 Mbit/s x 3 s / 3
    assert chunk_size_for(20e6, 60, broker_limit=256 * 1024) == 256 * 1024 - CHUNK_HEADER_BYTES
    assert chunk_size_for(100, 1) == 512  # floor for absurdly slow links
    with pytest.raises(ConfigError):
        chunk_size_for(1e6, 3, broker_limit=CHUNK_HEADER_BYTES)
    with pytest.raises(ConfigError):
        chunk_size_for(0, 3)
    with pytest.raises(ConfigError):
        split_message(b"x", 0)
