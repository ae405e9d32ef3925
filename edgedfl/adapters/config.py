"""AdapterConfig: which adapter method, its rank, slots, and sparsity budget."""

from __future__ import annotations

import dataclasses

from edgedfl.adapters.methods import AdapterMethod, get_method, method_names
from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import ConfigError

DENSITY_PROXIES = ("erank", "energy", "uniform")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
#: a projection some families fuse with others into one layer (phi3): where a target (or a routing module) is found
FUSED_INTO = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
              "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


@dataclasses.dataclass
class AdapterConfig(ConfigBase):
    method: str = option("solora", help="adapter method: solora (sparse-orthogonal LoRA), lora (standard LoRA), "
                         "ffa (FFA-LoRA), or a registered / 'module:OBJECT' method")
    rank: int = option(8, help="LoRA rank r of every expert slot")
    alpha: float = option(16.0, help="LoRA alpha; the update is scaled by alpha / rank")
    target_modules: list[str] = option(
        help="names of the linear layers to adapt (suffix match, as in peft)", factory=lambda: list(DEFAULT_TARGETS)
    )
    num_slots: int = option(1, help="expert slots on this model (one per task cluster)")
    seed: int = option(0, help="swarm seed: A matrices and masks derive from it, identically on every device")
    density: float = option(
        0.25, help="solora: global fraction of B entries kept (the density budget), in (0, 1]"
    )
    density_min: float = option(0.02, help="solora: no layer gets a density below this")
    density_proxy: str = option(
        "erank",
        help="solora: per-layer density from the effective rank ('erank') or captured energy ('energy') of "
        "the layer's input in the slot's subspace on calibration data, or 'uniform' (every layer = budget)",
    )
    a_scale: float = option(
        3 ** -0.5,
        help="row norm of A; 1/sqrt(3) matches the expected row norm of peft's default Kaiming-uniform A",
    )
    dropout: float = option(0.0, help="LoRA dropout")

    def __post_init__(self) -> None:
        name = type(self).__name__
        check(_known(self.method), name, "method", self.method, f"choose from {method_names()} or 'module:OBJECT'")
        check(self.rank >= 1, name, "rank", self.rank, "must be >= 1")
        check(self.alpha > 0, name, "alpha", self.alpha, "must be > 0")
        check(
            bool(self.target_modules) and all(isinstance(t, str) and t for t in self.target_modules),
            name, "target_modules", self.target_modules, "must be a non-empty list of module names",
        )
        check(self.num_slots >= 1, name, "num_slots", self.num_slots, "must be >= 1")
        check(0 < self.density <= 1, name, "density", self.density, "must be in (0, 1]")
        check(0 < self.density_min <= self.density, name, "density_min", self.density_min, "must be in (0, density]")
        check(self.density_proxy in DENSITY_PROXIES, name, "density_proxy", self.density_proxy,
              f"choose from {DENSITY_PROXIES}")
        check(self.a_scale > 0, name, "a_scale", self.a_scale, "must be > 0")
        check(0 <= self.dropout < 1, name, "dropout", self.dropout, "must be in [0, 1)")

    @property
    def spec(self) -> AdapterMethod:
        """The method object (what trains, what travels, its defaults)."""
        return get_method(self.method)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def _known(method: str) -> bool:
    try:
        get_method(method)
    except ConfigError:
        return False
    return True
