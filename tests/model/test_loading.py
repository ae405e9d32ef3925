"""Model loading: one path for tiny, GGUF, directories and hub ids; clear errors."""

from __future__ import annotations

import pytest
import torch

from edgedfl.errors import ModelLoadError
from edgedfl.model import loading


def test_resolve_every_kind_of_spec(tmp_path):
    assert loading.resolve("tiny").kind == "tiny"
    assert loading.resolve("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        loading.resolve(str(tmp_path / "m"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        loading.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError):
        loading.resolve("not a model")


def test_tiny_model_is_deterministic_and_frozen():
    m1, tok = loading.load_model("tiny", seed=1)
    m2, _ = loading.load_model("tiny", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert not any(p.requires_grad for p in m1.parameters())
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_directory_round_trip_uses_the_same_path(tmp_path):
    model, tok = loading.load_model("tiny", seed=2)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again, tok2 = loading.load_model(str(tmp_path / "saved"))
    ids = torch.tensor([tok("hello")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits)
    assert tok2("hello")["input_ids"] == tok("hello")["input_ids"]


def test_uncached_hub_id_offline_is_a_typed_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="offline"):
        loading.load_model("edgedfl-test/no-such-model")


@pytest.mark.integration
def test_real_smollm2_from_the_bundled_gguf_answers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = loading.load_model("smollm2")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
