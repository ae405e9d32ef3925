"""The training loss with the LM head applied only where a label is.

A causal LM's ``model(**batch).loss`` computes logits over the whole
vocabulary at every position and then keeps the few that carry a label (the
completion's tokens): on SmolLM2 (49k-token vocabulary) that head is about a
fifth of a step, on Gemma 3 270M (262k) most of it. Here the decoder body runs
as usual and the head runs on the labelled positions alone; the loss is the
same mean cross-entropy over those positions (bench/results/train.md: the same
losses, a step 0.83x as long on SmolLM2).

Only for families whose head is a plain linear layer (plus Gemma's final
soft-cap); any other model falls back to its own ``.loss``.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100
#: model types whose logits are ``lm_head(final hidden state)`` (gemma3: then soft-capped, handled here)
PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "gemma3_text")


def labelled_loss(peft_model: Any, batch: dict[str, Any]) -> Any | None:
    """Mean cross-entropy over the labelled positions of ``batch``, the head applied there only; None where
    the model is not of a known plain-head family (the caller then uses the model's own loss)."""
    import torch

    causal = peft_model.base_model.model  # PeftModel -> LoraModel -> the transformers CausalLM
    body, head = getattr(causal, "model", None), getattr(causal, "lm_head", None)
    if getattr(causal.config, "model_type", None) not in PLAIN_HEAD or body is None or head is None:
        return None
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]  # (B, T-1): the state at position t predicts token t+1
    keep = labels != IGNORE  # (B, T-1)
    logits = head(hidden[:, :-1][keep]).float()  # (N, V): the labelled positions only
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, labels[keep])
