"""``edgedfl android export``: write one phone's bundle (ExecuTorch programs, tokenizer, A, masks, manifest).

Settings come from flags, or from a node config file (``--node-config``, what
``edgedfl node`` and the emulator use), so a phone's bundle matches the swarm
it joins. Needs the ``android`` extra (executorch).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from edgedfl.errors import BackendUnavailable


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="android_command", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write a phone's bundle", description=__doc__.splitlines()[0] if __doc__ else None)
    e.add_argument("--node-config", default=None,
                   help="take node id, task, broker and the swarm's settings from this NodeConfig JSON")
    e.add_argument("--model", default=None, help="tiny, smollm2, gemma3-270m, a hub id, a directory or a .gguf (default tiny)")
    e.add_argument("--slot", type=int, default=0, help="the phone's planned expert slot (its masks in the bundle)")
    e.add_argument("--task", default=None, help="the phone's data: a built-in task or a JSONL file")
    e.add_argument("--node", default=None, help="the phone's node id (default phone0)")
    e.add_argument("--out", default="", help="output folder (default android_bridge/out/<node>)")
    e.add_argument("--swarm", default=None, help="swarm name (MQTT topic prefix)")
    e.add_argument("--broker", default=None, help="mqtt://host:port the phone connects to")
    e.add_argument("--seed", type=int, default=None, help="swarm seed (A and masks derive from it)")
    e.add_argument("--rank", type=int, default=None)
    e.add_argument("--slots", type=int, default=None, help="expert slots of the swarm (its max_slots)")
    e.add_argument("--density", type=float, default=None)
    e.add_argument("--batch-size", type=int, default=None, help="examples per training step (fixed in the program)")
    e.add_argument("--max-length", type=int, default=None, help="tokens per training example (fixed)")
    e.add_argument("--local-steps", type=int, default=None)
    e.add_argument("--lr", type=float, default=None, help="SGD learning rate")
    e.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    e.add_argument("--signature-depth", type=float, default=None,
                   help="the swarm's signature_depth (the decoder layer the features program pools, as a fraction "
                        "of the depth; default the swarm's, 0.6)")
    e.add_argument("--programs", default="train,features,infer", help="which programs, comma-separated")


def _from_node_config(path: str) -> dict[str, Any]:
    from edgedfl import NodeConfig
    from edgedfl.android.launch import export_config

    # one mapping from a node's config to its bundle's settings: the emulator's (android.launch)
    cfg = export_config(NodeConfig.load(path).to_dict(), "")
    return {"model": cfg.model, "node": cfg.node, "task": cfg.task, "swarm": cfg.swarm, "broker": cfg.broker,
            "batch_size": cfg.batch_size, "max_length": cfg.max_length, "local_steps": cfg.local_steps,
            "adapter": cfg.adapter, "swarm_settings": cfg.swarm_settings, "signature_depth": cfg.signature_depth, "router": cfg.router}


def run(args: argparse.Namespace) -> int:
    from edgedfl.android import is_executorch_available

    if not is_executorch_available():
        raise BackendUnavailable("android export needs executorch: pip install -e '.[android]'")
    import dataclasses

    from edgedfl import AdapterConfig
    from edgedfl.android.export import AndroidExportConfig, export_bundle

    logging.getLogger("edgedfl.android").setLevel(logging.INFO)
    fields: dict[str, Any] = _from_node_config(args.node_config) if args.node_config else {}
    adapter: AdapterConfig = fields.pop("adapter", AdapterConfig(num_slots=4))
    overrides = {"seed": args.seed, "rank": args.rank, "num_slots": args.slots, "density": args.density}
    adapter = dataclasses.replace(adapter, **{k: v for k, v in overrides.items() if v is not None})
    for key in ("model", "task", "node", "swarm", "broker", "batch_size", "max_length", "local_steps", "lr",
                "momentum", "signature_depth"):
        value = getattr(args, key)
        if value is not None:
            fields[key] = value
    cfg = AndroidExportConfig(slot=args.slot, out=args.out, adapter=adapter,
                              programs=[p.strip() for p in args.programs.split(",") if p.strip()], **fields)
    out = export_bundle(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    print(f"bundle for {cfg.node} (model {cfg.model}, slot {cfg.slot}) in {out} ({manifest['export_s']} s): "
          f"{', '.join(files)}")
    return 0
