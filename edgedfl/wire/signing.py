"""Ed25519 signing keys for envelopes: a :class:`Signer` and a :class:`KeyRing`.

A node signs with one private key known by a short *key id*; receivers hold a
key ring mapping key ids to public keys (and, optionally, to the sender names
a key may speak for, so one stolen-but-valid key cannot impersonate every
node). What exactly is signed is defined by :mod:`edgedfl.wire.envelope` and
FORMAT.md; this module only wraps the ``cryptography`` primitives and turns
their failures into the error tree.

Decisions:

* The default key id is the first 16 hex characters of sha256 over the raw
  32-byte public key: stable, short, and derivable by any peer that has the
  public key.
* Key ids are strings of 1..64 characters from ``[A-Za-z0-9._-]`` so they can
  appear in JSON and file names without escaping.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgedfl.errors import ConfigError, SignatureError, UnknownSigner

SIGNATURE_BYTES = 64
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise ConfigError(f"key_id={key_id!r}: must be 1..64 characters of [A-Za-z0-9._-]")
    return key_id


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_fingerprint(public_key: Ed25519PublicKey | bytes) -> str:
    """Default key id: first 16 hex chars of sha256(raw 32-byte public key)."""
    raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_public(public_key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if isinstance(public_key, (bytes, bytearray)) and len(public_key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(public_key))
    raise ConfigError("public_key: expected an Ed25519PublicKey or 32 raw bytes")


class Signer:
    """An Ed25519 private key with the key id that receivers know it by."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError("private_key: expected an Ed25519PrivateKey")
        self._key = private_key
        self.key_id = _check_key_id(key_id) if key_id is not None else key_fingerprint(self.public_key)

    @classmethod
    def generate(cls, key_id: str | None = None) -> Signer:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate(), key_id)

    @classmethod
    def from_seed(cls, seed: bytes, key_id: str | None = None) -> Signer:
        """A key from its 32-byte private seed (deterministic; tests and key files)."""
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ConfigError("seed: expected 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)), key_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key, to hand to peers' key rings."""
        return _raw_public(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self.key_id!r})"


class KeyRing:
    """Public keys a receiver trusts: key id -> public key (+ optional allowed senders)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey | bytes] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._senders: dict[str, frozenset[str] | None] = {}
        for key_id, public_key in (keys or {}).items():
            self.add(key_id, public_key)

    def add(
        self,
        key_id: str,
        public_key: Ed25519PublicKey | bytes,
        *,
        senders: Iterable[str] | None = None,
    ) -> None:
        """Trust ``public_key`` under ``key_id``; if ``senders`` is given, only for those senders."""
        _check_key_id(key_id)
        self._keys[key_id] = _load_public(public_key)
        self._senders[key_id] = frozenset(senders) if senders is not None else None

    @classmethod
    def of(cls, *signers: Signer) -> KeyRing:
        """A key ring trusting the public halves of ``signers`` (convenient in tests)."""
        ring = cls()
        for signer in signers:
            ring.add(signer.key_id, signer.public_key)
        return ring

    def remove(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        self._senders.pop(key_id, None)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, key_id: str, signature: bytes, data: bytes, *, sender: str | None = None) -> None:
        """Raise unless ``signature`` is ``key_id``'s valid signature over ``data``.

        :raises UnknownSigner: ``key_id`` is not in the ring.
        :raises SignatureError: the signature does not verify, or the key may not
            speak for ``sender``.
        """
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownSigner(f"signed by unknown key id {key_id!r}")
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"signature by key {key_id!r} does not verify") from None
        allowed = self._senders.get(key_id)
        if sender is not None and allowed is not None and sender not in allowed:
            raise SignatureError(f"key {key_id!r} may not sign for sender {sender!r}")
