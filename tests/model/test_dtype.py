"""The base's compute dtype (DeviceConfig.dtype): validated, resolved from the hardware for 'auto', carried
from the CLI and the fleet to every device, and a bfloat16 base trains float32 adapters on eager attention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgedfl import FleetConfig, SwarmConfig
from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.sources import load_examples
from edgedfl.devices import DeviceConfig, cpu_has_native_bf16, resolve_dtype
from edgedfl.emulation.fleet import node_configs
from edgedfl.errors import ConfigError, ModelLoadError
from edgedfl.model.loading import load_model
from edgedfl.model.placement import model_dtype
from edgedfl.model.quantize import quantize_model
from edgedfl.node.config import NodeConfig
from edgedfl.train.config import TrainConfig
from edgedfl.train.local import calibrate
from edgedfl.train.trainer import Trainer

XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(XEON)
    assert cpu_has_native_bf16("flags\t: sse2 amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16(OLD_X86)
    assert not cpu_has_native_bf16(ARM)  # the NEON bf16 dot product is not what torch's CPU matmuls use
    assert not cpu_has_native_bf16("")


def test_explicit_dtypes_pass_and_auto_follows_this_cpu():
    assert resolve_dtype("float32") == "float32"
    assert resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("float16")


def test_bad_dtypes_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="DeviceConfig.dtype"):
        DeviceConfig(dtype="half")
    with pytest.raises(ConfigError, match="NodeConfig.dtype"):
        NodeConfig(dtype="int8")
    with pytest.raises(ConfigError, match="FleetConfig.dtype"):
        FleetConfig(tasks=["arith"], dtype="fp16")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("tiny", dtype="int8")
    assert DeviceConfig().dtype == "float32"  # the default keeps every earlier run's numbers


def test_the_fleet_gives_every_device_its_dtype(tmp_path):
    cfg = FleetConfig(devices=3, tasks=["arith", "strtf"], dtype="bfloat16", swarm=SwarmConfig(model="tiny"))
    nodes = node_configs(cfg, tmp_path, "mqtt://127.0.0.1:1")
    assert [n.dtype for n in nodes] == ["bfloat16"] * 3
    # and it survives the JSON a device process is started with
    nodes[0].save(tmp_path / "n.json")
    assert NodeConfig.load(tmp_path / "n.json").dtype == "bfloat16"


@pytest.mark.parametrize("quant", ["none", "torchao-int8"])
def test_a_bfloat16_base_trains_float32_adapters_on_eager_attention(quant):
    torch.manual_seed(0)
    base, tok = load_model("tiny", dtype="bfloat16")
    base, _ = quantize_model(base, quant, device="cpu")
    assert model_dtype(base) == "bfloat16"
    assert base.config._attn_implementation == "eager"  # the CPU's bf16 flash-attention backward is slow
    adapted = attach_adapter(base, AdapterConfig(method="solora", rank=4, density=0.5))
    adapted.activate(0)
    assert {p.dtype for p in adapted.trainable_parameters()} == {torch.float32}
    train = load_examples("arith", "train", n=64)
    calibrate(adapted, tok, [e.prompt for e in train[:16]], 0, 64)
    trainer = Trainer(adapted, tok, train, TrainConfig(lr=1e-2, batch_size=8, max_length=64, progress=False))
    losses = [trainer.train_step() for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_a_float32_base_keeps_its_attention():
    base, _ = load_model("tiny")
    before = base.config._attn_implementation
    base, _ = quantize_model(base, "none", device="cpu")
    assert model_dtype(base) == "float32"
    assert base.config._attn_implementation == before


@pytest.mark.slow
def test_train_cli_runs_a_bfloat16_base_and_says_so(tmp_path: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "edgedfl.cli", "train", "--model", "tiny", "--data", "arith",
                          "--dtype", "bfloat16", "--steps", "3", "--n-train", "32", "--no-progress",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["dtype"] == "bfloat16"
