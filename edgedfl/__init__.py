"""edgedfl: devices fine-tune one language model together, with no server.

The public API, for scripts (the CLI and the benches use it too)::

    import edgedfl

    swarm = edgedfl.SwarmConfig(name="lab", model="smollm2", rounds=3)
    fleet = edgedfl.Fleet(edgedfl.FleetConfig(devices=4, tasks=["topic", "yesno"], swarm=swarm), "runs/lab")
    report = fleet.run()                                   # an emulated swarm on an embedded broker

    edgedfl.Node(edgedfl.NodeConfig.load("node.json")).run()   # one real device
    edgedfl.train(edgedfl.LocalRunConfig(data="mine.jsonl"), "runs/mine")
    with edgedfl.MosquittoBroker() as broker: ...

Names load on first use: ``import edgedfl`` imports neither torch nor
transformers (a phone-side script pays only for what it touches).

=====================  ===============================================================
name                   what it is
=====================  ===============================================================
SwarmConfig            what every device of a swarm shares (method, rank, rounds, ...)
NodeConfig             one device: id, data, profile, broker, state dir, + its swarm
FleetConfig, Fleet     the emulator: N devices on this machine, a report at the end
build_report           the report of a finished run directory
Node                   one device's whole life (``run()``), a SwarmMember + TorchLearner
SwarmMember, Learner   the protocol side of a device and the interface of what trains
LocalRunConfig, train  one device training alone (``edgedfl train``)
AdapterConfig          the adapter on a base model
AdapterMethod          one adapter method object; ``register_method`` / ``get_method``
export_onnx            the routed model as an ONNX file (``edgedfl export``)
OnnxLM                 torch-free inference on an exported model (``edgedfl infer``)
MosquittoBroker,       brokers to run a swarm through; ``start_broker(kind)``
EmbeddedBroker
load_examples          a built-in task, a JSONL file or ``hf:<dataset>`` as examples
EdgeDFLError           the root of every error edgedfl raises
=====================  ===============================================================
"""

from __future__ import annotations

import importlib
from typing import Any

from edgedfl._version import __version__
from edgedfl.errors import EdgeDFLError

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "SwarmConfig": ("edgedfl.node.config", "SwarmConfig"),
    "NodeConfig": ("edgedfl.node.config", "NodeConfig"),
    "FleetConfig": ("edgedfl.emulation.fleet", "FleetConfig"),
    "Fleet": ("edgedfl.emulation.fleet", "Fleet"),
    "build_report": ("edgedfl.emulation.report", "build_report"),
    "Node": ("edgedfl.node.node", "Node"),
    "SwarmMember": ("edgedfl.node.member", "SwarmMember"),
    "Learner": ("edgedfl.node.learner", "Learner"),
    "LocalRunConfig": ("edgedfl.train.local", "LocalRunConfig"),
    "train": ("edgedfl.train.local", "run_local"),
    "AdapterConfig": ("edgedfl.adapters.config", "AdapterConfig"),
    "AdapterMethod": ("edgedfl.adapters.methods", "AdapterMethod"),
    "register_method": ("edgedfl.adapters.methods", "register"),
    "get_method": ("edgedfl.adapters.methods", "get_method"),
    "export_onnx": ("edgedfl.export.onnx", "export_onnx"),
    "OnnxLM": ("edgedfl.infer.runtime", "OnnxLM"),
    "MosquittoBroker": ("edgedfl.brokers.launch", "MosquittoBroker"),
    "EmbeddedBroker": ("edgedfl.brokers.launch", "EmbeddedBroker"),
    "start_broker": ("edgedfl.brokers.launch", "start_broker"),
    "load_examples": ("edgedfl.data.sources", "load_examples"),
}

__all__ = [
    "AdapterConfig",
    "AdapterMethod",
    "EdgeDFLError",
    "EmbeddedBroker",
    "Fleet",
    "FleetConfig",
    "Learner",
    "LocalRunConfig",
    "MosquittoBroker",
    "Node",
    "NodeConfig",
    "OnnxLM",
    "SwarmConfig",
    "SwarmMember",
    "__version__",
    "build_report",
    "export_onnx",
    "get_method",
    "load_examples",
    "register_method",
    "start_broker",
    "train",
]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'edgedfl' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
