"""The envelope: every edgedfl message on the wire is one of these.

An envelope names who sent what for which round and slot, carries a
safetensors body (or an error text, never both; STYLE point 4), the body's
sha256 and optionally an Ed25519 signature. This module encodes and decodes
it; what a body holds is :mod:`edgedfl.wire.codec`'s business, how it is cut
into chunks is :mod:`edgedfl.wire.chunks`'. The exact byte layout is in
FORMAT.md next to this file; in short::

    "EDFL" | u8 version | u8 flags | u32be H | header JSON (H bytes) | [64-byte sig] | body

Decisions (each checked by the tests under tests/wire):

* The header is canonical JSON (sorted keys, no spaces, ASCII with ``\\u``
  escapes, no floats) so the same envelope always encodes to the same bytes
  and golden files can pin the format.
* The signature covers the bytes *as sent* from the magic through the end of
  the header. The header holds ``body_len`` and ``body_sha256``, so the body is
  bound too, and a verifier never re-serialises JSON (a Java or Kotlin peer
  checks the signature over bytes it already has).
* ``flags`` bit 0 says a signature follows the header; it must agree with the
  presence of ``key_id`` in the header, or the message is malformed.
* Decoding checks lengths before slicing and never allocates for a claimed
  size: a header length over ``Limits.max_header_bytes`` is refused from the
  10-byte preamble alone.
* Verification order: structure -> signature (when a key ring is given) ->
  body hash. A flipped body byte is an :class:`IntegrityError`; a forged or
  altered header a :class:`SignatureError`; an unconfigured key
  :class:`UnknownSigner`. Replay and duplicate detection (same sender, round,
  sequence) belong to the protocol, which gets every field it needs here.
* Unknown header keys are refused: anything new in the header is a schema
  version bump, so an old peer never silently ignores a field it should obey.
* Re-encoding a decoded, signed envelope without a signer re-emits its
  signature unchanged (relaying a retained expert keeps the author's
  signature). Changing any field of it first makes that signature invalid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
import types
from collections.abc import Mapping
from typing import Any

from edgedfl.errors import (
    IntegrityError,
    MalformedMessage,
    PayloadTooLarge,
    SchemaVersionError,
    SignatureError,
)
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.signing import SIGNATURE_BYTES, KeyRing, Signer

SCHEMA_VERSION = 1
MAGIC = b"EDFL"
#: Bytes before the JSON header: magic, version, flags, header length.
PREAMBLE_BYTES = 10
FLAG_SIGNED = 0x01

KINDS = frozenset({"presence", "hello", "update", "expert", "ack", "mask", "error", "metrics"})
#: Largest value of round / slot / seq: a signed 64-bit integer, so Java's ``long`` holds it.
MAX_INT = 2**63 - 1

_PREAMBLE = struct.Struct(">4sBBI")
_IDENT_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_REQUIRED = ("body_len", "body_sha256", "kind", "meta", "round", "sender", "seq", "slot", "swarm")
_OPTIONAL = ("error", "key_id")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


_ROUTING = ("kind", "swarm", "sender", "round", "slot", "seq")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_routing(fields: Mapping[str, Any]) -> None:
    """The routing fields' rules, shared by the constructor and the decoder."""
    kind = fields["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise MalformedMessage(f"envelope kind {kind!r} is not one of {sorted(KINDS)}")
    for name in ("swarm", "sender"):
        value = fields[name]
        if not isinstance(value, str) or not _IDENT_RE.fullmatch(value):
            raise MalformedMessage(f"envelope {name}={value!r}: must be 1..128 chars of [A-Za-z0-9._-]")
    for name in ("round", "slot", "seq"):
        value = fields[name]
        if not _is_int(value) or not 0 <= value <= MAX_INT:
            raise MalformedMessage(f"envelope {name}={value!r}: must be an int in 0..2**63-1")


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One message: routing fields, a body (safetensors bytes) or an error text, a signature.

    ``swarm`` and ``sender`` are 1..128 characters of ``[A-Za-z0-9._-]`` (they
    become MQTT topic levels); ``round``, ``slot`` and ``seq`` are integers in
    ``0 .. 2**63-1``. ``kind == "error"`` exactly when ``error`` is set, and an
    error envelope has an empty body. ``key_id`` and ``signature`` are filled
    by :func:`decode_envelope` (as received) and used by
    :func:`encode_envelope` when no new signer is given.
    """

    kind: str
    swarm: str
    sender: str
    round: int = 0
    slot: int = 0
    seq: int = 0
    body: bytes = b""
    meta: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    error: str | None = None
    key_id: str | None = None
    signature: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_routing({name: getattr(self, name) for name in _ROUTING})
        if isinstance(self.body, (bytearray, memoryview)):
            object.__setattr__(self, "body", bytes(self.body))
        if not isinstance(self.body, bytes):
            raise MalformedMessage(f"envelope body must be bytes, got {type(self.body).__name__}")
        if not isinstance(self.meta, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in self.meta.items()
        ):
            raise MalformedMessage("envelope meta must map non-empty str keys to str values")
        object.__setattr__(self, "meta", types.MappingProxyType(dict(self.meta)))
        if self.error is not None:
            if self.kind != "error" or not isinstance(self.error, str) or not self.error:
                raise MalformedMessage("only an envelope of kind 'error' carries a (non-empty) error text")
            if self.body:
                raise MalformedMessage("an error envelope carries an error or a body, never both")
        elif self.kind == "error":
            raise MalformedMessage("an envelope of kind 'error' must carry an error text")
        if (self.key_id is None) != (self.signature is None):
            raise MalformedMessage("key_id and signature come together or not at all")
        if self.signature is not None and (
            not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES
        ):
            raise MalformedMessage(f"signature must be {SIGNATURE_BYTES} bytes")

    @classmethod
    def for_error(
        cls, swarm: str, sender: str, error: str, *, round: int = 0, slot: int = 0, seq: int = 0,
        meta: Mapping[str, str] | None = None,
    ) -> Envelope:
        """An error envelope (kind ``"error"``, empty body): how a remote failure travels."""
        return cls("error", swarm, sender, round, slot, seq, b"", dict(meta or {}), error)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the body, as carried in the header."""
        return hashlib.sha256(self.body).hexdigest()

    @property
    def is_error(self) -> bool:
        return self.kind == "error"

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def unsigned(self) -> Envelope:
        """The same envelope without key id and signature."""
        return dataclasses.replace(self, key_id=None, signature=None)


def canonical_json(obj: Any) -> bytes:
    """The one JSON spelling used for headers: sorted keys, no spaces, ASCII only, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _header_dict(env: Envelope, key_id: str | None) -> dict[str, Any]:
    header: dict[str, Any] = {
        "body_len": len(env.body),
        "body_sha256": env.sha256,
        "kind": env.kind,
        "meta": dict(env.meta),
        "round": env.round,
        "sender": env.sender,
        "seq": env.seq,
        "slot": env.slot,
        "swarm": env.swarm,
    }
    if env.error is not None:
        header["error"] = env.error
    if key_id is not None:
        header["key_id"] = key_id
    return header


def encode_envelope(env: Envelope, signer: Signer | None = None) -> bytes:
    """Serialise ``env`` to bytes, signed by ``signer`` if given.

    Without a signer, an envelope that already carries ``key_id`` and
    ``signature`` (a decoded one being relayed) keeps them; otherwise the
    message goes unsigned. Deterministic: the same envelope and key give the
    same bytes (Ed25519 signatures are deterministic).
    """
    key_id = signer.key_id if signer is not None else env.key_id
    header = canonical_json(_header_dict(env, key_id))
    flags = FLAG_SIGNED if key_id is not None else 0
    signed_part = _PREAMBLE.pack(MAGIC, SCHEMA_VERSION, flags, len(header)) + header
    if signer is not None:
        signature: bytes = signer.sign(signed_part)
    elif env.signature is not None:
        signature = env.signature
    else:
        signature = b""
    return b"".join((signed_part, signature, env.body))


def is_envelope(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like an envelope (magic only; says nothing of validity)."""
    return bytes(data[:4]) == MAGIC


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let a signer and a reader disagree on what was signed.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedMessage(f"JSON header repeats key {key!r}")
        result[key] = value
    return result


def parse_header_json(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON object parse shared by envelope and body headers; errors are MalformedMessage."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except MalformedMessage:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedMessage(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_header(header: dict[str, Any], limits: Limits) -> None:
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise MalformedMessage(f"envelope header lacks {missing}")
    unknown = sorted(set(header) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise MalformedMessage(f"envelope header has unknown keys {unknown} (schema {SCHEMA_VERSION})")
    _check_routing(header)
    if not _is_int(header["body_len"]) or header["body_len"] < 0:
        raise MalformedMessage(f"envelope body_len={header['body_len']!r}: not a non-negative int")
    if not isinstance(header["body_sha256"], str) or not _HEX64_RE.fullmatch(header["body_sha256"]):
        raise MalformedMessage("envelope body_sha256 must be 64 lowercase hex characters")
    meta = header["meta"]
    if not isinstance(meta, dict):
        raise MalformedMessage("envelope meta must be a JSON object")
    if len(meta) > limits.max_meta_items:
        raise MalformedMessage(f"envelope meta has {len(meta)} items, limit {limits.max_meta_items}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise MalformedMessage(f"envelope meta[{key!r}] must be a string")
        if len(key) > limits.max_string_chars or len(value) > limits.max_string_chars:
            raise MalformedMessage(f"envelope meta[{key[:40]!r}] longer than {limits.max_string_chars} chars")
    error = header.get("error")
    if error is not None and (not isinstance(error, str) or len(error) > limits.max_string_chars):
        raise MalformedMessage("envelope error must be a string within max_string_chars")
    key_id = header.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise MalformedMessage("envelope key_id must be a string")


def decode_envelope(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    keyring: KeyRing | None = None,
) -> Envelope:
    """Parse and check one envelope. Nothing is unpickled; every rejection is a ``WireError``.

    With a ``keyring``, the message must be signed by a key in it (for its
    sender, if the ring restricts that); without one, a signature is kept on
    the result but not verified.

    :raises PayloadTooLarge: the message or its header exceeds ``limits``.
    :raises MalformedMessage: bad magic, truncated, bad JSON, bad fields.
    :raises SchemaVersionError: a version other than :data:`SCHEMA_VERSION`.
    :raises UnknownSigner: signed by a key id the ring does not hold.
    :raises SignatureError: unsigned while a ring is given, or the signature fails.
    :raises IntegrityError: the body does not match ``body_sha256``.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    total = len(view)
    if total > limits.max_message_bytes:
        raise PayloadTooLarge(f"message of {total} bytes exceeds limit {limits.max_message_bytes}")
    if total < PREAMBLE_BYTES:
        raise MalformedMessage(f"message of {total} bytes is shorter than the {PREAMBLE_BYTES}-byte preamble")
    magic, version, flags, header_len = _PREAMBLE.unpack_from(view, 0)
    if magic != MAGIC:
        raise MalformedMessage(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"wire schema version {version}; this build speaks {SCHEMA_VERSION}")
    if flags & ~FLAG_SIGNED:
        raise MalformedMessage(f"unknown flag bits 0x{flags:02x}")
    if header_len > limits.max_header_bytes:
        raise PayloadTooLarge(f"header length {header_len} exceeds limit {limits.max_header_bytes}")
    sig_len = SIGNATURE_BYTES if flags & FLAG_SIGNED else 0
    body_start = PREAMBLE_BYTES + header_len + sig_len
    if body_start > total:
        raise MalformedMessage(f"truncated: header and signature need {body_start} bytes, have {total}")
    header = parse_header_json(bytes(view[PREAMBLE_BYTES : PREAMBLE_BYTES + header_len]), "envelope header")
    _check_header(header, limits)
    key_id = header.get("key_id")
    if (key_id is not None) != bool(sig_len):
        raise MalformedMessage("signed flag and key_id in the header disagree")
    if total - body_start != header["body_len"]:
        raise MalformedMessage(f"body is {total - body_start} bytes, header says {header['body_len']}")
    signature = bytes(view[body_start - sig_len : body_start]) if sig_len else None
    if keyring is not None:
        if key_id is None or signature is None:
            raise SignatureError("message is unsigned but signatures are required")
        keyring.verify(key_id, signature, bytes(view[: PREAMBLE_BYTES + header_len]), sender=header["sender"])
    body = bytes(view[body_start:])
    if hashlib.sha256(body).hexdigest() != header["body_sha256"]:
        raise IntegrityError("body sha256 does not match the envelope header")
    try:
        return Envelope(
            kind=header["kind"],
            swarm=header["swarm"],
            sender=header["sender"],
            round=header["round"],
            slot=header["slot"],
            seq=header["seq"],
            body=body,
            meta=header["meta"],
            error=header.get("error"),
            key_id=key_id,
            signature=signature,
        )
    except MalformedMessage:
        raise
    except (TypeError, ValueError) as exc:  # belt and braces: field checks should have caught it
        raise MalformedMessage(f"envelope fields invalid: {exc}") from None
