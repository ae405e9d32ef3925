"""The bounded inbound queue every transport delivers into.

Network callbacks call :meth:`Inbox.put`, which never blocks: when the queue
already holds ``max_messages`` messages or ``max_bytes`` payload bytes, the
*incoming* message is dropped and counted (tail drop). Dropping the newest
keeps what the owner has not read yet in order; a dropped QoS 1 update is not
lost for good, because the neighbour protocol re-sends whatever a receiver has
not acknowledged end to end. The owner drains with :meth:`Inbox.get`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from edgedfl.transport.base import Message

log = logging.getLogger("edgedfl.transport")


class Inbox:
    """Thread-safe FIFO of :class:`Message`, bounded by count and by bytes."""

    def __init__(self, max_messages: int = 10_000, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"Inbox bounds must be positive: max_messages={max_messages}, max_bytes={max_bytes}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: collections.deque[Message] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        #: messages dropped because the queue was full
        self.dropped = 0
        #: messages accepted into the queue
        self.received = 0

    def put(self, msg: Message) -> bool:
        """Enqueue without blocking; returns ``False`` (and counts a drop) when full."""
        size = len(msg.payload)
        with self._cond:
            if len(self._items) >= self.max_messages or (self._items and self._bytes + size > self.max_bytes):
                self.dropped += 1
                dropped = self.dropped
                full = True
            else:
                self._items.append(msg)
                self._bytes += size
                self.received += 1
                self._cond.notify()
                full = False
        if full:
            # power-of-two throttling so a flood does not flood the log too
            if dropped & (dropped - 1) == 0:
                log.warning("inbound queue full: dropped %d message(s) so far (latest on %s)", dropped, msg.topic)
            return False
        return True

    def get(self, timeout: float | None = None) -> Message | None:
        """Oldest message, waiting up to ``timeout`` seconds (``None``: forever, 0: no wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            msg = self._items.popleft()
            self._bytes -= len(msg.payload)
            return msg

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return self._bytes
