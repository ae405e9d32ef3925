"""An expert bundle on disk: every expert of a device plus their latent codes.

The input of ``edgedfl export onnx`` and of anything else that wants "an
AdaptedModel with K trained slots and their codes". A swarm node writes the
same layout at the end of a run; :func:`edgedfl.experts.local.train_task_experts`
writes it from local training until then::

    bundle/
      experts.json          format, base model spec, AdapterConfig, RouterConfig,
                            one {"slot", "name"} per expert, edgedfl version
      experts.safetensors   adapted.state_tensors(): slot<k>/<layer>.lora_B (+ .mask, .lora_A for lora)
      latent.safetensors    slot<k>/latent.{count,mean,cov} (float32)

A is never stored for solora and ffa: it is regenerated from the seed.
Loading validates the codes like any received update
(:func:`edgedfl.routing.codes.code_spec`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedfl._version import __version__
from edgedfl.errors import ConfigError
from edgedfl.routing.codes import LatentCode
from edgedfl.routing.config import RouterConfig

FORMAT = "edgedfl-experts/1"
META_FILE = "experts.json"
EXPERTS_FILE = "experts.safetensors"
LATENT_FILE = "latent.safetensors"


def save_bundle(path: str | os.PathLike[str], routed: Any, model_spec: str) -> Path:
    """Write ``routed`` (a RoutedModel) as a bundle directory; ``model_spec`` names its base for load_model."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in routed.adapted.state_tensors().items()}
    save_torch(tensors, str(out / EXPERTS_FILE), metadata={"format": FORMAT})
    latent: dict[str, Any] = {}
    for k, code in enumerate(routed.codes):
        latent.update(code.to_tensors(prefix=f"slot{k}/"))
    save_numpy(latent, str(out / LATENT_FILE), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "edgedfl_version": __version__,
        "model": model_spec,
        "adapter": routed.adapted.config.to_dict(),
        "router": routed.config.to_dict(),
        "experts": [{"slot": k, "name": n} for k, n in enumerate(routed.names)],
    }
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / META_FILE)
    return out


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not an expert bundle ({META_FILE}: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return dict(meta)


def load_codes(path: str | os.PathLike[str], num_slots: int, dim: int) -> list[LatentCode]:
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(path) / LATENT_FILE))
    return [LatentCode.from_tensors(tensors, prefix=f"slot{k}/", dim=dim) for k in range(num_slots)]


def load_bundle(
    path: str | os.PathLike[str], *, model: str | None = None, top_k: int | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(RoutedModel, tokenizer, meta) from a bundle directory; ``model`` overrides the base spec, ``top_k``
    the experts applied per prompt. The router is always the bundle's own: its codes were computed at its
    layer, with its modules and pooling."""
    from safetensors.torch import load_file

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model
    from edgedfl.routing.router import RoutedModel, routing_module_names

    meta = read_meta(path)
    adapter_cfg = AdapterConfig.from_dict(meta["adapter"])
    router_cfg = RouterConfig.from_dict(meta["router"])
    if top_k is not None:
        router_cfg = dataclasses.replace(router_cfg, top_k=top_k)
    base, tok = load_model(model or meta["model"], seed=adapter_cfg.seed)
    adapted = attach_adapter(base, adapter_cfg)
    adapted.load_state_tensors(load_file(str(Path(path) / EXPERTS_FILE)))
    dim = len(routing_module_names(adapted, router_cfg)) * adapter_cfg.rank
    codes = load_codes(path, adapter_cfg.num_slots, dim)
    names: Sequence[str] = [e["name"] for e in sorted(meta["experts"], key=lambda e: e["slot"])]
    return RoutedModel(adapted, codes, router_cfg, names), tok, meta
