"""Android bundles: what a phone needs to join a swarm without Python (layer L3, export).

* :mod:`~edgedfl.android.manifest`: the bundle's files and manifest; masks as packed bits (no torch).
* :mod:`~edgedfl.android.programs`: the exported torch modules (training, features, routed inference)
  and their lowering to ExecuTorch (torch, executorch).
* :mod:`~edgedfl.android.export`: :func:`export_bundle` writes one phone's bundle (torch, executorch).

``android_bridge/standin`` runs a bundle the way a phone would, through the ExecuTorch
runtime only. Importing this package loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgedfl.android.manifest import BUNDLE_VERSION, default_bundle_dir, load_manifest

if TYPE_CHECKING:
    from edgedfl.android.export import AndroidExportConfig, export_bundle

__all__ = ["BUNDLE_VERSION", "AndroidExportConfig", "default_bundle_dir", "export_bundle", "is_executorch_available",
           "load_manifest"]


def is_executorch_available() -> bool:
    """Whether the ExecuTorch Python package (the ``android`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("executorch") is not None


def __getattr__(name: str) -> Any:
    if name in ("AndroidExportConfig", "export_bundle"):
        from edgedfl.android import export

        return getattr(export, name)
    raise AttributeError(f"module 'edgedfl.android' has no attribute {name!r}")
