"""The Java reference codec (android_bridge/java) against the wire format and the Python codec.

* ``build.sh`` compiles the codec with javac and runs its JUnit tests, which decode every golden
  file, compare the content with Python's decoding, and re-encode it byte for byte; this test
  checks the JUnit report and that every golden file on disk was round-tripped.
* Beyond the fixed golden files, Python encodes fresh random updates, masks and chunks; the Java
  command line tool (``org.edgedfl.wire.WireTool``) decodes them, re-encodes them (from its typed
  model, and from dense float32 for updates), and Python checks the bytes and tensors it gets back.
* Java rejects the same mutated messages with the same error class as Python.

Needs javac and Debian's junit5 (scripts/setup.sh installs both); skips cleanly without them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgedfl.errors import WireError
from edgedfl.wire import (
    Envelope,
    KeyRing,
    MaskRegistry,
    Signer,
    decode_envelope,
    decode_masks,
    decode_tensors,
    decode_update,
    encode_envelope,
    encode_masks,
    encode_tensors,
    encode_update,
    parse_chunk_header,
    split_message,
)

ROOT = Path(__file__).resolve().parents[2]
JAVA_DIR = ROOT / "android_bridge" / "java"
GOLDEN = ROOT / "tests" / "wire" / "golden"
JUNIT_JAR = Path(os.environ.get("JUNIT_CONSOLE_JAR", "/usr/share/java/junit-platform-console-standalone.jar"))

_missing = [tool for tool in ("javac", "java", "jar") if shutil.which(tool) is None]
requires_jdk = pytest.mark.skipif(bool(_missing), reason=f"{_missing} not installed (scripts/setup.sh installs a JDK)")
requires_junit = pytest.mark.skipif(not JUNIT_JAR.is_file(),
                                    reason=f"JUnit console launcher {JUNIT_JAR} missing (scripts/setup.sh installs junit5)")


def _load_make_expectations() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_expectations", JAVA_DIR / "make_expectations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def java_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """build.sh once per module (compile, jar, JUnit) into a temporary build folder."""
    build = tmp_path_factory.mktemp("java-build")
    env = dict(os.environ, EDGEDFL_JAVA_BUILD=str(build), JUNIT_CONSOLE_JAR=str(JUNIT_JAR))
    proc = subprocess.run([str(JAVA_DIR / "build.sh")], env=env, check=False, capture_output=True, text=True, timeout=300)
    yield proc, build


@pytest.fixture(scope="module")
def wire_tool(java_build: tuple[subprocess.CompletedProcess[str], Path]) -> Iterator[list[str]]:
    """The command prefix that runs the Java WireTool from the built jar."""
    proc, build = java_build
    jar = build / "edgedfl-wire.jar"
    if not jar.is_file():
        pytest.fail(f"build.sh did not produce {jar}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # Small and quick to start: each call is one short-lived JVM on a shared 2-core machine.
    yield ["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-jar", str(jar)]


def _java(tool: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*tool, *args], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"WireTool {args[0]} failed ({proc.returncode}): {proc.stderr}"
    return proc


# --- the JUnit suite over the golden files --------------------------------------------------------


def test_expectations_file_is_current() -> None:
    """The committed golden_expectations.json is what make_expectations.py writes today."""
    module = _load_make_expectations()
    assert module.OUT.read_text() == module.render(), (
        "golden_expectations.json is stale: run python android_bridge/java/make_expectations.py"
    )


@requires_jdk
@requires_junit
def test_junit_round_trips_every_golden_file(java_build: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, build = java_build
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"build.sh failed ({proc.returncode}):\n{output[-6000:]}"

    report = build / "reports" / "TEST-junit-jupiter.xml"
    suite = ET.parse(report).getroot()
    assert int(suite.get("failures", -1)) == 0 and int(suite.get("errors", -1)) == 0, output[-6000:]
    assert int(suite.get("tests", 0)) >= 20, f"too few JUnit tests ran: {suite.get('tests')}"
    assert int(suite.get("skipped", 0)) == 0

    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.bin")}
    round_tripped = {line.split(":", 1)[1].strip() for line in output.splitlines()
                     if line.startswith("golden-roundtrip-ok:")}
    assert on_disk, "no golden files found"
    assert round_tripped == on_disk, f"not round-tripped by Java: {sorted(on_disk - round_tripped)}"


# --- fresh data, Python <-> Java -------------------------------------------------------------------


def _fp16_ties(rng: np.random.Generator, n: int) -> np.ndarray:
    """fp32 values exactly halfway between neighbouring fp16 values: round-half-even territory."""
    bits = rng.integers(0x0001, 0x7bfe, size=n, dtype=np.uint16)
    lo = bits.view(np.float16).astype(np.float32)
    hi = (bits + 1).view(np.float16).astype(np.float32)
    mid = (lo + (hi - lo) / 2).astype(np.float32)  # (n,) exact in fp32
    return mid * rng.choice([-1, 1], size=n).astype(np.float32)


def _random_update(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """2..4 tensors (a non-ASCII name among them), about half sparse, values across fp16's range."""
    tensors: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    names = ["layers.0.q_proj.lora_B", "layers.1.v_proj.lora_B", "layers.2.\u00fc_proj.lora_B", "head.bias"]
    for name in names[: int(rng.integers(2, 5))]:
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 41))) if name != "head.bias" else (int(rng.integers(1, 30)),)
        scale = float(10.0 ** rng.uniform(-7, 1))  # down to fp16 subnormals
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        flat = values.reshape(-1)
        k = min(flat.size, 8)
        flat[:k] = _fp16_ties(rng, k)
        if rng.random() < 0.6:
            mask = rng.random(shape) < rng.uniform(0.05, 0.9)
            values = values * mask
            masks[name] = mask
        tensors[name] = values
    return tensors, masks


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.astype(np.float32).view(np.uint32),
                                                 b.astype(np.float32).view(np.uint32))


@requires_jdk
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_java_decodes_and_reencodes_fresh_random_updates(wire_tool: list[str], tmp_path: Path, precision: str) -> None:
    # Prepare: fresh masks and update from Python, signed with a fresh key.
    rng = np.random.default_rng(abs(hash(precision)) % 2**32)
    seed = rng.bytes(32)
    signer = Signer.from_seed(seed, "phone-key")
    ring = KeyRing.of(signer)
    meta = {"precision": precision, "note": "caf\u00e9 \U0001F600 tab\there"}
    for trial in range(3):
        tensors, masks = _random_update(rng)
        mask_msg = encode_envelope(Envelope("mask", "s-1", "node-x", round=trial, slot=2, seq=1,
                                            body=encode_masks(masks) if masks else encode_masks({})))
        update_msg = encode_envelope(Envelope("update", "s-1", "node-x", round=trial, slot=2, seq=2,
                                              body=encode_update(tensors, masks, precision),  # type: ignore[arg-type]
                                              meta=meta), signer)
        (tmp_path / "mask.bin").write_bytes(mask_msg)
        (tmp_path / "update.bin").write_bytes(update_msg)

        # Execute: Java re-encodes from its typed model, and from dense float32 (re-signing).
        for name in ("mask.bin", "update.bin"):
            _java(wire_tool, "roundtrip", str(tmp_path / name), str(tmp_path / f"rt-{name}"))
        _java(wire_tool, "rebuild", str(tmp_path / "mask.bin"), str(tmp_path / "update.bin"),
              str(tmp_path / "rebuilt.bin"), seed.hex(), "phone-key")

        # Assert: byte-identical messages, and identical tensors as Python decodes them.
        assert (tmp_path / "rt-mask.bin").read_bytes() == mask_msg
        assert (tmp_path / "rt-update.bin").read_bytes() == update_msg
        rebuilt = (tmp_path / "rebuilt.bin").read_bytes()
        registry = MaskRegistry()
        decode_masks(decode_envelope(mask_msg).body, registry=registry)
        want = decode_update(decode_envelope(update_msg, keyring=ring).body, masks=registry)
        env = decode_envelope(rebuilt, keyring=ring)  # Java's signature verifies in Python
        got = decode_update(env.body, masks=registry)
        assert env.unsigned() == dataclasses.replace(decode_envelope(update_msg).unsigned(), body=env.body)
        assert set(got) == set(want)
        for name in want:
            assert _same_floats(got[name], want[name]), f"{precision} trial {trial}: {name} differs"
        if precision != "int8":
            # fp16 and fp32 values survive float32 exactly, so Java's encoder gives the same bytes.
            assert rebuilt == update_msg


@requires_jdk
def test_java_encodes_fresh_floats_to_python_s_bytes(wire_tool: list[str], tmp_path: Path) -> None:
    """Same float32 inputs, same bytes: Java quantises (int8) and rounds (fp16) exactly as Python."""
    rng = np.random.default_rng(7)
    for trial in range(2):
        tensors, masks = _random_update(rng)
        (tmp_path / "t.bin").write_bytes(encode_envelope(Envelope("hello", "s", "n", body=encode_tensors(tensors))))
        (tmp_path / "m.bin").write_bytes(encode_envelope(Envelope("mask", "s", "n", body=encode_masks(masks))))
        for precision in ("int8", "fp16", "fp32"):
            _java(wire_tool, "encode", str(tmp_path / "t.bin"), str(tmp_path / "m.bin"), precision,
                  str(tmp_path / "o.bin"))
            expected = encode_update(tensors, masks, precision)  # type: ignore[arg-type]
            assert (tmp_path / "o.bin").read_bytes() == expected, f"trial {trial}, {precision}"


@requires_jdk
def test_java_chunks_agree_with_python(wire_tool: list[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    message = encode_envelope(Envelope("hello", "s", "n", body=encode_tensors(
        {"sig": rng.standard_normal(int(rng.integers(50, 400))).astype(np.float32)})))
    chunk_size = int(rng.integers(17, 300))
    chunks = split_message(message, chunk_size)
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"py.{i:03d}.bin"
        path.write_bytes(chunk)
        paths.append(str(path))
    _java(wire_tool, "join", str(tmp_path / "joined.bin"), *reversed(paths))
    assert (tmp_path / "joined.bin").read_bytes() == message
    _java(wire_tool, "split", str(tmp_path / "joined.bin"), str(chunk_size), str(tmp_path / "java"))
    java_chunks = sorted(tmp_path.glob("java.*.bin"))
    assert [p.read_bytes() for p in java_chunks] == chunks


# --- the same rejections --------------------------------------------------------------------------


def _python_verdict(data: bytes, ring: KeyRing | None, registry: MaskRegistry) -> str:
    """What a Python receiver makes of ``data``: "ok" or its error class (as WireTool check does)."""
    try:
        if data[:4] == b"EDFC":
            parse_chunk_header(data)
            return "ok"
        env = decode_envelope(data, keyring=ring)
        if env.kind in ("update", "expert"):
            decode_update(env.body, masks=registry)
        elif env.kind == "mask":
            decode_masks(env.body, registry=registry)
        elif env.kind != "error":
            decode_tensors(env.body)
    except WireError as exc:
        return type(exc).__name__
    return "ok"


def _mutants(rng: np.random.Generator, data: bytes, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(data)
        if rng.random() < 0.75:
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        else:
            del b[int(rng.integers(0, len(b))):]
        out.append(bytes(b))
    return out


@requires_jdk
def test_java_rejects_what_python_rejects_with_the_same_class(wire_tool: list[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    signed_ring = KeyRing()
    signed_ring.add("test-key", bytes.fromhex((GOLDEN / "test_key.pub").read_text().strip()))
    groups: list[tuple[bool, list[bytes]]] = [
        (False, [m for name in ("hello.bin", "mask.bin", "update_int8.bin", "error.bin", "chunks/update_signed.000.bin")
                 for m in _mutants(rng, (GOLDEN / name).read_bytes(), 25)]),
        (True, _mutants(rng, (GOLDEN / "update_signed.bin").read_bytes(), 60)),
    ]
    for signed, messages in groups:
        paths = []
        for i, data in enumerate(messages):
            path = tmp_path / f"{'s' if signed else 'u'}{i:03d}.bin"
            path.write_bytes(data)
            paths.append(str(path))
        args = ["check", "--masks", str(GOLDEN / "mask.bin")]
        if signed:
            args += ["--pub", "test-key", (GOLDEN / "test_key.pub").read_text().strip()]
        java = _java(wire_tool, *args, *paths).stdout.split()
        registry = MaskRegistry()
        decode_masks(decode_envelope((GOLDEN / "mask.bin").read_bytes()).body, registry=registry)
        python = [_python_verdict(data, signed_ring if signed else None, registry) for data in messages]
        assert len(set(python)) > 2, f"mutations too tame: {set(python)}"
        mismatches = [(i, p, j) for i, (p, j) in enumerate(zip(python, java, strict=True)) if p != j]
        assert not mismatches, f"Python vs Java verdicts differ (index, python, java): {mismatches[:10]}"
