"""``edgedfl keys new|show|list|add``: device keys and a swarm's key ring (who may join, admission ``keyring``).

* ``new --key FILE``: create a device key (Ed25519, mode 0600) if there is none; print its key id and public half.
* ``show --key FILE``: print them for an existing key (what another device adds to its ring).
* ``list --keyring RING``: the keys a ring trusts, and for whom.
* ``add --keyring RING --node ID --public HEX``: trust a device's key for that node id (creates the ring).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["new", "show", "list", "add"])
    p.add_argument("--key", default="identity.key", help="a device key file (new, show)")
    p.add_argument("--keyring", default="keyring.json", help="a key ring file (list, add)")
    p.add_argument("--node", default=None, help="add: the node id the key may sign for")
    p.add_argument("--public", default=None, help="add: the key's public half, 64 hex chars (from `keys show`)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgedfl.errors import ConfigError
    from edgedfl.wire.signing import (
        KeyRing,
        key_fingerprint,
        load_or_create_signer,
        read_keyring,
        write_keyring,
    )

    if args.action in ("new", "show"):
        if args.action == "show" and not Path(args.key).is_file():
            raise ConfigError(f"--key {args.key}: no such key file (`edgedfl keys new` creates one)")
        signer = load_or_create_signer(args.key)
        print(f"key id  {signer.key_id}\npublic  {signer.public_bytes().hex()}\nfile    {args.key}")
        return 0
    if args.action == "list":
        ring = read_keyring(args.keyring)
        for key_id, entry in ring.entries().items():
            who = ", ".join(entry.get("senders", [])) or "any node"  # type: ignore[arg-type]
            print(f"{key_id}  {entry['public']}  for {who}")
        print(f"{len(ring)} key(s) in {args.keyring}")
        return 0
    if not args.node or not args.public:
        raise ConfigError("keys add needs --node ID and --public HEX")
    try:
        public = bytes.fromhex(args.public)
    except ValueError:
        raise ConfigError(f"--public {args.public!r}: not hex") from None
    ring = read_keyring(args.keyring) if Path(args.keyring).is_file() else KeyRing()
    key_id = key_fingerprint(public)
    ring.add(key_id, public, senders=sorted({*(ring.senders(key_id) or ()), args.node}))
    write_keyring(args.keyring, ring)
    print(f"{args.keyring}: key {key_id} may sign for {args.node}")
    return 0
