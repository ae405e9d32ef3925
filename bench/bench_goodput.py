"""Goodput of 1 MiB and 10 MiB updates through Mosquitto over a tbf-shaped veth link (needs root).

Set-up (edgedfl.netlab): Mosquitto runs in the lab's hub namespace; a
publisher and a subscriber (two MqttTransports) share one host namespace,
joined to the hub by a veth pair shaped with ``tc tbf`` to ``--rate`` in each
direction. An update is published as ~1 MiB QoS 1 chunks, each publish
waiting for its PUBACK; the clock runs from the first publish to the last
chunk dequeued by the subscriber.

Since both clients sit on the same side, every byte crosses the link twice:
up to the broker, then down again. Mosquitto forwards a message only once it
has all of it (store and forward), and the link is full duplex (one tbf per
direction), so an ideal link needs ``(chunks + 1) * chunk_bits / rate``: the
first chunk goes up alone, then chunk i goes down while chunk i+1 goes up,
then the last chunk comes down alone. For a single 1 MiB message that is the
plain "crosses twice" time ``2 * bits / rate``. The reported fraction is that
ideal time over the measured time (1.0 = the link never idled and carried
nothing but payload; Ethernet/IP/TCP/MQTT headers count against it).

By default the chunks of an update go out with ``publish_many`` (sent back to
back, then every PUBACK awaited); ``--per-chunk-ack`` waits for each PUBACK
before the next chunk, which idles the uplink while the PUBACK queues behind
the downlink's data.

Run from the repository root:  sudo .venv/bin/python bench/bench_goodput.py
Writes bench/results/goodput.json and bench/results/goodput.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgedfl import MosquittoBroker
from edgedfl.netlab import Lab, can_shape_links
from edgedfl.transport.base import Message
from edgedfl.transport.mqtt import MqttTransport

MiB = 1024 * 1024
TOPIC = "edgedfl/bench/update/0/pub"


def one_transfer(pub: MqttTransport, sub: MqttTransport, size: int, chunk: int, per_chunk_ack: bool = False) -> float:
    """Seconds from the first publish to the last chunk received; checks the bytes."""
    data = hashlib.shake_256(f"update-{size}".encode()).digest(size)
    pieces = [data[i : i + chunk] for i in range(0, size, chunk)]
    received: list[bytes] = []
    done = threading.Event()
    stamp: list[float] = []

    def drain() -> None:
        while len(received) < len(pieces):
            msg = sub.receive(60)
            if msg is None:
                break
            received.append(msg.payload)
        stamp.append(time.perf_counter())
        done.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    start = time.perf_counter()
    if per_chunk_ack:
        for piece in pieces:
            pub.publish(TOPIC, piece, qos=1)  # one PUBACK round trip per chunk
    else:
        pub.publish_many([Message(TOPIC, p, qos=1) for p in pieces])  # pipelined, then every PUBACK
    if not done.wait(120):
        raise RuntimeError("transfer did not finish within 120 s")
    if hashlib.sha256(b"".join(received)).digest() != hashlib.sha256(data).digest():
        raise RuntimeError(f"corrupted transfer: got {len(received)} of {len(pieces)} chunks")
    return stamp[0] - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate-mbit", type=float, default=20.0, help="link rate each way, Mbit/s")
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 10], help="update sizes in MiB")
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="chunk (one MQTT message) size in MiB")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per size (median reported)")
    parser.add_argument("--queue-ms", type=float, default=400.0, help="tbf latency (link buffer) in ms")
    parser.add_argument("--no-slow-start-after-idle", action="store_true",
                        help="set net.ipv4.tcp_slow_start_after_idle=0 in both namespaces (TCP keeps its window"
                             " across the idle gap between updates)")
    parser.add_argument("--per-chunk-ack", action="store_true",
                        help="wait for each chunk's PUBACK before the next (default: publish_many, pipelined)")
    parser.add_argument("--out", default="bench/results", help="where goodput.json / goodput.md go")
    args = parser.parse_args(argv)
    if not can_shape_links():
        print("bench_goodput needs root with working `ip netns` and `tc`", file=sys.stderr)
        return 2

    rate = args.rate_mbit * 1e6
    chunk = int(args.chunk_mib * MiB)
    rows = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        host = lab.add_host("clients", rate_bps=rate, queue_ms=args.queue_ms)
        if args.no_slow_start_after_idle:
            for where in (lab.hub, host):
                lab.run(where, ["sysctl", "-q", "-w", "net.ipv4.tcp_slow_start_after_idle=0"], check=True)
        with lab.inside(lab.hub):
            broker = MosquittoBroker(host="0.0.0.0", workdir=tmp, message_size_limit=chunk + 64 * 1024).start()
        try:
            with lab.inside(host):
                common: dict[str, Any] = {"host": host.gateway, "port": broker.port, "max_payload": broker.message_size_limit,
                              "keepalive": 60, "publish_timeout": 60.0, "connect_timeout": 10.0}
                pub = MqttTransport(client_id="bench-pub", **common)
                sub = MqttTransport(client_id="bench-sub", **common)
            sub.subscribe("edgedfl/bench/#")
            one_transfer(pub, sub, chunk, chunk)  # warm-up: TCP windows, broker buffers
            for size_mib in args.sizes_mib:
                size = int(size_mib * MiB)
                n = -(-size // chunk)
                ideal = (n + 1) * min(chunk, size) * 8 / rate if n > 1 else 2 * size * 8 / rate
                times = []
                for _ in range(args.reps):
                    time.sleep(1.0)  # let the token buckets and queues settle between runs
                    times.append(one_transfer(pub, sub, size, chunk, args.per_chunk_ack))
                med = statistics.median(times)
                rows.append({
                    "size_mib": size_mib, "chunks": n, "reps": args.reps,
                    "seconds": [round(t, 4) for t in times], "median_s": round(med, 4),
                    "payload_goodput_mbit": round(size * 8 / med / 1e6, 3),
                    "ideal_s": round(ideal, 4), "fraction_of_link": round(ideal / med, 4),
                    "min_fraction": round(ideal / max(times), 4), "max_fraction": round(ideal / min(times), 4),
                })
                print(json.dumps(rows[-1]), flush=True)
            pub.close()
            sub.close()
        finally:
            broker.close()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "sudo .venv/bin/python bench/bench_goodput.py " + " ".join(argv or sys.argv[1:]),
        "rate_mbit_each_way": args.rate_mbit, "chunk_mib": args.chunk_mib, "qos": 1,
        "tcp_slow_start_after_idle": 0 if args.no_slow_start_after_idle else 1,
        "publish": "publish per chunk, PUBACK each" if args.per_chunk_ack else "publish_many (pipelined, all PUBACKs awaited)",
        "tbf": f"burst max(3200 B, 4 ms of rate), latency {args.queue_ms:g}ms, on both veth ends",
        "python": platform.python_version(), "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (out / "goodput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Goodput through Mosquitto over a shaped link",
        "",
        f"Command (repository root, as root): `{meta['command'].strip()}`",
        "",
        (f"Mosquitto in one network namespace; publisher and subscriber (edgedfl MqttTransport, MQTT 5, QoS 1,"
        f" {meta['publish']}) together in another, joined by a veth pair with `tc tbf` at"
        f" {args.rate_mbit:g} Mbit/s on each end. Updates are sent as {args.chunk_mib:g} MiB chunks;"
        f" time runs from the first publish to the last chunk received; {args.reps} repetitions, medians."),
        "",
        ("Every byte crosses the link twice (up to the broker, down to the subscriber). Mosquitto stores and"
        " forwards whole messages and the link is full duplex, so the ideal time is"
        " `(chunks + 1) x chunk / rate` (for one chunk: `2 x size / rate`). `fraction` = ideal / measured"
        " (payload bits only; header bytes count against it)."),
        "",
        "| update | chunks | median s | ideal s | payload goodput Mbit/s | fraction of link (min..max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size_mib']:g} MiB | {r['chunks']} | {r['median_s']:.3f} | {r['ideal_s']:.3f} |"
            f" {r['payload_goodput_mbit']:.2f} | **{r['fraction_of_link']:.3f}**"
            f" ({r['min_fraction']:.3f}..{r['max_fraction']:.3f}) |"
        )
    lines += ["", f"Target: >= 0.90. Machine: Python {meta['python']}, kernel {meta['kernel']}, {meta['date']}.", ""]
    (out / "goodput.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
