"""Local training: completion-only loss, budgets, learning, metrics as plain dicts."""

from __future__ import annotations

import json

import pytest

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.examples import Example
from edgedfl.errors import ConfigError, DataError
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import IGNORE, collate_train, encode_pair
from edgedfl.train.trainer import TrainConfig, Trainer


def _examples(n: int, offset: int = 0) -> list[Example]:
    # a task a tiny random model can learn in a few dozen steps: the answer is a fixed word
    return [Example(f"Q{i + offset}: colour?\nA:", " red", "colour") for i in range(n)]


def test_loss_is_on_the_completion_only():
    tok = tiny_tokenizer()
    ids, labels = encode_pair(tok, Example("abc", " de", "t"), 64)
    n_prompt = len(tok("abc")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    batch = collate_train(tok, [Example("abc", " de", "t"), Example("a", " longer answer", "t")], 64)
    assert batch["input_ids"].shape == batch["labels"].shape
    # padding is never a target
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == IGNORE)).all()


def test_prompt_is_cut_from_the_left_to_fit():
    tok = tiny_tokenizer()
    ids, labels = encode_pair(tok, Example("x" * 100, " yes", "t"), 16)
    assert len(ids) == 16 and tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]).startswith(" yes")


@pytest.mark.parametrize("method", ["solora", "lora", "ffa"])
def test_training_learns_and_reports_plain_dicts(method):
    adapted = attach_adapter(tiny_model(), AdapterConfig(method=method, rank=8, density=0.5))
    cfg = TrainConfig(max_steps=60, batch_size=8, lr=1e-2, progress=False, max_new_tokens=5)
    trainer = Trainer(adapted, tiny_tokenizer(), _examples(64), cfg, eval_examples=_examples(8, offset=1000))
    before = trainer.evaluate()
    metrics = trainer.train()
    json.dumps(metrics)  # plain data all the way down
    assert metrics["steps"] == 60
    assert metrics["losses"][-1] < metrics["losses"][0] * 0.5
    assert metrics["eval"]["loss"] < before["loss"]
    assert before["exact_match"] == 0.0 and metrics["eval"]["exact_match"] == 1.0
    assert metrics["eval"]["per_task"] == {"colour": 1.0}


def test_grad_accumulation_and_time_budget():
    adapted = attach_adapter(tiny_model(), AdapterConfig(rank=4))
    cfg = TrainConfig(max_steps=0, time_budget_s=0.5, batch_size=2, grad_accum=2, progress=False)
    metrics = Trainer(adapted, tiny_tokenizer(), _examples(16), cfg).train()
    assert metrics["steps"] >= 1 and metrics["wall_s"] < 30


def test_bad_settings_and_data_are_typed_errors():
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1e-3)
    with pytest.raises(ConfigError, match="budget"):
        TrainConfig(max_steps=0, time_budget_s=0)
    adapted = attach_adapter(tiny_model(), AdapterConfig(rank=4))
    with pytest.raises(DataError):
        Trainer(adapted, tiny_tokenizer(), [], TrainConfig(progress=False))


def test_lr_zero_trains_at_the_method_s_tuned_default():
    for method in ("solora", "ffa"):
        adapted = attach_adapter(tiny_model(), AdapterConfig(method=method, rank=4))
        trainer = Trainer(adapted, tiny_tokenizer(), _examples(8), TrainConfig(lr=0.0, max_steps=1, progress=False))
        assert trainer.optimizer.param_groups[0]["lr"] == adapted.spec.default_lr


def test_a_trainer_refuses_to_train_another_slot_than_it_was_built_for():
    from edgedfl.errors import AdapterError

    adapted = attach_adapter(tiny_model(), AdapterConfig(rank=4, num_slots=2))
    trainer = Trainer(adapted, tiny_tokenizer(), _examples(8), TrainConfig(max_steps=1, progress=False))
    adapted.activate(1)
    with pytest.raises(AdapterError, match="one Trainer per active slot"):
        trainer.train()
