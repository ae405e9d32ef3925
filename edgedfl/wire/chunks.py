"""Cutting an encoded message into chunks and putting it back together, within bounds.

A message (an encoded envelope, usually) larger than one MQTT publish should
carry is sent as chunks, each with a fixed 74-byte header (layout in
FORMAT.md)::

    "EDFC" | u8 version | u8 flags | 16-byte message id | u32 index | u32 count
           | u32 chunk size | u64 total length | 32-byte sha256 of the whole message | data

A receiver feeds chunks to a :class:`Reassembler`, which returns the whole
message once every chunk is in and its sha256 matches.

Decisions:

* Every chunk repeats count, chunk size, total length and the message hash,
  so any single chunk is checked on its own (its data length follows from its
  index) and a chunk that disagrees with its siblings is refused
  (:class:`ChunkError`) without disturbing them.
* The message id defaults to the first 16 bytes of the message's sha256, so a
  re-sent message has the same id and its late duplicate chunks are
  recognised; the reassembler also remembers recently completed ids and drops
  their stragglers silently (counted as duplicates).
* Chunks are kept as received, not written into a buffer sized by the
  sender's claim: pending memory is what actually arrived, bounded by
  ``max_pending_bytes``; a claimed total over ``max_message_bytes`` is a
  :class:`PayloadTooLarge` before anything is stored.
* A partial message expires ``timeout_s`` after its *last* chunk arrived, so a
  slow link that keeps making progress is not cut off; expiry is reported as
  :class:`ChunkError` instances (see :meth:`Reassembler.drain_errors`) and
  counted in :attr:`Reassembler.stats`. When too many messages are pending,
  the one idle longest is dropped the same way.
* A completed message whose hash does not match is an :class:`IntegrityError`.
* Chunks from different senders never mix: :meth:`Reassembler.add` takes a
  ``source`` (the topic or sender) that is part of the key.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import struct
import time
from collections.abc import Callable

from edgedfl.errors import ChunkError, ConfigError, IntegrityError, PayloadTooLarge

CHUNK_MAGIC = b"EDFC"
CHUNK_VERSION = 1
_HEADER = struct.Struct(">4sBB16sIIIQ32s")
#: Size of the fixed header in front of every chunk's data.
CHUNK_HEADER_BYTES = _HEADER.size  # 74
MESSAGE_ID_BYTES = 16
#: Default ceiling on one chunk's data, whatever the link (see :func:`chunk_size_for`).
DEFAULT_CHUNK_CAP = 1_000_000
_MAX_U32 = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class ChunkHeader:
    """The fixed header of one chunk, parsed."""

    message_id: bytes
    index: int
    count: int
    chunk_size: int
    total: int
    sha256: bytes

    def data_length(self, index: int | None = None) -> int:
        """How many data bytes chunk ``index`` (default: this one) must carry."""
        i = self.index if index is None else index
        return self.chunk_size if i < self.count - 1 else self.total - self.chunk_size * (self.count - 1)


def message_id_for(data: bytes) -> bytes:
    """Default message id: the first 16 bytes of sha256(data)."""
    return hashlib.sha256(data).digest()[:MESSAGE_ID_BYTES]


def is_chunk(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like a chunk (magic only)."""
    return bytes(data[:4]) == CHUNK_MAGIC


def split_message(data: bytes, chunk_size: int, message_id: bytes | None = None) -> list[bytes]:
    """Cut ``data`` into chunks of at most ``chunk_size`` data bytes each (plus the header).

    An empty message is one empty chunk. Deterministic for given arguments.
    """
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= _MAX_U32:
        raise ConfigError(f"chunk_size={chunk_size!r}: must be an int in 1..2**32-1")
    mid = message_id if message_id is not None else message_id_for(data)
    if not isinstance(mid, bytes) or len(mid) != MESSAGE_ID_BYTES:
        raise ConfigError(f"message_id: must be {MESSAGE_ID_BYTES} bytes")
    total = len(data)
    count = max(1, math.ceil(total / chunk_size))
    if count > _MAX_U32:
        raise ConfigError(f"{total} bytes in chunks of {chunk_size} need more than 2**32-1 chunks")
    digest = hashlib.sha256(data).digest()
    view = memoryview(data)
    return [
        _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, 0, mid, i, count, chunk_size, total, digest)
        + view[i * chunk_size : (i + 1) * chunk_size]
        for i in range(count)
    ]


def parse_chunk_header(chunk: bytes | bytearray | memoryview) -> ChunkHeader:
    """Parse and self-check one chunk's header. :raises ChunkError: on any inconsistency."""
    if len(chunk) < CHUNK_HEADER_BYTES:
        raise ChunkError(f"chunk of {len(chunk)} bytes is shorter than its {CHUNK_HEADER_BYTES}-byte header")
    magic, version, flags, mid, index, count, chunk_size, total, digest = _HEADER.unpack_from(chunk, 0)
    if magic != CHUNK_MAGIC:
        raise ChunkError(f"bad chunk magic {magic!r}")
    if version != CHUNK_VERSION or flags != 0:
        raise ChunkError(f"chunk version {version} / flags {flags} not understood")
    if count < 1 or index >= count or chunk_size < 1:
        raise ChunkError(f"chunk index {index} / count {count} / size {chunk_size} impossible")
    if count != max(1, math.ceil(total / chunk_size)):
        raise ChunkError(f"count {count} does not match total {total} / chunk size {chunk_size}")
    header = ChunkHeader(mid, index, count, chunk_size, total, digest)
    if len(chunk) - CHUNK_HEADER_BYTES != header.data_length():
        raise ChunkError(
            f"chunk {index}/{count} carries {len(chunk) - CHUNK_HEADER_BYTES} bytes, expected {header.data_length()}"
        )
    return header


def chunk_size_for(
    link_rate_bps: float,
    keepalive_s: float,
    broker_limit: int | None = None,
    *,
    cap: int = DEFAULT_CHUNK_CAP,
    minimum: int = 512,
) -> int:
    """Data bytes per chunk: min(link bytes/s x keepalive / 3, ``cap``, broker limit - header).

    A third of a keepalive interval per chunk means a slow link still
    exchanges keepalives mid-message. ``minimum`` keeps absurdly slow links
    from producing absurdly many chunks; the broker limit wins over it.
    """
    if link_rate_bps <= 0 or keepalive_s <= 0:
        raise ConfigError(f"link_rate_bps={link_rate_bps!r}, keepalive_s={keepalive_s!r}: must be > 0")
    size = max(min(int(link_rate_bps / 8 * keepalive_s / 3), cap), minimum)
    if broker_limit is not None:
        if broker_limit <= CHUNK_HEADER_BYTES:
            raise ConfigError(f"broker_limit={broker_limit}: leaves no room after the chunk header")
        size = min(size, broker_limit - CHUNK_HEADER_BYTES)
    return size


@dataclasses.dataclass
class ReassemblyStats:
    """Counters a node can log or export."""

    completed: int = 0
    duplicates: int = 0
    expired: int = 0
    evicted: int = 0
    rejected: int = 0


@dataclasses.dataclass
class _Partial:
    header: ChunkHeader
    parts: dict[int, bytes]
    nbytes: int
    last_seen: float


class Reassembler:
    """Collects chunks into messages with bounds on size, count, pending memory and time."""

    def __init__(
        self,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_chunks: int = 4096,
        max_pending_messages: int = 16,
        timeout_s: float = 120.0,
        *,
        max_pending_bytes: int | None = None,
        remember_completed: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("max_message_bytes", max_message_bytes), ("max_chunks", max_chunks),
                            ("max_pending_messages", max_pending_messages), ("timeout_s", timeout_s)):
            if value <= 0:
                raise ConfigError(f"Reassembler.{name}={value!r}: must be > 0")
        self.max_message_bytes = max_message_bytes
        self.max_chunks = max_chunks
        self.max_pending_messages = max_pending_messages
        self.timeout_s = timeout_s
        self.max_pending_bytes = max_pending_bytes if max_pending_bytes is not None else 2 * max_message_bytes
        self._clock = clock
        self._pending: collections.OrderedDict[tuple[str, bytes], _Partial] = collections.OrderedDict()
        self._pending_bytes = 0
        self._completed: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()
        self._remember = remember_completed
        self._errors: collections.deque[ChunkError] = collections.deque(maxlen=256)
        self.stats = ReassemblyStats()

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Data bytes held for unfinished messages."""
        return self._pending_bytes

    def drain_errors(self) -> list[ChunkError]:
        """Errors for messages dropped by expiry or eviction since the last call."""
        errors = list(self._errors)
        self._errors.clear()
        return errors

    def _drop(self, key: tuple[str, bytes], why: str) -> None:
        partial = self._pending.pop(key)
        self._pending_bytes -= partial.nbytes
        self._errors.append(ChunkError(
            f"message {key[1].hex()} from {key[0]!r} dropped ({why}) with "
            f"{len(partial.parts)}/{partial.header.count} chunks"
        ))

    def expire(self, now: float | None = None) -> list[ChunkError]:
        """Drop partial messages idle for more than ``timeout_s``; return their errors."""
        now = self._clock() if now is None else now
        before = len(self._errors)
        # _pending is ordered by last activity (move_to_end on every chunk).
        while self._pending:
            key, partial = next(iter(self._pending.items()))
            if now - partial.last_seen <= self.timeout_s:
                break
            self._drop(key, f"no chunk for {now - partial.last_seen:.1f} s")
            self.stats.expired += 1
        return list(self._errors)[before:] if len(self._errors) > before else []

    def add(self, chunk: bytes, source: str = "") -> bytes | None:
        """Take one chunk; return the whole message when this chunk completes it, else None.

        Duplicates (same message, same index, same bytes) and stragglers of a
        message already completed return None and are counted.

        :raises ChunkError: a malformed chunk, or one inconsistent with its siblings.
        :raises PayloadTooLarge: the claimed message exceeds ``max_message_bytes``.
        :raises IntegrityError: the completed message does not match its sha256.
        """
        now = self._clock()
        self.expire(now)
        try:
            header = parse_chunk_header(chunk)
            if header.total > self.max_message_bytes:
                raise PayloadTooLarge(f"chunked message of {header.total} bytes exceeds {self.max_message_bytes}")
            if header.count > self.max_chunks:
                raise ChunkError(f"message in {header.count} chunks exceeds limit {self.max_chunks}")
        except (ChunkError, PayloadTooLarge):
            self.stats.rejected += 1
            raise
        key = (source, header.message_id)
        if key in self._completed:
            self.stats.duplicates += 1
            return None
        data = bytes(chunk[CHUNK_HEADER_BYTES:])
        partial = self._pending.get(key)
        if partial is None:
            while len(self._pending) >= self.max_pending_messages:
                self._drop(next(iter(self._pending)), "too many pending messages")
                self.stats.evicted += 1
            partial = _Partial(dataclasses.replace(header, index=0), {}, 0, now)
            self._pending[key] = partial
        elif dataclasses.replace(header, index=0) != partial.header:
            self.stats.rejected += 1
            raise ChunkError(f"chunk {header.index} of message {header.message_id.hex()} disagrees with its siblings")
        if header.index in partial.parts:
            if partial.parts[header.index] != data:
                self.stats.rejected += 1
                raise ChunkError(f"chunk {header.index} of message {header.message_id.hex()} arrived twice, differing")
            self.stats.duplicates += 1
            return None
        while self._pending_bytes + len(data) > self.max_pending_bytes and len(self._pending) > 1:
            oldest = next(k for k in self._pending if k != key)
            self._drop(oldest, "pending memory full")
            self.stats.evicted += 1
        if self._pending_bytes + len(data) > self.max_pending_bytes:
            self.stats.rejected += 1
            raise ChunkError(f"pending chunk memory would exceed {self.max_pending_bytes} bytes")
        partial.parts[header.index] = data
        partial.nbytes += len(data)
        partial.last_seen = now
        self._pending_bytes += len(data)
        self._pending.move_to_end(key)
        if len(partial.parts) < partial.header.count:
            return None
        del self._pending[key]
        self._pending_bytes -= partial.nbytes
        message = b"".join(partial.parts[i] for i in range(partial.header.count))
        if hashlib.sha256(message).digest() != partial.header.sha256:
            self.stats.rejected += 1
            raise IntegrityError(f"reassembled message {header.message_id.hex()} does not match its sha256")
        self._completed[key] = None
        while len(self._completed) > self._remember:
            self._completed.popitem(last=False)
        self.stats.completed += 1
        return message
