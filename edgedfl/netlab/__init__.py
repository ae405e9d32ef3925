"""Link shaping with network namespaces (root): rate, loss and delay per device.

The kernel here has no netem, so: rate is ``tc tbf`` on veth pairs, loss is
nftables ``numgen random``, delay is a user-space TCP proxy. The emulator
gives each device a :class:`Host` of one :class:`Lab`; the goodput benchmark
puts a broker in the hub and clients in a host. Call :func:`can_shape_links`
first: tests skip when it is false, CI (root) runs them. Never imports torch.
"""

from __future__ import annotations

from edgedfl.netlab.delay import DelayProxy
from edgedfl.netlab.lab import Host, Lab, free_port_in, tbf_args
from edgedfl.netlab.ns import NetlabError, can_drop_packets, can_shape_links, inside

__all__ = [
    "DelayProxy",
    "Host",
    "Lab",
    "NetlabError",
    "can_drop_packets",
    "can_shape_links",
    "free_port_in",
    "inside",
    "tbf_args",
]
