"""OnnxLM: greedy generation with an exported routed model, on ONNX Runtime alone (no torch).

Loads ``model.onnx`` and the ``tokenizer.json`` beside it (with the
``tokenizers`` package: ``transformers.AutoTokenizer`` imports torch), then
runs one prefill call (P = 0, a zero route: the graph routes every prompt)
and one call per new token with the KV cache and the prefill's route fed
back, so the expert chosen for the prompt is kept for every generated token.

Rows of a batch that reach EOS keep receiving the pad token (as
``transformers`` ``generate`` does), so batched and single-prompt outputs
agree; generation stops when every row is done or after ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.errors import BackendUnavailable, ConfigError, ModelLoadError

META_KEY = "edgedfl"  # same key as edgedfl.export.onnx.META_KEY (that module imports torch)


@dataclasses.dataclass
class Generation:
    """One prompt's result: chosen expert, generated text and timing."""

    prompt: str
    text: str
    expert: int
    expert_name: str
    distances: list[float]
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: tokens after the first, per second of decode steps."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        """One line: expert, text, timing."""
        return (
            f"expert {self.expert} ({self.expert_name}) | {json.dumps(self.text, ensure_ascii=False)} | "
            f"prompt {self.prompt_tokens} tok, prefill {self.prefill_s * 1e3:.1f} ms | "
            f"{self.new_tokens} new tok, decode {self.decode_s * 1e3:.1f} ms ({self.tokens_per_s:.1f} tok/s)"
        )


class OnnxLM:
    """An exported routed model and its tokenizer, ready to generate."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable("edgedfl infer needs onnxruntime and tokenizers: pip install "
                                     "'edgedfl[onnx]'") from exc
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise ModelLoadError(f"{path} has no '{META_KEY}' metadata: not exported by `edgedfl export onnx`")
        self.meta: dict[str, Any] = json.loads(raw)
        tok_path = path.parent / self.meta["tokenizer"]
        if not tok_path.is_file():
            raise ModelLoadError(f"tokenizer {tok_path} missing next to {path}")
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.num_layers = int(self.meta["num_layers"])
        self.num_kv = int(self.meta["num_kv_heads"])
        self.head_dim = int(self.meta["head_dim"])
        self.num_experts = int(self.meta["num_experts"])
        self.expert_names: list[str] = list(self.meta["experts"])
        self.eos = self.meta.get("eos_token_id")
        self.pad = int(self.meta.get("pad_token_id") if self.meta.get("pad_token_id") is not None else self.eos or 0)
        self.output_names = [o.name for o in self.session.get_outputs()]

    # -- tokens ---------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], max_length: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded (input_ids (B, T), attention_mask (B, T)), int64."""
        rows = [e.ids[-max_length:] for e in self.tokenizer.encode_batch(list(prompts), add_special_tokens=True)]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- graph calls ------------------------------------------------------------------

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        feed = {"past_mask": np.zeros((batch, 0), dtype=np.int64)}
        for i in range(self.num_layers):
            for kv in ("key", "value"):
                feed[f"past.{i}.{kv}"] = np.zeros((batch, self.num_kv, 0, self.head_dim), dtype=np.float32)
        return feed

    def route_for(self, batch: int, expert: int | str | None = None, merge: bool = False) -> np.ndarray:
        """The ``route`` input: zeros (the graph routes), one-hot ``expert`` (oracle/single), or all ones."""
        route = np.zeros((batch, self.num_experts), dtype=np.float32)  # (B, K)
        if merge:
            route[:] = 1.0
        elif expert is not None:
            idx = self.expert_names.index(expert) if isinstance(expert, str) else int(expert)
            if not 0 <= idx < self.num_experts:
                raise ConfigError(f"expert {expert!r} out of range ({self.num_experts} experts)")
            route[:, idx] = 1.0
        return route

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, route: np.ndarray | None = None,
        cache: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """One graph call; returns every output by name (``present.*`` is the next call's cache)."""
        batch = input_ids.shape[0]
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                "route": route if route is not None else self.route_for(batch)}
        feed.update(cache if cache is not None else self.empty_cache(batch))
        return dict(zip(self.output_names, self.session.run(None, feed)))

    @staticmethod
    def next_cache(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cache = {"past_mask": out["present_mask"]}
        for name, value in out.items():
            if name.startswith("present."):
                cache["past." + name.removeprefix("present.")] = value
        return cache

    # -- generation ----------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 32,
        expert: int | str | None = None,
        merge: bool = False,
        max_length: int = 1024,
    ) -> list[Generation]:
        """Greedy generation; the route is chosen from each prompt (unless ``expert``/``merge`` force it)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.encode(prompts, max_length)
        batch = len(prompts)
        t0 = time.perf_counter()
        out = self.forward(ids, mask, self.route_for(batch, expert, merge))
        prefill_s = time.perf_counter() - t0
        route = out["route_weights"]  # (B, K), kept for every generated token
        experts, dist = out["expert"], out["distances"]
        new: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(batch, dtype=bool)
        t1 = time.perf_counter()
        for step in range(max_new_tokens):
            nxt = out["logits"][:, -1].argmax(-1).astype(np.int64)  # (B,)
            nxt = np.where(done, self.pad, nxt)
            for i in range(batch):
                if not done[i]:
                    new[i].append(int(nxt[i]))
            if self.eos is not None:
                done |= nxt == self.eos
            if done.all() or step == max_new_tokens - 1:
                break
            out = self.forward(nxt[:, None], np.ones((batch, 1), dtype=np.int64), route, self.next_cache(out))
        decode_s = time.perf_counter() - t1
        results = []
        for i, p in enumerate(prompts):
            toks = [t for t in new[i] if t != self.eos]
            k = int(experts[i])
            results.append(Generation(
                prompt=p, text=self.decode(toks), expert=k, expert_name=self.expert_names[k],
                distances=[float(d) for d in dist[i]], prompt_tokens=int(mask[i].sum()), new_tokens=len(new[i]),
                prefill_s=prefill_s, decode_s=decode_s,
            ))
        return results
