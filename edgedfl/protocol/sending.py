"""The sending side of the endpoint: envelopes, retained state, updates recorded in the outbox and re-sent until acked."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from edgedfl.errors import (
    PayloadTooLarge,
    TransportError,
)
from edgedfl.protocol.outbox import OutboxEntry, OutboxPart
from edgedfl.protocol.topics import validate_name
from edgedfl.protocol.types import (
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    message_id,
)
from edgedfl.wire.chunks import CHUNK_HEADER_BYTES, split_message
from edgedfl.wire.codec import (
    Precision,
    encode_masks,
    encode_tensors,
    encode_update,
    mask_id,
)
from edgedfl.wire.envelope import Envelope, encode_envelope
from edgedfl.wire.expert import encode_expert

log = logging.getLogger("edgedfl.protocol")


from edgedfl.protocol.state import EndpointState


class Sending(EndpointState):
    """Publishing: presence, hello, experts (retained); updates and masks through the outbox."""

    def _envelope(
        self,
        kind: str,
        round: int = 0,
        slot: int = 0,
        seq: int = 0,
        body: bytes = b"",
        meta: Mapping[str, str] | None = None,
    ) -> bytes:
        env = Envelope(kind, self.swarm, self.node, round, slot, seq, body, dict(meta or {}))
        return encode_envelope(env, self.signer)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._try_publish(topic, payload, retain=True)

    def _try_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish; on a transport failure log and return ``False`` (the caller's retry path takes over)."""
        if not self.transport.connected:
            return False
        try:
            self.transport.publish(topic, payload, qos=self.config.qos, retain=retain)
        except TransportError as exc:
            log.info("%s: publish on %s failed (%s); will retry", self.node, topic, exc)
            return False
        return True

    def announce(self, online: bool = True) -> None:
        """Publish retained presence ("online", or "offline" when leaving cleanly)."""
        state = PRESENCE_ONLINE if online else PRESENCE_OFFLINE
        self._publish_retained(self.topics.presence(self.node), state.encode())

    def publish_hello(
        self, profile: Mapping[str, Any], signature: np.ndarray, *, meta: Mapping[str, str] | None = None
    ) -> None:
        """Publish the retained hello: ``profile`` (JSON-able) and the task ``signature`` vector.

        The body is safetensors with one float32 tensor ``"signature"``; the
        profile travels as JSON in ``meta["profile"]``.
        """
        sig = np.ascontiguousarray(np.asarray(signature, dtype=np.float32).reshape(-1))
        m = dict(meta or {})
        m["profile"] = json.dumps(dict(profile), sort_keys=True, separators=(",", ":"))
        if self.settings:
            m["settings"] = self.settings
        if self.signer is not None:  # the public half of the key this node signs with (receivers may pin it)
            m["key"] = self.signer.public_bytes().hex()
        self._publish_retained(
            self.topics.hello(self.node),
            self._envelope("hello", body=encode_tensors({"signature": sig}), meta=m),
        )

    def publish_expert(
        self,
        slot: int,
        round: int,
        tensors: Mapping[str, np.ndarray],
        latent: Mapping[str, np.ndarray],
        *,
        meta: Mapping[str, str] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Publish a finished expert of ``slot`` (retained): its tensors and task latent code.

        Tensors named in ``masks`` travel sparse: their values under the mask,
        the mask's packed bits and the shape (receivers rebuild the dense
        tensor, zero outside the mask). One message (retained messages cannot
        be chunked: the broker keeps only the last publish of a topic), so it
        must fit the transport's limit; ``PayloadTooLarge`` otherwise.
        """
        if self.settings:
            meta = {**(meta or {}), "settings": self.settings}
        payload = self._envelope("expert", round, slot, 0, encode_expert(tensors, latent, masks), meta)
        if len(payload) > self.transport.max_payload:
            raise PayloadTooLarge(
                f"expert of slot {slot} is {len(payload)} bytes, over the transport limit "
                f"{self.transport.max_payload}; experts are not chunked"
            )
        self._publish_retained(self.topics.expert(slot, self.node), payload)

    def republish_retained(self) -> None:
        """Publish presence, hello and experts again (a restarted broker may have lost them)."""
        for topic, payload in list(self._retained.items()):
            self._try_publish(topic, payload, retain=True)

    def publish_update(
        self,
        round: int,
        slot: int,
        tensors: Mapping[str, np.ndarray],
        *,
        receivers: Iterable[str],
        masks: Mapping[str, np.ndarray] | None = None,
        precision: Precision = "fp16",
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Send this node's update for (round, slot) to the slot's followers; returns its message id.

        Tensors named in ``masks`` travel sparse (values + mask id); a mask a
        receiver in ``receivers`` has not acknowledged yet is sent first, once
        (:meth:`publish_masks`). Recorded in the outbox (on disk) before the
        first publish, then re-sent until every receiver acknowledged it.
        Calling this again for the same (round, slot) (e.g. after a restart)
        re-sends the recorded message rather than making a second one.
        """
        existing = self.outbox.find("update", round, slot)
        if existing is not None:
            self._resend([existing])
            return existing.message_id
        receivers = {validate_name(r) for r in receivers} - {self.node}
        if masks:
            self._ensure_masks(round, slot, masks, receivers)
        body = encode_update(tensors, masks, precision)
        return self._record_and_send("update", round, slot, body, meta, receivers)

    def publish_masks(
        self, round: int, slot: int, masks: Mapping[str, np.ndarray], *, receivers: Iterable[str]
    ) -> str:
        """Send sparse-update masks of ``slot`` (a ``mask`` envelope on the update topic), reliably.

        Same path as an update (outbox, chunks, acks), but never stale: a mask
        stays valid for every later round that names it.
        """
        receivers = {validate_name(r) for r in receivers} - {self.node}
        mid = self._record_and_send("mask", round, slot, encode_masks(masks), None, receivers)
        for m in masks.values():
            key = f"mask:{slot}:{mask_id(m)}"
            sent = set(json.loads(self.outbox.get_meta(key) or "[]"))
            self.outbox.set_meta(key, json.dumps(sorted(sent | receivers)))
        return mid

    def _ensure_masks(
        self, round: int, slot: int, masks: Mapping[str, np.ndarray], receivers: set[str]
    ) -> None:
        missing: set[str] = set()
        never_sent = False
        for m in masks.values():
            raw = self.outbox.get_meta(f"mask:{slot}:{mask_id(m)}")
            never_sent |= raw is None
            missing |= receivers - set(json.loads(raw or "[]"))
        if missing or never_sent:
            self.publish_masks(round, slot, masks, receivers=missing)

    def _record_and_send(
        self,
        kind: str,
        round: int,
        slot: int,
        body: bytes,
        meta: Mapping[str, str] | None,
        receivers: set[str],
    ) -> str:
        seq = self.outbox.next_seq()
        mid = message_id(self.node, round, seq)
        data = self._envelope(kind, round, slot, seq, body, meta)
        topic = self.topics.update(slot, self.node)
        parts = [
            OutboxPart(topic, c, False, self.config.qos) for c in split_message(data, self._chunk_size())
        ]
        self.outbox.record(mid, kind=kind, round=round, slot=slot, seq=seq, parts=parts, receivers=receivers)
        entry = self.outbox.get(mid)
        assert entry is not None
        self._resend([entry], force=True)
        return mid

    def _chunk_size(self) -> int:
        # Data bytes per chunk: the configured size, under the transport's limit with room for the chunk header.
        return max(512, min(self.config.chunk_bytes, self.transport.max_payload - CHUNK_HEADER_BYTES - 64))

    def _resend(self, entries: Iterable[OutboxEntry], *, force: bool = False) -> None:
        for e in entries:
            if e.done and not force:
                continue
            ok = True
            for part in e.parts:
                if not self._try_publish(part.topic, part.payload, retain=part.retain):
                    ok = False
                    break
            if ok:
                self.outbox.mark_sent(e.message_id, now=time.time())
                if e.attempts:
                    log.debug("%s: re-sent %s (attempt %d)", self.node, e.message_id, e.attempts + 1)

    def resend_due(self) -> int:
        """Re-send every update whose ack is overdue; returns how many were due."""
        due = self.outbox.due(time.time(), self.config.ack_timeout_s, self.config.max_backoff_s)
        self._resend(due)
        return len(due)

    def pending(self) -> list[OutboxEntry]:
        """Own updates some receiver has not acknowledged yet."""
        return self.outbox.pending()
