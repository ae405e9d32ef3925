package org.edgedfl.wire;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * The Java codec against every golden file of the wire format (tests/wire/golden).
 *
 * <p>For each file: decode it and compare the content with what the Python reference decodes
 * (golden_expectations.json, written by make_expectations.py), re-encode the decoded model and
 * compare byte for byte, and build the file from the generator's inputs alone and compare byte
 * for byte. Each passing file prints {@code golden-roundtrip-ok: <name>}, which the pytest wrapper
 * counts against the files on disk.
 *
 * <p>Paths come from system properties {@code edgedfl.golden} and {@code edgedfl.expectations}
 * (build.sh sets both).
 */
class GoldenFilesTest {
    private static Path golden;
    private static Map<String, Object> expectations;
    private static Map<String, Object> files;
    private static KeyRing ring;
    private static Signer testSigner;
    private static MaskRegistry registry;

    @BeforeAll
    static void load() throws IOException {
        golden = Path.of(System.getProperty("edgedfl.golden", "../../tests/wire/golden"));
        Path exp = Path.of(System.getProperty("edgedfl.expectations", "src/test/resources/golden_expectations.json"));
        expectations = Json.parseObject(Files.readAllBytes(exp), "expectations");
        files = map(expectations.get("files"));
        Map<String, Object> key = map(expectations.get("test_key"));
        testSigner = Signer.fromSeed(Hex.decode((String) key.get("seed_hex")), (String) key.get("key_id"));
        ring = new KeyRing().add((String) key.get("key_id"), Hex.decode((String) key.get("public_hex")));
        registry = new MaskRegistry();
        Codec.decodeMasks(Envelope.decode(read("mask.bin")).body(), registry, Limits.DEFAULT);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object o) {
        return (List<Object>) o;
    }

    static byte[] read(String name) {
        try {
            return Files.readAllBytes(golden.resolve(name));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static long[] longs(Object jsonList) {
        return list(jsonList).stream().mapToLong(v -> (Long) v).toArray();
    }

    static float[] floatsFromBits(Object jsonList) {
        List<Object> bits = list(jsonList);
        float[] out = new float[bits.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = Float.intBitsToFloat((int) (long) (Long) bits.get(i));
        }
        return out;
    }

    static Mask maskOf(Map<String, Object> entry) {
        String bits = (String) entry.get("bits");
        boolean[] flags = new boolean[bits.length()];
        for (int i = 0; i < flags.length; i++) {
            flags[i] = bits.charAt(i) == '1';
        }
        return new Mask(longs(entry.get("shape")), flags);
    }

    static String stringOrNull(Object o) {
        return o == Json.NULL ? null : (String) o;
    }

    @Test
    void everyGoldenFileHasExpectationsAndViceVersa() throws IOException {
        TreeSet<String> onDisk;
        try (Stream<Path> walk = Files.walk(golden)) {
            onDisk = walk.filter(p -> p.toString().endsWith(".bin"))
                    .map(p -> golden.relativize(p).toString().replace('\\', '/'))
                    .collect(Collectors.toCollection(TreeSet::new));
        }
        assertTrue(onDisk.size() >= 7, "golden files found under " + golden + ": " + onDisk);
        assertEquals(new TreeSet<>(files.keySet()), onDisk,
                "golden files and expectations disagree: run android_bridge/java/make_expectations.py");
    }

    @Test
    void signerFromTheTestSeedHasThePinnedPublicKey() throws IOException {
        String pinned = Files.readString(golden.resolve("test_key.pub")).strip();
        assertEquals(pinned, Hex.encode(testSigner.publicBytes()));
        assertEquals(map(expectations.get("test_key")).get("public_hex"), pinned);
    }

    @TestFactory
    List<DynamicTest> everyGoldenFileRoundTripsByteForByte() {
        List<DynamicTest> tests = new ArrayList<>();
        for (String name : new TreeSet<>(files.keySet())) {
            tests.add(DynamicTest.dynamicTest(name, () -> {
                Map<String, Object> exp = map(files.get(name));
                if (exp.containsKey("chunk")) {
                    checkChunk(name, map(exp.get("chunk")));
                } else {
                    checkEnvelope(name, exp);
                }
                System.out.println("golden-roundtrip-ok: " + name);
            }));
        }
        return tests;
    }

    private void checkChunk(String name, Map<String, Object> exp) {
        byte[] data = read(name);
        Chunks.Header h = Chunks.parseHeader(data);
        assertEquals(exp.get("index"), h.index());
        assertEquals(exp.get("count"), h.count());
        assertEquals(exp.get("chunk_size"), h.chunkSize());
        assertEquals(exp.get("total"), h.total());
        assertEquals(exp.get("message_id_hex"), Hex.encode(h.messageId()));
        assertEquals(exp.get("sha256_hex"), Hex.encode(h.sha256()));
        // Cutting the whole message again gives exactly this chunk.
        List<byte[]> again = Chunks.split(read((String) exp.get("message")),
                (int) (long) (Long) expectations.get("chunk_data_bytes"));
        assertEquals(h.count(), again.size());
        assertArrayEquals(data, again.get((int) h.index()), name + ": re-split chunk differs");
    }

    private void checkEnvelope(String name, Map<String, Object> exp) {
        byte[] data = read(name);
        Map<String, Object> fields = map(exp.get("envelope"));
        String keyId = stringOrNull(fields.get("key_id"));

        // 1. Decode (verifying the signature where there is one) and compare the fields.
        Envelope env = Envelope.decode(data, Limits.DEFAULT, keyId != null ? ring : null);
        assertEquals(fields.get("kind"), env.kind());
        assertEquals(fields.get("swarm"), env.swarm());
        assertEquals(fields.get("sender"), env.sender());
        assertEquals(fields.get("round"), env.round());
        assertEquals(fields.get("slot"), env.slot());
        assertEquals(fields.get("seq"), env.seq());
        assertEquals(map(fields.get("meta")), new LinkedHashMap<Object, Object>(env.meta()));
        assertEquals(stringOrNull(fields.get("error")), env.error());
        assertEquals(keyId, env.keyId());
        assertEquals(fields.get("body_len"), (long) env.body().length);

        // 2. The body's content against what Python decodes.
        Object bodyExp = exp.get("body");
        byte[] built;
        if (bodyExp == Json.NULL) {
            assertEquals(0, env.body().length);
            built = new byte[0];
        } else {
            built = checkBody(name, env.body(), map(bodyExp));
        }

        // 3. Decoded model -> bytes: identical (a signed one keeps its signature, as a relay does).
        assertArrayEquals(data, WireTool.roundTrip(data), name + ": decode + re-encode differs");

        // 4. From the generator's inputs alone -> bytes: identical (signing with the test seed).
        Map<String, String> meta = new LinkedHashMap<>();
        map(fields.get("meta")).forEach((k, v) -> meta.put(k, (String) v));
        Envelope fresh = new Envelope((String) fields.get("kind"), (String) fields.get("swarm"),
                (String) fields.get("sender"), (Long) fields.get("round"), (Long) fields.get("slot"),
                (Long) fields.get("seq"), built, meta, stringOrNull(fields.get("error")), null, null);
        assertArrayEquals(data, fresh.encode(keyId != null ? testSigner : null), name + ": built from inputs differs");
    }

    /** Check the decoded body; return the body built again from the generator's inputs. */
    private byte[] checkBody(String name, byte[] body, Map<String, Object> exp) {
        String codec = (String) exp.get("codec");
        assertEquals(codec, Codec.codecOf(body, Limits.DEFAULT));
        switch (codec) {
            case Codec.TENSORS_CODEC -> {
                Map<String, RawTensor> decoded = Codec.decodeTensors(body, null, Limits.DEFAULT);
                Map<String, RawTensor> inputs = new LinkedHashMap<>();
                map(exp.get("tensors")).forEach((n, v) -> {
                    Map<String, Object> t = map(v);
                    inputs.put(n, new RawTensor(DType.fromName((String) t.get("dtype")), longs(t.get("shape")),
                            Hex.decode((String) t.get("data_hex"))));
                });
                assertEquals(inputs, decoded, name);
                return Codec.encodeTensors(inputs);
            }
            case Codec.MASK_CODEC -> {
                Map<String, Mask> decoded = Codec.decodeMasks(body, null, Limits.DEFAULT);
                Map<String, Mask> inputs = new LinkedHashMap<>();
                map(exp.get("masks")).forEach((n, v) -> {
                    Mask m = maskOf(map(v));
                    assertEquals(map(v).get("id"), m.id(), name + ": mask id of " + n);
                    inputs.put(n, m);
                });
                assertEquals(inputs.keySet(), decoded.keySet());
                inputs.forEach((n, m) -> {
                    assertArrayEquals(m.bits(), decoded.get(n).bits(), name + ": bits of " + n);
                    assertArrayEquals(m.shape(), decoded.get(n).shape(), name + ": shape of " + n);
                });
                return Codec.encodeMasks(inputs);
            }
            case Codec.UPDATE_CODEC -> {
                Map<String, FloatTensor> decoded = Codec.decodeUpdate(body, registry, null, Limits.DEFAULT);
                Map<String, Object> expDecoded = map(exp.get("decoded"));
                assertEquals(new TreeSet<>(expDecoded.keySet()), new TreeSet<>(decoded.keySet()));
                expDecoded.forEach((n, v) -> {
                    FloatTensor want = new FloatTensor(longs(map(v).get("shape")), floatsFromBits(map(v).get("f32_bits")));
                    assertEquals(want, decoded.get(n), name + ": decoded " + n + " differs from Python's");
                });
                Map<String, FloatTensor> inputs = new LinkedHashMap<>();
                map(exp.get("inputs")).forEach((n, v) -> inputs.put(n,
                        new FloatTensor(longs(map(v).get("shape")), floatsFromBits(map(v).get("f32_bits")))));
                Map<String, Mask> masks = new LinkedHashMap<>();
                map(exp.get("input_masks")).forEach((n, v) -> masks.put(n, maskOf(map(v))));
                return Codec.encodeUpdate(inputs, masks, Precision.parse((String) exp.get("precision")));
            }
            default -> throw new AssertionError(name + ": unexpected codec " + codec);
        }
    }

    @Test
    void chunksReassembleInAnyOrderAndIgnoreDuplicates() {
        List<String> names = new ArrayList<>(new TreeSet<>(files.keySet()).stream()
                .filter(n -> n.startsWith("chunks/")).toList());
        assertTrue(names.size() > 1);
        Collections.reverse(names);
        Chunks.Reassembler r = new Chunks.Reassembler();
        byte[] message = null;
        for (int i = 0; i < names.size(); i++) {
            byte[] done = r.add(read(names.get(i)), "t");
            if (i < names.size() - 1) {
                assertNull(done, "incomplete after " + (i + 1) + " chunks");
                assertNull(r.add(read(names.get(i)), "t"), "an exact duplicate is ignored");
            } else {
                message = done;
            }
        }
        assertNull(r.add(read(names.get(0)), "t"), "a straggler of a completed message is ignored");
        assertNotNull(message);
        assertArrayEquals(read("update_signed.bin"), message);
        assertEquals(0, r.pending());
    }
}
