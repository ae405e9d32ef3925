"""Writes the golden byte files that pin the wire format (tests/wire/golden/).

Deterministic: fixed inputs, a fixed Ed25519 test key (seed bytes 0..31) and
Ed25519's deterministic signatures, so running it again reproduces every file
byte for byte. test_wire_golden.py checks exactly that, and that decoding each
file gives back the inputs listed here. Run it only on purpose, when the
format changes (and then bump the schema version):

    python tests/wire/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedfl.wire import (
    Envelope,
    Signer,
    encode_envelope,
    encode_masks,
    encode_tensors,
    encode_update,
    split_message,
)

GOLDEN = Path(__file__).parent / "golden"
SWARM = "golden-swarm"
TEST_KEY_SEED = bytes(range(32))
TEST_KEY_ID = "test-key"
CHUNK_DATA_BYTES = 128


def test_signer() -> Signer:
    return Signer.from_seed(TEST_KEY_SEED, TEST_KEY_ID)


def signature_vector() -> np.ndarray:
    return (np.arange(8, dtype=np.float32) - 3.5) / 4  # (8,)


def masks() -> dict[str, np.ndarray]:
    # A 4x3 mask with 5 true entries and a 2x5 one: 10 bits, so the last byte has padding.
    m1 = np.zeros((4, 3), dtype=bool)
    m1[[0, 1, 2, 3, 3], [0, 2, 1, 0, 2]] = True
    m2 = np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 1]], dtype=bool)
    return {"layers.0.q_proj.lora_B": m1, "layers.0.v_proj.lora_B": m2}


def update_tensors() -> dict[str, np.ndarray]:
    """One sparse tensor (masked by masks()['layers.0.q_proj.lora_B']) and one dense."""
    dense_q = np.arange(1, 13, dtype=np.float32).reshape(4, 3) / 8 - 0.75  # (4, 3)
    dense_q *= masks()["layers.0.q_proj.lora_B"]
    bias = np.array([0.5, -0.25, 1.0], dtype=np.float32)  # (3,)
    return {"layers.0.q_proj.lora_B": dense_q, "layers.0.bias": bias}


def update_masks() -> dict[str, np.ndarray]:
    return {"layers.0.q_proj.lora_B": masks()["layers.0.q_proj.lora_B"]}


def hello_envelope() -> Envelope:
    body = encode_tensors({"task_signature": signature_vector()})
    return Envelope("hello", SWARM, "node-a", round=0, slot=0, seq=1, body=body,
                    meta={"profile": "laptop", "name": "caf\u00e9"})


def mask_envelope() -> Envelope:
    return Envelope("mask", SWARM, "node-a", round=3, slot=1, seq=2, body=encode_masks(masks()))


def update_envelope(precision: str = "fp16") -> Envelope:
    body = encode_update(update_tensors(), update_masks(), precision)  # type: ignore[arg-type]
    return Envelope("update", SWARM, "node-a", round=3, slot=1, seq=3 if precision == "fp16" else 4, body=body,
                    meta={"precision": precision})


def error_envelope() -> Envelope:
    return Envelope.for_error(SWARM, "node-b", "update rejected: tensor 'x': 2 NaN values", round=3, slot=1, seq=9)


def cases() -> dict[str, bytes]:
    """Golden file name (relative to golden/) -> exact bytes."""
    signed = encode_envelope(update_envelope("fp16"), test_signer())
    files = {
        "hello.bin": encode_envelope(hello_envelope()),
        "mask.bin": encode_envelope(mask_envelope()),
        "update_sparse_fp16.bin": encode_envelope(update_envelope("fp16")),
        "update_int8.bin": encode_envelope(update_envelope("int8")),
        "update_signed.bin": signed,
        "error.bin": encode_envelope(error_envelope()),
    }
    for i, chunk in enumerate(split_message(signed, CHUNK_DATA_BYTES)):
        files[f"chunks/update_signed.{i:03d}.bin"] = chunk
    return files


def main() -> None:
    for name, data in cases().items():
        path = GOLDEN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{path} {len(data)} bytes")
    (GOLDEN / "test_key.pub").write_text(test_signer().public_bytes().hex() + "\n")


if __name__ == "__main__":
    main()
