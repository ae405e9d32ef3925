"""The trainer's loss with the LM head only at labelled positions equals the model's own loss, and so do the
gradients it gives the adapter: on the tiny llama and on a gemma3 config with a final soft-cap."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.sources import load_examples
from edgedfl.model.loading import load_model
from edgedfl.model.tiny import TINY_VOCAB, tiny_tokenizer
from edgedfl.train.batching import collate_train
from edgedfl.train.loss import labelled_loss


def _model(family: str):
    if family == "tiny":
        return load_model("tiny")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
                           final_logit_softcapping=30.0, initializer_range=0.2)
    return AutoModelForCausalLM.from_config(cfg).eval(), tiny_tokenizer()


@pytest.mark.parametrize("family", ["tiny", "gemma3"])
def test_labelled_loss_and_its_gradients_equal_the_models_own(family: str) -> None:
    base, tok = _model(family)
    adapted = attach_adapter(base, AdapterConfig(method="lora", rank=4))
    batch = collate_train(tok, load_examples("arith", "train", n=6), 64)
    model = adapted.peft_model
    model.train()

    own = model(**batch).loss
    own.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = labelled_loss(model, batch)
    assert got is not None
    got.backward()

    torch.testing.assert_close(got, own, atol=1e-5, rtol=1e-5)
    assert want and set(want) == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, g in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4)
