"""``edgedfl swarm list|clear --broker URL --swarm NAME``: a swarm's retained messages on a broker."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "clear"], help="list the retained topics, or delete them")
    p.add_argument("--broker", required=True, help="mqtt://host:port (or mqtts://...) of the broker")
    p.add_argument("--swarm", required=True, help="the swarm's name (its topics are edgedfl/NAME/...)")
    p.add_argument("--settle", type=float, default=1.5, help="seconds to wait for the broker's retained messages")


def run(args: argparse.Namespace) -> int:
    import secrets

    from edgedfl.protocol.retained import clear_retained, retained_topics
    from edgedfl.protocol.topics import validate_name
    from edgedfl.transport.url import transport_from_url

    validate_name(args.swarm, "swarm")
    transport = transport_from_url(args.broker, client_id=f"edgedfl-swarm-{secrets.token_hex(4)}")
    try:
        if args.action == "list":
            topics = retained_topics(transport, args.swarm, settle_s=args.settle)
        else:
            topics = clear_retained(transport, args.swarm, settle_s=args.settle)
    finally:
        transport.close()
    verb = "retained" if args.action == "list" else "cleared"
    for t in topics:
        print(t)
    print(f"{len(topics)} {verb} message(s) of swarm {args.swarm!r}")
    return 0
