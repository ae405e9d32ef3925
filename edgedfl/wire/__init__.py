"""The edgedfl wire format: envelopes, tensor bodies, chunks and validation.

Everything a device needs to put an update on the wire and to take one off it,
using numpy, safetensors and cryptography only (never torch: a phone speaks
this format without Python). Byte layouts are specified in FORMAT.md next to
this file and pinned by golden files under tests/wire/golden.

Sending::

    body = encode_update(tensors, masks, precision="fp16")
    data = encode_envelope(Envelope("update", swarm, me, round=r, slot=s, seq=q, body=body), signer)
    for chunk in split_message(data, chunk_size_for(rate_bps, keepalive_s, broker_limit)):
        transport.publish(topic, chunk)

Receiving::

    data = reassembler.add(chunk, source=topic)          # None until complete
    env = decode_envelope(data, limits=limits, keyring=keyring)
    tensors = decode_update(env.body, spec=spec, masks=registry)

Every rejection is a :class:`edgedfl.errors.WireError` subclass.
"""

from edgedfl.wire.chunks import (
    CHUNK_HEADER_BYTES,
    ChunkHeader,
    Reassembler,
    ReassemblyStats,
    chunk_size_for,
    is_chunk,
    message_id_for,
    parse_chunk_header,
    split_message,
)
from edgedfl.wire.codec import (
    PRECISIONS,
    MaskRegistry,
    Precision,
    UpdateInfo,
    decode_masks,
    decode_tensors,
    decode_update,
    encode_masks,
    encode_tensors,
    encode_update,
    inspect_update,
    mask_id,
    pack_mask,
)
from edgedfl.wire.envelope import (
    KINDS,
    MAGIC,
    SCHEMA_VERSION,
    Envelope,
    canonical_json,
    decode_envelope,
    encode_envelope,
    is_envelope,
)
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.signing import KeyRing, Signer, key_fingerprint
from edgedfl.wire.validate import TensorSpec, validate_tensors

__all__ = [
    "CHUNK_HEADER_BYTES",
    "DEFAULT_LIMITS",
    "KINDS",
    "MAGIC",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "ChunkHeader",
    "Envelope",
    "KeyRing",
    "Limits",
    "MaskRegistry",
    "Precision",
    "Reassembler",
    "ReassemblyStats",
    "Signer",
    "TensorSpec",
    "UpdateInfo",
    "canonical_json",
    "chunk_size_for",
    "decode_envelope",
    "decode_masks",
    "decode_tensors",
    "decode_update",
    "encode_envelope",
    "encode_masks",
    "encode_tensors",
    "encode_update",
    "inspect_update",
    "is_chunk",
    "is_envelope",
    "key_fingerprint",
    "mask_id",
    "message_id_for",
    "pack_mask",
    "parse_chunk_header",
    "split_message",
    "validate_tensors",
]
