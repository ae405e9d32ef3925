"""Device profiles: what a phone, a Jetson board and a laptop can do.

A profile sets the emulated compute slow-down, memory cap and link (rate,
latency, loss), and picks the default quantization backend for the base model:
torchao weight-only on CPUs (int4 on phones, int8 on laptops), bitsandbytes nf4
on CUDA boards. Where the model runs is a setting of its own
(``DeviceConfig.device``: auto, cpu, cuda; resolved in
:mod:`edgedfl.model.placement`). Stdlib only: a phone-side tool can read
profiles without torch.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    name: str
    #: multiplier on compute time when emulating this device on a faster host
    compute_slowdown: float
    #: memory the device may use for the model and training, in MiB
    memory_cap_mb: int
    #: uplink/downlink rate on the local Wi-Fi, bits per second
    link_rate_bps: int
    #: one-way latency added to every link, milliseconds
    latency_ms: float
    #: packet loss on the link, percent
    loss_pct: float
    #: quantization backend picked when the user names none
    default_quant: str
    #: accelerator the profile expects ("cpu" or "cuda")
    accelerator: str = "cpu"


PROFILES: dict[str, DeviceProfile] = {
    "phone": DeviceProfile("phone", 4.0, 3072, 20_000_000, 20.0, 0.5, "torchao-int4"),
    "jetson": DeviceProfile("jetson", 1.5, 6144, 100_000_000, 5.0, 0.0, "bnb-nf4", "cuda"),
    "laptop": DeviceProfile("laptop", 1.0, 8192, 200_000_000, 2.0, 0.0, "torchao-int8"),
}


#: what ``DeviceConfig.device`` accepts: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


#: what ``DeviceConfig.dtype`` accepts
DTYPES = ("float32", "bfloat16", "auto")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, device: str = "auto") -> str:
    """``DeviceConfig.dtype`` as a torch dtype name: ``auto`` is ``bfloat16`` where the hardware the model
    will run on multiplies it natively (a GPU that supports it when ``device`` may be CUDA and one is
    present; else the CPU's flags), ``float32`` elsewhere."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose from {list(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device != "cpu" and has_cuda_device():
        import torch

        if torch.cuda.is_available():
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def is_device_name(name: str) -> bool:
    """True for a value ``DeviceConfig.device`` accepts (see :data:`DEVICE_CHOICES`)."""
    return bool(_DEVICE_RE.match(name))


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown device profile {name!r}; known: {sorted(PROFILES)}") from None


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T) board."""
    return Path("/etc/nv_tegra_release").exists() or "tegra" in os.uname().release


def has_cuda_device() -> bool:
    """Cheap CUDA check without importing torch (driver device nodes)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-gpu").exists() or is_jetson()


def detect_profile() -> DeviceProfile:
    """The profile that fits the machine this runs on."""
    if is_jetson():
        return PROFILES["jetson"]
    return PROFILES["laptop"]


@dataclasses.dataclass
class DeviceConfig(ConfigBase):
    """What one device holds and is, declared once for every config of a device.

    A swarm node (``NodeConfig``) and a device training alone (``LocalRunConfig``)
    both extend it; the phone's bundle export has no choice of profile or
    quantization (a phone runs fp32 ExecuTorch programs) and names its task.
    """

    data: str = option("arith", help="the device's data: a built-in task (topic, yesno, arith, strtf), a JSONL "
                                     "file or hf:<dataset>")
    profile: str = option("", help="device profile: phone, jetson, laptop; empty = detect this machine")
    quant: str = option("auto", help="quantization backend of the base, or 'auto' for the profile's default")
    device: str = option("auto", help="where the model runs: 'cpu' (even bnb-* with a GPU visible), 'cuda' (or "
                                      "'cuda:N'), or 'auto': CUDA when torch sees a GPU and the base is bnb-* or "
                                      "unquantized on a CUDA profile (jetson), else the CPU (torchao-* included)")
    dtype: str = option("float32", help="the base model's compute dtype: float32, bfloat16, or 'auto' (bfloat16 where "
                                        "the hardware multiplies it natively: a CPU with AVX512-BF16 or AMX, a GPU "
                                        "that supports it; else float32). Adapters and optimizer stay float32; on "
                                        "these CPUs a bfloat16 base takes about half the step time "
                                        "(bench/results/train.md)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(not self.profile or self.profile in PROFILES, type(self).__name__, "profile", self.profile,
              f"choose from {sorted(PROFILES)} or leave empty to detect")
        check(is_device_name(self.device), type(self).__name__, "device", self.device,
              f"choose from {list(DEVICE_CHOICES)} (or 'cuda:N')")
        check(self.dtype in DTYPES, type(self).__name__, "dtype", self.dtype, f"choose from {list(DTYPES)}")

    def device_profile(self) -> DeviceProfile:
        """The named profile, or the one that fits this machine."""
        return get_profile(self.profile) if self.profile else detect_profile()
