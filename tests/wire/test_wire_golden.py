"""The golden files pin the wire format: encoding must reproduce them byte for byte."""

from __future__ import annotations

from pathlib import Path

import make_golden as g
import numpy as np
import pytest

from edgedfl.wire import (
    KeyRing,
    MaskRegistry,
    Reassembler,
    decode_envelope,
    decode_masks,
    decode_tensors,
    decode_update,
    parse_chunk_header,
)

GOLDEN = Path(__file__).parent / "golden"
CASES = g.cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoding_reproduces_golden_bytes(name: str) -> None:
    expected = (GOLDEN / name).read_bytes()
    assert CASES[name] == expected, f"{name}: wire format drifted (regenerate only with a schema bump)"


def test_no_stray_golden_files() -> None:
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.bin")}
    assert on_disk == set(CASES)


def test_test_key_public_half_is_pinned() -> None:
    assert (GOLDEN / "test_key.pub").read_text().strip() == g.test_signer().public_bytes().hex()


def _read(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def test_hello_decodes() -> None:
    env = decode_envelope(_read("hello.bin"))
    assert (env.kind, env.sender, env.seq) == ("hello", "node-a", 1)
    assert dict(env.meta) == {"profile": "laptop", "name": "caf\u00e9"}
    np.testing.assert_array_equal(decode_tensors(env.body)["task_signature"], g.signature_vector())


def test_mask_then_updates_decode() -> None:
    registry = MaskRegistry()
    masks = decode_masks(decode_envelope(_read("mask.bin")).body, registry=registry)
    for name, mask in g.masks().items():
        np.testing.assert_array_equal(masks[name], mask)
    expected = g.update_tensors()
    fp16 = decode_update(decode_envelope(_read("update_sparse_fp16.bin")).body, masks=registry)
    int8 = decode_update(decode_envelope(_read("update_int8.bin")).body, masks=registry)
    for name, value in expected.items():
        np.testing.assert_allclose(fp16[name], value, atol=1e-3)
        np.testing.assert_allclose(int8[name], value, atol=np.abs(value).max() / 127)
        assert fp16[name].dtype == np.float32
    q_mask = g.masks()["layers.0.q_proj.lora_B"]
    assert np.all(fp16["layers.0.q_proj.lora_B"][~q_mask] == 0)


def test_signed_update_verifies_with_the_test_key() -> None:
    env = decode_envelope(_read("update_signed.bin"), keyring=KeyRing.of(g.test_signer()))
    assert env.key_id == g.TEST_KEY_ID
    assert env.unsigned() == g.update_envelope("fp16")


def test_error_envelope_decodes() -> None:
    env = decode_envelope(_read("error.bin"))
    assert env.is_error and env.body == b"" and env.error == g.error_envelope().error


def test_chunks_reassemble_in_any_order() -> None:
    names = sorted(n for n in CASES if n.startswith("chunks/"))
    chunks = [_read(n) for n in names]
    assert [parse_chunk_header(c).index for c in chunks] == list(range(len(chunks)))
    reassembler = Reassembler()
    results = [reassembler.add(c) for c in reversed(chunks)]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == _read("update_signed.bin")
