"""The adapter methods, one object each, and the registry that names them.

=========  =========  ======  ========  =====================================================
method     A          B       clusters  what travels each round
=========  =========  ======  ========  =====================================================
solora     orthogonal sparse  yes       B's values under the cluster's mask (mask once)
lora       trained    dense   no        A and B
ffa        frozen     dense   no        B
=========  =========  ======  ========  =====================================================

Adding a method: one file with an :class:`AdapterMethod` (subclass it for
:meth:`~AdapterMethod.init_A`) and one :func:`register` line below. A method
outside this package can also be named as ``"package.module:OBJECT"`` in any
config or on the command line; it is imported and registered on first use
(every process of a fleet resolves it the same way).
"""

from __future__ import annotations

import importlib

from edgedfl.adapters.methods.base import AdapterMethod, kaiming_A
from edgedfl.adapters.methods.ffa import FFA_LORA
from edgedfl.adapters.methods.lora import LORA
from edgedfl.adapters.methods.solora import SOLORA
from edgedfl.errors import ConfigError

__all__ = ["AdapterMethod", "get_method", "kaiming_A", "method_names", "register"]

_REGISTRY: dict[str, AdapterMethod] = {}


def register(method: AdapterMethod, *, name: str | None = None) -> AdapterMethod:
    """Make ``method`` known under ``name`` (default: its own). Re-registering the same object is a no-op."""
    key = name or method.name
    known = _REGISTRY.get(key)
    if known is not None and known is not method:
        raise ConfigError(f"method={key!r}: another method is already registered under that name")
    _REGISTRY[key] = method
    return method


register(SOLORA)
register(LORA)
register(FFA_LORA)


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order (the built-in three first)."""
    return tuple(_REGISTRY)


def get_method(name: str) -> AdapterMethod:
    """The method registered as ``name``, or the object a ``"module:OBJECT"`` path names.

    :raises ConfigError: unknown name, or a path that does not import to an :class:`AdapterMethod`.
    """
    found = _REGISTRY.get(name)
    if found is not None:
        return found
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"method={name!r}: cannot import it ({exc})") from None
        if not isinstance(obj, AdapterMethod):
            raise ConfigError(f"method={name!r}: {type(obj).__name__} is not an AdapterMethod")
        return register(obj, name=name)
    raise ConfigError(f"method={name!r}: choose from {method_names()} or give a 'module:OBJECT' path")
