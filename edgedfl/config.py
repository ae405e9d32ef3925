"""Validated configuration dataclasses and their JSON form.

Every edgedfl config is a dataclass whose fields carry a help text
(``metadata["help"]``) and whose ``__post_init__`` checks values and names the
bad field. Configs save as sorted JSON stamped with the edgedfl version, and
load back from it; unknown keys are an error, not silently dropped.

Shared run settings (one per swarm) and per-device settings are kept apart:
see ``RunConfig`` users in the node and emulation layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

from edgedfl._version import __version__
from edgedfl.errors import ConfigError

T = TypeVar("T", bound="ConfigBase")


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Any = None) -> Any:
    """A dataclass field with a help text (shown by ``describe()`` and the CLI)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check(cond: bool, cls_name: str, field: str, value: Any, why: str) -> None:
    """Raise :class:`ConfigError` naming ``cls_name.field`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"{cls_name}.{field}={value!r}: {why}")


@dataclasses.dataclass
class ConfigBase:
    """Base for edgedfl configs: JSON round-trip and field help."""

    def __post_init__(self) -> None:
        """Turn nested dicts (read from JSON) back into their config objects.

        A field whose annotation is a :class:`ConfigBase` subclass and whose
        value is a dict is rebuilt with that class's :meth:`from_dict`.
        Subclasses with their own ``__post_init__`` call this first.
        """
        for name, kind in _nested_fields(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind.from_dict(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        data = {"edgedfl_version": __version__, "config": type(self).__name__, **self.to_dict()}
        return json.dumps(data, sort_keys=True, indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:  # noqa: PYI019
        data = {k: v for k, v in data.items() if k not in ("edgedfl_version", "config")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:  # noqa: PYI019
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {cls.__name__} from {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


_NESTED: dict[str, dict[str, type[ConfigBase]]] = {}


def _nested_fields(cls: type) -> dict[str, type[ConfigBase]]:
    """Field name -> config class, for the fields of ``cls`` annotated with a ConfigBase subclass."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key in _NESTED:
        return _NESTED[key]
    hints = typing.get_type_hints(cls)
    out: dict[str, type[ConfigBase]] = {}
    for f in dataclasses.fields(cls):
        kind = hints.get(f.name)
        if isinstance(kind, type) and issubclass(kind, ConfigBase):
            out[f.name] = kind
    _NESTED[key] = out
    return out
