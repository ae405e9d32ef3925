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
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgedfl.errors import ConfigError, KeyChanged, MalformedMessage, SignatureError, UnknownSigner, WireError

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

    def public_hex(self, key_id: str) -> str | None:
        key = self._keys.get(key_id)
        return None if key is None else _raw_public(key).hex()

    def senders(self, key_id: str) -> frozenset[str] | None:
        """Who ``key_id`` may sign for (None: anyone)."""
        return self._senders.get(key_id)

    def key_of(self, sender: str) -> str | None:
        """The key id pinned to ``sender`` alone, if any."""
        for key_id, allowed in self._senders.items():
            if allowed is not None and sender in allowed:
                return key_id
        return None

    def pin(self, sender: str, key_hex: str, key_id: str) -> bool:
        """Trust on first use: pin ``sender`` to the public key its hello names; True if newly pinned.

        ``key_hex`` must be a 32-byte Ed25519 key whose fingerprint is ``key_id``.
        A sender already pinned to another key, or a key pinned to other
        senders, raises :class:`KeyChanged`; the signature is the caller's to verify next.
        """
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise MalformedMessage(f"hello of {sender!r}: meta key is not hex") from None
        if len(key) != 32 or key_fingerprint(key) != key_id:
            raise SignatureError(f"hello of {sender!r}: its key does not match its key id {key_id!r}")
        pinned = self.key_of(sender)
        if pinned is not None and pinned != key_id:
            raise KeyChanged(f"node {sender!r} pinned to key {pinned!r} now signs with {key_id!r}: refused")
        if pinned is not None:
            return False
        owners = self.senders(key_id)
        if key_id in self and owners is not None and sender not in owners:
            raise KeyChanged(f"key {key_id!r} is pinned to {sorted(owners)}, not {sender!r}")
        self.add(key_id, key, senders=[sender])
        return True

    def entries(self) -> dict[str, dict[str, object]]:
        """``key_id -> {"public": hex, "senders": [...]}``, the key ring file's form."""
        out: dict[str, dict[str, object]] = {}
        for key_id, key in sorted(self._keys.items()):
            entry: dict[str, object] = {"public": _raw_public(key).hex()}
            allowed = self._senders.get(key_id)
            if allowed is not None:
                entry["senders"] = sorted(allowed)
            out[key_id] = entry
        return out

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


# -- files: a device's own key, and a swarm's key ring ------------------------------------


def load_or_create_signer(path: str | os.PathLike[str], key_id: str | None = None) -> Signer:
    """The device key in ``path`` (its 32-byte Ed25519 seed, hex), created with mode 0600 on first use.

    :raises SignatureError: the file exists but holds no valid key.
    """
    p = Path(path)
    if p.is_file():
        try:
            seed = bytes.fromhex(p.read_text().strip())
            return Signer.from_seed(seed, key_id)
        except ValueError as exc:
            raise SignatureError(f"{p}: not an edgedfl device key ({exc})") from None
    p.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32)
    fd = os.open(str(p.with_suffix(p.suffix + ".tmp")), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    os.replace(p.with_suffix(p.suffix + ".tmp"), p)
    return Signer.from_seed(seed, key_id)


def read_keyring(path: str | os.PathLike[str]) -> KeyRing:
    """A key ring file: ``{"keys": {key_id: {"public": hex, "senders": [node, ...]}}}`` (JSON).

    :raises ConfigError: unreadable or malformed.
    """
    try:
        data = json.loads(Path(path).read_text())
        ring = KeyRing()
        for key_id, entry in data["keys"].items():
            ring.add(key_id, bytes.fromhex(entry["public"]), senders=entry.get("senders"))
    except (OSError, ValueError, KeyError, TypeError, WireError) as exc:
        raise ConfigError(f"key ring {path}: {exc}") from None
    return ring


def write_keyring(path: str | os.PathLike[str], ring: KeyRing) -> Path:
    """Save ``ring`` as JSON (sorted; atomically)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"keys": ring.entries()}, sort_keys=True, indent=2) + "\n")
    os.replace(tmp, p)
    return p
