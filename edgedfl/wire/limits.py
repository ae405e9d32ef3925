"""Receiver-side bounds for everything the wire layer decodes.

One frozen dataclass, :class:`Limits`, caps every length a sender can claim
(header sizes, message size, tensor count, dense element count) so a decoder
rejects an absurd claim *before* it allocates anything for it. The defaults
suit LoRA updates of small language models; a node that expects larger
messages passes its own ``Limits``.
"""

from __future__ import annotations

import dataclasses

from edgedfl.errors import ConfigError

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds applied while decoding envelopes and bodies."""

    #: Largest JSON header of an envelope, in bytes.
    max_header_bytes: int = 64 * 1024
    #: Largest whole envelope (header + signature + body), in bytes.
    max_message_bytes: int = 256 * _MiB
    #: Largest JSON header inside a safetensors body, in bytes.
    max_body_header_bytes: int = 4 * _MiB
    #: Most tensors one body may hold.
    max_tensors: int = 4096
    #: Most elements one decoded (dense) tensor may have; bounds densification.
    max_dense_elements: int = 64 * _MiB
    #: Most elements all decoded tensors of one body may have together.
    max_total_dense_elements: int = 256 * _MiB
    #: Most entries in an envelope's ``meta``.
    max_meta_items: int = 64
    #: Longest string (identifier, meta key or value, error text), in characters.
    max_string_chars: int = 8192

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Limits.{field.name}={value!r}: must be a positive int")


DEFAULT_LIMITS = Limits()
