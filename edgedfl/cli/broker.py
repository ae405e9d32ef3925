"""``edgedfl broker``: start an MQTT broker for a swarm, print its URL, run until SIGINT/SIGTERM.

The URL printed on stdout (one line, flushed) is what nodes pass to
``transport_from_url``; it carries the broker's payload limit, and for the
embedded broker ``protocol=311`` (amqtt speaks MQTT 3.1.1 only).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["embedded", "mosquitto"], default="embedded",
                        help="embedded: amqtt in this process (MQTT 3.1.1, nothing to install); "
                             "mosquitto: a Mosquitto subprocess with an edgedfl-written config")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the LAN)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    parser.add_argument("--max-message-size", type=_size, default="16MiB",
                        help="mosquitto message_size_limit, e.g. 16MiB (default 16MiB)")
    parser.add_argument("--workdir", default=None, help="mosquitto config and persistence directory "
                                                         "(default: a temporary one)")


def run(args: argparse.Namespace) -> int:
    from edgedfl import start_broker

    if args.kind == "mosquitto":
        broker = start_broker("mosquitto", host=args.host, port=args.port,
                              message_size_limit=args.max_message_size, workdir=args.workdir)
    else:
        broker = start_broker("embedded", host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(broker.url, flush=True)
        while not stop.wait(3600):
            pass
    finally:
        broker.close()
    return 0
