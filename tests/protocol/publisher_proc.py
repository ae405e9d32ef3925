"""A publishing node in its own process, for the SIGKILL test (run as a script, not collected).

usage: publisher_proc.py URL STATE_DIR NAME RECEIVER N_ROUNDS

Publishes one update per round 0..N_ROUNDS-1 on slot 0, printing "published <round>"
after each, then keeps handling acks until none is pending and prints "done".
A restart with the same STATE_DIR re-sends from the outbox what nobody acked.
"""

from __future__ import annotations

import sys

import numpy as np

from edgedfl.protocol import NeighbourProtocol, ProtocolConfig
from edgedfl.transport.mqtt import MqttTransport

SWARM = "lab"


def update_for(name: str, round: int) -> dict[str, np.ndarray]:
    """Deterministic per (sender, round): the receiver checks values against it."""
    rng = np.random.default_rng([round, *name.encode()])
    return {"b": rng.standard_normal((64, 64)).astype(np.float32)}


def main() -> None:
    url, state_dir, name, receiver, n_rounds = sys.argv[1:6]
    t = MqttTransport(
        url,
        client_id=name,
        will=NeighbourProtocol.will_message(SWARM, name),
        reconnect_min=0.1,
        reconnect_max=0.5,
        publish_timeout=2.0,
    )
    p = NeighbourProtocol(
        t,
        SWARM,
        name,
        state_dir=state_dir,
        config=ProtocolConfig(ack_timeout_s=0.3, max_backoff_s=1.0, chunk_bytes=4096),
    )
    p.start()
    for r in range(int(n_rounds)):
        p.publish_update(r, 0, update_for(name, r), receivers=[receiver])
        print(f"published {r}", flush=True)
    while p.pending():
        p.poll(0.05)
    print("done", flush=True)
    p.close()


if __name__ == "__main__":
    main()
