"""One factory from a broker URL to a transport: ``mqtt://``, ``mqtts://`` or ``memory://``."""

from __future__ import annotations

import urllib.parse
from typing import Any

from edgedfl.transport.base import Transport
from edgedfl.transport.memory import MemoryHub, MemoryTransport
from edgedfl.transport.mqtt import MqttTransport

__all__ = ["transport_from_url"]


def transport_from_url(url: str, client_id: str | None = None, **kwargs: Any) -> Transport:
    """A transport for ``mqtt://host:port``, ``mqtts://host:port`` or ``memory://hubname``.

    Query parameters: ``protocol`` (5 or 311), ``max_payload`` (bytes),
    ``keepalive`` (s), and for mqtts ``ca``/``cert``/``key`` paths. ``memory://``
    takes ``max_payload``. Other keyword arguments go to the transport.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "memory":
        query = dict(urllib.parse.parse_qsl(parts.query))
        limit = int(query["max_payload"]) if "max_payload" in query else None
        hub = MemoryHub.named(parts.netloc or parts.path.strip("/") or "default", max_payload=limit)
        return MemoryTransport(hub, client_id, **kwargs)
    return MqttTransport(url, client_id=client_id, **kwargs)
