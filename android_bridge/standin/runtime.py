"""The bundle's three programs through the ExecuTorch runtime, with numpy in and out.

This is the only file of the stand-in that touches ExecuTorch. ExecuTorch's
Python bindings exchange ``torch.Tensor`` objects, so loading a program
imports torch (the library, not any model code): on a phone the same calls go
through ExecuTorch's Java/C++ API and no torch exists. Nothing here imports
transformers, peft or ``edgedfl.model`` / ``edgedfl.adapters.model``.

Masked B: the training program trains dense B. After every SGD step
:meth:`Trainer.step` multiplies each B by its mask in place, which for SGD
(without weight decay) gives exactly the masked-gradient update the Python
nodes make: a masked entry starts at zero, and is zero again after the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _tensor(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


class Trainer:
    """train.pte: SGD steps on the phone's B, B in and out as numpy."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], lr: float, momentum: float = 0.0) -> None:
        from executorch.extension.training import _load_for_executorch_for_training, get_sgd_optimizer

        spec = manifest["programs"]["train"]
        self.batch_size = int(spec["batch_size"])
        self.max_length = int(spec["max_length"])
        self.layers = [e["name"] for e in manifest["layers"]]
        self.params = {e["name"]: e["param"] for e in manifest["layers"]}
        self.program = _load_for_executorch_for_training(str(bundle / spec["file"]))
        self.a_inputs: list[Any] = []
        self.masks: dict[str, Any] = {}
        # The runtime hands out its parameter tensors only after a first call: run one on a dummy
        # batch (B is not stepped, so nothing changes).
        r = int(manifest["rank"])
        zeros_a = [np.zeros((r, int(e["d_in"])), dtype=np.float32) for e in manifest["layers"]]
        ids = np.zeros((self.batch_size, self.max_length), dtype=np.int64)
        labels = np.full_like(ids, -100)
        labels[:, 1] = 3
        self.program.forward_backward("forward", (_tensor(ids), _tensor(labels), _tensor(np.ones_like(ids)),
                                                  *[_tensor(a) for a in zeros_a]))
        self._named = self.program.named_parameters()  # these alias the program's memory: written in place
        missing = [p for p in self.params.values() if p not in self._named]
        if missing:
            raise RuntimeError(f"training program has no parameters {missing[:2]}")
        self.optimizer = get_sgd_optimizer(self._named, lr, momentum, 0, 0, False)

    def set_slot(self, lora_A: Sequence[np.ndarray]) -> None:
        """A of the phone's slot (one per layer, manifest order): the program's extra inputs."""
        self.a_inputs = [_tensor(np.asarray(a, dtype=np.float32)) for a in lora_A]

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        self.masks = {n: _tensor(np.asarray(masks[n], dtype=np.float32)) for n in self.layers}
        self._apply_masks()

    def _apply_masks(self) -> None:
        for n, m in self.masks.items():
            self._named[self.params[n]].mul_(m)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        """One forward + backward + SGD step + masks; returns the loss before the step."""
        loss = self.program.forward_backward("forward", (
            _tensor(batch["input_ids"]), _tensor(batch["labels"]), _tensor(batch["attention_mask"]),
            *self.a_inputs,
        ))[0]
        self.optimizer.step(self.program.named_gradients())
        self._apply_masks()
        return float(loss)

    def get_B(self) -> dict[str, np.ndarray]:
        """layer -> B (d_out, r) float32, a copy."""
        return {n: self._named[self.params[n]].detach().numpy().copy() for n in self.layers}

    def set_B(self, values: dict[str, np.ndarray]) -> None:
        """Write B into the program's parameters (after aggregation); masks re-applied."""
        for n in self.layers:
            target = self._named[self.params[n]]
            target.copy_(_tensor(np.asarray(values[n], dtype=np.float32)).reshape(target.shape))
        self._apply_masks()


def _method(bundle: Path, spec: dict[str, Any]) -> Any:
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(bundle / spec["file"])).load_method(spec.get("method", "forward"))


@dataclasses.dataclass
class FeatureOutputs:
    pooled: np.ndarray  # (H,) mean of the last hidden state
    cov: np.ndarray  # (L, r, r) per layer, summed over tokens
    energy: np.ndarray  # (L,) per layer sum of ||x||^2
    tokens: float
    routing: np.ndarray  # (D,) routing features in the slot's subspace


class Features:
    """features.pte: pooled hidden state and per-layer input statistics of one prompt."""

    def __init__(self, bundle: Path, manifest: dict[str, Any]) -> None:
        self.method = _method(bundle, manifest["programs"]["features"])

    def run(self, ids: Sequence[int], lora_A: Sequence[np.ndarray]) -> FeatureOutputs:
        """Outputs for one prompt (no padding) with the slot's A."""
        x = np.asarray(ids, dtype=np.int64)[None]  # (1, T)
        out = self.method.execute([_tensor(x), _tensor(np.ones_like(x)),
                                   *[_tensor(np.asarray(a, dtype=np.float32)) for a in lora_A]])
        pooled, cov, energy, tokens, routing = (o.numpy() for o in out)
        return FeatureOutputs(pooled[0].astype(np.float64), cov.astype(np.float64), energy.astype(np.float64),
                              float(tokens), routing[0].astype(np.float64))


class Inference:
    """infer.pte: the routed model; the experts' B and the codes are inputs."""

    def __init__(self, bundle: Path, manifest: dict[str, Any]) -> None:
        spec = manifest["programs"]["infer"]
        self.method = _method(bundle, spec)
        self.k = int(spec["num_experts"])
        self.dim = int(spec["code_dim"])
        self.rank = int(manifest["rank"])
        self.scaling = float(manifest["scaling"])
        self.layers = [e["name"] for e in manifest["layers"]]
        self.d_out = {e["name"]: int(e["d_out"]) for e in manifest["layers"]}
        self.means = np.zeros((self.k, self.dim), dtype=np.float32)  # (K, D)
        self.factors = np.repeat(np.eye(self.dim, dtype=np.float32)[None], self.k, 0)  # (K, D, D)
        self.stacks: list[Any] = []
        self.set_experts({})

    def set_experts(self, experts: dict[int, dict[str, np.ndarray]]) -> None:
        """slot -> layer -> B (d_out, r); missing slots are zero experts."""
        stacks = []
        for n in self.layers:
            cat = np.zeros((self.k * self.rank, self.d_out[n]), dtype=np.float32)  # (K*r, d_out)
            for slot, tensors in experts.items():
                cat[slot * self.rank : (slot + 1) * self.rank] = self.scaling * np.asarray(tensors[n]).T
            stacks.append(_tensor(cat))
        self.stacks = stacks

    def set_codes(self, means: np.ndarray, factors: np.ndarray) -> None:
        """The experts' latent codes as the router takes them: means (K, D), precision factors (K, D, D)."""
        self.means = np.asarray(means, dtype=np.float32)
        self.factors = np.asarray(factors, dtype=np.float32)

    def route_for(self, route: int | str | None) -> np.ndarray:
        """(1, K) route input: a slot (that expert), "merge" (all experts), None (the router picks)."""
        weights = np.zeros((1, self.k), dtype=np.float32)  # (1, K)
        if route == "merge":
            weights[:] = 1.0
        elif isinstance(route, int):
            weights[0, route] = 1.0
        return weights

    def run(self, ids: Sequence[int], route: int | str | None) -> tuple[np.ndarray, int]:
        """((T, V) logits, chosen expert) of one unpadded sequence."""
        x = np.asarray(ids, dtype=np.int64)[None]  # (1, T)
        out = self.method.execute([_tensor(x), _tensor(np.ones_like(x)), _tensor(self.route_for(route)),
                                   _tensor(self.means), _tensor(self.factors), *self.stacks])
        return np.asarray(out[0].numpy()[0], dtype=np.float64), int(out[1].numpy().reshape(-1)[0])

    def logits(self, ids: Sequence[int], route: int | str | None) -> np.ndarray:
        return self.run(ids, route)[0]  # (T, V)

    def generate(self, ids: Sequence[int], route: int | str | None, max_new_tokens: int,
                 eos_id: int | None) -> tuple[list[int], int]:
        """Greedy decoding (re-running the whole sequence each step: the program has no KV cache).

        Returns the new tokens and the expert the prompt was routed to; like the
        nodes' generation, the prompt's route is kept for every generated token.
        """
        seq, new = list(ids), []
        logits, expert = self.run(seq, route)
        fixed: int | str | None = route
        if route is None:  # keep the prompt's expert while generating
            fixed = expert
        for step in range(max_new_tokens):
            if step:
                logits = self.run(seq, fixed)[0]
            nxt = int(logits[-1].argmax())
            if eos_id is not None and nxt == eos_id:
                break
            seq.append(nxt)
            new.append(nxt)
        return new, expert


def completion_nll(logits: np.ndarray, labels: Sequence[int]) -> tuple[float, int]:
    """(sum of cross-entropy over labelled tokens, their count), labels shifted by one as in training."""
    y = np.asarray(labels[1:], dtype=np.int64)  # (T-1,)
    z = logits[:-1]  # (T-1, V)
    keep = y != -100
    if not keep.any():
        return 0.0, 0
    z, y = z[keep], y[keep]
    zmax = z.max(-1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))  # (N, V)
    return float(-logp[np.arange(len(y)), y].sum()), int(keep.sum())
