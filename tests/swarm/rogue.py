"""A hostile MQTT client written with paho alone (no edgedfl import): what a stranger on the broker can send.

It knows only the topic tree and the envelope layout of FORMAT.md. It cannot
sign as a device (it has no device's key); it can send garbage, unsigned
forgeries, NaN bodies, fake hellos and experts (retained), and replay what it
captured of real devices' updates.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def envelope(kind: str, swarm: str, sender: str, body: bytes, *, round: int = 0, slot: int = 0, seq: int = 0,
             meta: dict[str, str] | None = None) -> bytes:
    """An unsigned envelope built by hand from FORMAT.md section 1."""
    header = {"kind": kind, "swarm": swarm, "sender": sender, "round": round, "slot": slot, "seq": seq,
              "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(), "meta": meta or {}}
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"EDFL" + bytes([1, 0]) + struct.pack(">I", len(h)) + h + body


def safetensors(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors file by hand: name -> (dtype, shape, raw bytes)."""
    header, offset, data = {}, 0, b""
    for name, (dtype, shape, raw) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    header["__metadata__"] = {"edgedfl": json.dumps({"codec": "tensors/1"})}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def chunk(message: bytes) -> bytes:
    """One chunk holding a whole message (FORMAT.md section 3)."""
    digest = hashlib.sha256(message).digest()
    return (b"EDFC" + bytes([1, 0]) + digest[:16] + struct.pack(">IIIQ", 0, 1, max(len(message), 1), len(message))
            + digest + message)


class Rogue:
    """Connects, captures real update chunks, and attacks ``swarm`` until stopped; counts what it sent."""

    def __init__(self, host: str, port: int, swarm: str, devices: list[str], slots: int = 4) -> None:
        self.swarm, self.devices, self.slots = swarm, devices, slots
        self.sent = 0
        self.replayed = 0
        self._own: set[bytes] = set()
        self.captured: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="rogue")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(f"edgedfl/{swarm}/update/#", qos=1)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        key = hashlib.sha256(payload).digest()
        if msg.retain or key in self._own or len(self.captured) >= 200:
            return  # our own publications come back to us too: only a device's chunk is worth replaying
        self._own.add(key)
        self.captured.append((msg.topic, payload))
        # Replay it at once, while every device is still listening (the loop replays more later):
        # a replay that only comes in the attack loop can miss a swarm that finishes fast.
        client.publish(msg.topic, payload, qos=1)
        self.replayed += 1

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._own.add(hashlib.sha256(payload).digest())
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        self.sent += 1

    def before_start(self) -> None:
        """Retained fakes waiting on the broker before any device connects: a ghost hello, experts with round 99."""
        sig = safetensors({"signature": ("F32", [16], struct.pack("<16f", *([1.0] * 16)))})
        self.pub(f"edgedfl/{self.swarm}/hello/ghost", envelope("hello", self.swarm, "ghost", sig,
                 meta={"profile": json.dumps({"profile": "laptop"})}), retain=True)
        for slot in range(self.slots):
            body = safetensors({"x.lora_B": ("F16", [2, 2], b"\x00\x3c" * 4)})
            for sender in ("dev00", "ghost"):  # under a real device's name, and under a stranger's
                self.pub(f"edgedfl/{self.swarm}/expert/{slot}/{sender}", envelope(
                    "expert", self.swarm, sender, body, round=99, slot=slot, meta={"task": "arith"}), retain=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)
        t = f"edgedfl/{self.swarm}"
        while not self._stop.is_set():
            dev = rng.choice(self.devices)
            slot = rng.randrange(self.slots)
            # random bytes on every kind of topic
            for topic in (f"{t}/presence/{dev}", f"{t}/hello/{dev}", f"{t}/update/{slot}/{dev}",
                          f"{t}/expert/{slot}/{dev}", f"{t}/ack/{dev}/{dev}", f"{t}/ack/{dev}",
                          f"{t}/nonsense/x"):
                self.pub(topic, rng.randbytes(rng.randrange(1, 300)))
            # an unsigned 100x "update" under a real device's id, a NaN body, an unsigned hello during the join
            big = safetensors({"x.lora_B": ("F32", [2, 2], struct.pack("<4f", 100.0, -100.0, 100.0, 100.0))})
            nan = safetensors({"x.lora_B": ("F32", [2, 2], struct.pack("<4f", *([float("nan")] * 4)))})
            for body in (big, nan):
                self.pub(f"{t}/update/{slot}/{dev}", chunk(envelope("update", self.swarm, dev, body, round=1,
                                                                    slot=slot, seq=rng.randrange(1, 50))))
            sig = safetensors({"signature": ("F32", [16], struct.pack("<16f", *([0.5] * 16)))})
            self.pub(f"{t}/hello/{dev}", envelope("hello", self.swarm, dev, sig, meta={"profile": "{}"}))
            # replays of real, signed update chunks captured earlier
            for topic, payload in self.captured[:: max(1, len(self.captured) // 5)]:
                self.pub(topic, payload)
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.loop_stop()
        self.client.disconnect()
