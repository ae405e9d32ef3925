"""A tiny Llama-style model and a byte-level tokenizer, built in memory.

For tests and quick runs: no download, no files, deterministic weights from a
seed. The tokenizer maps UTF-8 bytes to ids 3..258 (0 = pad, 1 = bos, 2 = eos),
so any text round-trips and prompts of the built-in tasks stay short enough.
"""

from __future__ import annotations

from typing import Any

TINY_VOCAB = 259


def tiny_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        # Wider than the usual 0.02 so that a random tiny model, like a pretrained
        # one, can reach peaked output distributions through adapters alone.
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_tokenizer() -> Any:
    """A byte-level fast tokenizer with pad/bos/eos specials (no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    byte_chars.sort()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in byte_chars:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # Split into single byte-level characters: every character is its own token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )
    fast.padding_side = "left"
    return fast


def tiny_model(seed: int = 0, **overrides: Any) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(tiny_config(**overrides))
    finally:
        torch.random.set_rng_state(gen_state)
    model.eval()
    return model
