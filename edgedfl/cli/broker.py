"""``edgedfl broker``: start an MQTT broker for a swarm, print its URL, run until SIGINT/SIGTERM.

The URL printed on stdout (one line, flushed) is what nodes pass to
``transport_from_url``; it carries the broker's payload limit, and for the
embedded broker ``protocol=311`` (amqtt speaks MQTT 3.1.1 only).

``--secure`` (Mosquitto only) writes a secure swarm's files under
``WORKDIR/secure`` (a CA, a certificate and a password per device, the
ACL; :mod:`edgedfl.brokers.secure`), runs Mosquitto with one mTLS listener
and no plain one, prints its ``mqtts://`` URL, and on stderr each device's
own URL (certificate, key and password file). Run it again with the same
folder and the same devices: the devices keep their credentials.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any


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
                                                         "(default: a temporary one; with --secure: secure-SWARM)")
    parser.add_argument("--secure", action="store_true",
                        help="mTLS + a password per device + an ACL (each device writes only its own topics); "
                             "needs --kind mosquitto, --swarm and --devices or --nodes")
    parser.add_argument("--swarm", default=None, help="with --secure: the swarm name the ACL is written for")
    parser.add_argument("--nodes", default=None, help="with --secure: the device ids, comma-separated")
    parser.add_argument("--devices", type=int, default=None, help="with --secure: N devices named dev00..")
    parser.add_argument("--server-name", action="append", default=None, metavar="NAME",
                        help="with --secure: a host name or IP the devices reach the broker by (repeatable; "
                             "default localhost, 127.0.0.1 and this machine's host name)")


def _secure(args: argparse.Namespace) -> object:
    import socket
    import sys
    from pathlib import Path

    from edgedfl.brokers.secure import secure_broker, write_secure_swarm
    from edgedfl.errors import ConfigError

    if args.kind != "mosquitto":
        raise ConfigError("--secure needs --kind mosquitto (the embedded broker has no TLS client certificates)")
    if not args.swarm:
        raise ConfigError("--secure needs --swarm NAME: the ACL is written for one swarm")
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else (
        [f"dev{i:02d}" for i in range(args.devices)] if args.devices else [])
    if not nodes:
        raise ConfigError("--secure needs the devices: --nodes a,b,c or --devices N")
    work = Path(args.workdir or f"secure-{args.swarm}")
    names = args.server_name or ["localhost", "127.0.0.1", socket.gethostname()]
    secure = write_secure_swarm(work / "secure", args.swarm, nodes, server_names=names)
    broker = secure_broker(secure, host=args.host, port=args.port, workdir=work / "broker",
                           message_size_limit=args.max_message_size).start()
    host = args.host if args.host not in ("0.0.0.0", "::") else names[0]
    port = int(broker.tls_port or 0)
    for user in (*secure.nodes, secure.admin):
        print(f"{user}: {secure.url(user, host, port, max_payload=args.max_message_size)}",
              file=sys.stderr, flush=True)
    return broker


def run(args: argparse.Namespace) -> int:
    from edgedfl import start_broker

    broker: Any
    if args.secure:
        broker = _secure(args)
    elif args.kind == "mosquitto":
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
        print(broker.tls_url if args.secure else broker.url, flush=True)
        while not stop.wait(3600):
            pass
    finally:
        broker.close()
    return 0
