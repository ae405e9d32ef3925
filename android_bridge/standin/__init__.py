"""A phone stand-in: a Python process that joins a swarm the way an Android phone does, using
only an exported bundle (``edgedfl android export``) through the ExecuTorch runtime, plus
edgedfl's torch-free layers (wire, transport, topology, aggregation, data, solora's numpy maths).

No transformers, no peft, no ``edgedfl.model``: the model exists only as the bundle's
programs. ExecuTorch's Python bindings pass ``torch.Tensor`` objects, so the runtime loads the
torch library once a program is loaded; importing this package does not.

Run it with ``python -m android_bridge.standin --config NODE_CONFIG --bundle DIR``
(``edgedfl emulate --android N`` does, for the last N devices). :class:`~.phone.Phone` is the
device's life; :mod:`.runtime` wraps the programs; :mod:`.text` tokenizes with ``tokenizers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from android_bridge.standin.phone import Phone

__all__ = ["Phone"]


def __getattr__(name: str) -> Any:
    if name == "Phone":
        from android_bridge.standin.phone import Phone

        return Phone
    raise AttributeError(f"module 'android_bridge.standin' has no attribute {name!r}")
