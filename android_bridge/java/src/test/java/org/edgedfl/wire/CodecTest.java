package org.edgedfl.wire;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The pieces under the golden files: canonical JSON, fp16 rounding, and the typed rejections a
 * receiver relies on (each the same class the Python reference raises for the same bytes).
 */
class CodecTest {
    private static Path golden;
    private static byte[] signedUpdate;
    private static Signer testSigner;

    @BeforeAll
    static void load() throws IOException {
        golden = Path.of(System.getProperty("edgedfl.golden", "../../tests/wire/golden"));
        signedUpdate = Files.readAllBytes(golden.resolve("update_signed.bin"));
        byte[] seed = new byte[32];
        for (int i = 0; i < 32; i++) {
            seed[i] = (byte) i;
        }
        testSigner = Signer.fromSeed(seed, "test-key");
    }

    // --- canonical JSON ---------------------------------------------------------------------

    @Test
    void canonicalJsonMatchesPythonJsonDumps() {
        Map<String, Object> inner = new LinkedHashMap<>();
        inner.put("z", -5L);
        inner.put("y", List.of(true, false, Json.NULL));
        Map<String, Object> obj = new LinkedHashMap<>();
        obj.put("b", 1L);
        obj.put("a", "caf\u00e9\n\u007f\"\\/\u0001\t");
        obj.put(new String(Character.toChars(0x1F600)), List.of());
        obj.put("\uffff", inner);
        obj.put("", Long.MAX_VALUE);
        // Python: json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        String python = "{\"\":9223372036854775807,\"a\":\"caf\\u00e9\\n\\u007f\\\"\\\\/\\u0001\\t\",\"b\":1,"
                + "\"\\uffff\":{\"y\":[true,false,null],\"z\":-5},\"\\ud83d\\ude00\":[]}";
        assertEquals(python, Json.canonical(obj));
        assertEquals(obj.keySet(), Json.parseObject(python.getBytes(StandardCharsets.US_ASCII), "t").keySet());
    }

    @Test
    void jsonReaderIsStrict() {
        for (String bad : List.of("{\"a\":1,\"a\":2}", "{\"a\":1.5}", "{\"a\":1e3}", "{\"a\":01}", "{\"a\":\"\u0001\"}",
                "{\"a\":1} x", "{'a':1}", "{\"a\":NaN}", "{\"a\":99999999999999999999}", "[" .repeat(300))) {
            assertThrows(WireException.MalformedMessage.class,
                    () -> Json.parse(bad.getBytes(StandardCharsets.UTF_8), "t"), bad);
        }
        assertThrows(WireException.MalformedMessage.class,
                () -> Json.parse(new byte[] {'"', (byte) 0xff, '"'}, "t"), "invalid UTF-8");
        assertEquals(Map.of("a", List.of(1L, -2L)), Json.parse(" {\"a\" : [1, -2]}\n".getBytes(StandardCharsets.UTF_8), "t"));
    }

    // --- fp16 -------------------------------------------------------------------------------

    @Test
    void everyHalfSurvivesWideningAndNarrowing() {
        for (int h = 0; h < 0x10000; h++) {
            float f = Half.toFloat((short) h);
            if (!Float.isNaN(f)) {
                assertEquals((short) h, Half.fromFloat(f), "half bits 0x" + Integer.toHexString(h));
            }
        }
    }

    @Test
    void halfRoundsLikeNumpy() {
        // (float32 bits, numpy's float16 bits), from numpy: np.float32(v).astype(np.float16)
        int[][] cases = {
            {0x477fe000, 0x7bff}, {0x477feffd, 0x7bff}, {0x477ff000, 0x7c00}, {0x322bcc77, 0x0000},
            {0x32fffae5, 0x0000}, {0x337ffae5, 0x0001}, {0x37fba882, 0x01f7}, {0x3eaaaaab, 0x3555},
            {0x80000000, 0x8000}, {0x3dcccccd, 0x2e66}, {0x387fda40, 0x03ff}, {0x387fc000, 0x03ff},
            // exact ties: to even, in the normal and the subnormal range
            {0x3f801000, 0x3c00}, {0x3f803000, 0x3c02}, {0x33000000, 0x0000}, {0x33400000, 0x0001},
            {0x33c00000, 0x0002}, {0x34200000, 0x0002},
        };
        for (int[] c : cases) {
            assertEquals((short) c[1], Half.fromFloat(Float.intBitsToFloat(c[0])), Integer.toHexString(c[0]));
        }
    }

    // --- rejections, each Python's class ------------------------------------------------------

    private static byte[] flipped(byte[] data, int index) {
        byte[] copy = data.clone();
        copy[index] ^= 0x01;
        return copy;
    }

    @Test
    void envelopeRejectionsAreTyped() {
        KeyRing ring = KeyRing.of(testSigner);
        assertEquals("IntegrityError", assertThrows(WireException.Integrity.class,
                () -> Envelope.decode(flipped(signedUpdate, signedUpdate.length - 1))).pythonName());
        assertThrows(WireException.SchemaVersion.class, () -> {
            byte[] v2 = signedUpdate.clone();
            v2[4] = 2;
            Envelope.decode(v2);
        });
        assertThrows(WireException.MalformedMessage.class, () -> Envelope.decode(flipped(signedUpdate, 0)));
        assertThrows(WireException.MalformedMessage.class,
                () -> Envelope.decode(Arrays.copyOf(signedUpdate, signedUpdate.length - 1)));
        assertThrows(WireException.MalformedMessage.class, () -> Envelope.decode(Arrays.copyOf(signedUpdate, 9)));
        // A header byte changed under the signature: the signature no longer verifies.
        int inHeader = new String(signedUpdate, StandardCharsets.ISO_8859_1).indexOf("node-a");
        assertThrows(WireException.Signature.class,
                () -> Envelope.decode(flipped(signedUpdate, inHeader), Limits.DEFAULT, ring));
        assertThrows(WireException.UnknownSigner.class,
                () -> Envelope.decode(signedUpdate, Limits.DEFAULT, new KeyRing().add("other", testSigner.publicBytes())));
        assertThrows(WireException.Signature.class, () -> Envelope.decode(
                Envelope.decode(signedUpdate).unsigned().encode(), Limits.DEFAULT, ring));
        assertThrows(WireException.Signature.class, () -> Envelope.decode(signedUpdate, Limits.DEFAULT,
                new KeyRing().add("test-key", testSigner.publicBytes(), java.util.Set.of("node-b"))));
        Limits tiny = new Limits(64, 256, 1024, 8, 64, 64, 4, 16);
        assertThrows(WireException.PayloadTooLarge.class, () -> Envelope.decode(signedUpdate, tiny, null));
        Envelope.decode(signedUpdate, Limits.DEFAULT, ring); // and the original is fine
    }

    @Test
    void headerRulesAreEnforced() {
        assertThrows(WireException.MalformedMessage.class,
                () -> Envelope.of("update", "bad swarm", "a", 0, 0, 0, new byte[0], Map.of()));
        assertThrows(WireException.MalformedMessage.class,
                () -> Envelope.of("bogus", "s", "a", 0, 0, 0, new byte[0], Map.of()));
        assertThrows(WireException.MalformedMessage.class,
                () -> Envelope.of("update", "s", "a", -1, 0, 0, new byte[0], Map.of()));
        assertThrows(WireException.MalformedMessage.class,
                () -> new Envelope("error", "s", "a", 0, 0, 0, new byte[] {1}, Map.of(), "boom", null, null));
        // An unknown header key is a schema change, refused.
        byte[] extra = Envelope.of("ack", "s", "a", 0, 0, 0, new byte[0], Map.of()).encode();
        String header = new String(extra, 10, extra.length - 10, StandardCharsets.US_ASCII);
        byte[] withExtra = withHeader(header.replace("\"kind\"", "\"zzz\":1,\"kind\""));
        assertThrows(WireException.MalformedMessage.class, () -> Envelope.decode(withExtra));
        assertThrows(WireException.MalformedMessage.class,
                () -> Envelope.decode(withHeader(header.replace("\"kind\"", "\"kind\":\"ack\",\"kind\""))));
    }

    private static byte[] withHeader(String header) {
        byte[] h = header.getBytes(StandardCharsets.US_ASCII);
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(10 + h.length);
        b.put(new byte[] {'E', 'D', 'F', 'L', 1, 0}).putInt(h.length).put(h);
        return b.array();
    }

    @Test
    void updateRejectionsAreTyped() {
        Mask mask = new Mask(new long[] {2, 3}, new boolean[] {true, false, false, true, true, false});
        FloatTensor t = new FloatTensor(new long[] {2, 3}, new float[] {1, 0, 0, -2, 3, 0});
        byte[] body = Codec.encodeUpdate(Map.of("w", t), Map.of("w", mask), Precision.FP16);
        assertThrows(WireException.UnknownMask.class, () -> Codec.decodeUpdate(body, new MaskRegistry(), null, Limits.DEFAULT));
        MaskRegistry registry = new MaskRegistry();
        registry.add(mask);
        assertEquals(t, Codec.decodeUpdate(body, registry, null, Limits.DEFAULT).get("w"));
        assertThrows(WireException.TensorValidation.class, () -> Codec.encodeUpdate(
                Map.of("w", new FloatTensor(new long[] {1}, new float[] {Float.NaN})), Map.of(), Precision.FP32));
        assertThrows(WireException.TensorValidation.class, () -> Codec.encodeUpdate(
                Map.of("w", new FloatTensor(new long[] {1}, new float[] {70000f})), Map.of(), Precision.FP16));
        assertThrows(WireException.TensorValidation.class, () -> Codec.encodeUpdate(
                Map.of("w#scale", t), Map.of(), Precision.FP16));
        TensorSpec spec = new TensorSpec(Map.of("w", new long[] {2, 3}), TensorSpec.WIRE_DTYPES, 2.5, null, null,
                false, false);
        assertThrows(WireException.TensorValidation.class, () -> Codec.decodeUpdate(body, registry, spec, Limits.DEFAULT));
        assertThrows(WireException.TensorValidation.class, () -> Codec.decodeUpdate(body, registry,
                TensorSpec.of(Map.of("v", new long[] {2, 3})), Limits.DEFAULT));
        // A body of another codec is not an update.
        byte[] masks = Codec.encodeMasks(Map.of("w", mask));
        assertThrows(WireException.MalformedMessage.class, () -> Codec.readUpdate(masks, Limits.DEFAULT));
        Limits small = new Limits(65536, 1 << 20, 1 << 20, 16, 4, 4, 8, 64);
        assertThrows(WireException.PayloadTooLarge.class, () -> Codec.readUpdate(body, small));
    }

    @Test
    void int8QuantisesAsTheFormatSays() {
        float[] x = {0.5f, -0.25f, 1.0f, 0f};
        byte[] body = Codec.encodeUpdate(Map.of("b", new FloatTensor(new long[] {4}, x)), Map.of(), Precision.INT8);
        UpdateTensor t = Codec.readUpdate(body, Limits.DEFAULT).get(0);
        float scale = (float) (1.0 / 127.0);
        assertEquals(scale, t.scale().toFloats()[0]);
        assertArrayEquals(new byte[] {64, -32, 127, 0}, t.values().data()); // rint(63.5) = 64: half to even
        byte[] zeros = Codec.encodeUpdate(Map.of("z", new FloatTensor(new long[] {2}, new float[2])), Map.of(),
                Precision.INT8);
        assertEquals(0f, Codec.readUpdate(zeros, Limits.DEFAULT).get(0).scale().toFloats()[0]);
    }

    @Test
    void maskIdsHashTheShapeAndPadBitsMustBeZero() {
        boolean[] bits = {true, false, true, true, false, false, false, true};
        Mask a = new Mask(new long[] {2, 4}, bits);
        Mask b = new Mask(new long[] {4, 2}, bits);
        assertTrue(!a.id().equals(b.id()));
        assertArrayEquals(new byte[] {(byte) 0b10110001}, a.packed());
        Mask odd = new Mask(new long[] {10}, new boolean[] {true, true, false, false, false, false, false, false, false, true});
        assertArrayEquals(new byte[] {(byte) 0xc0, 0x40}, odd.packed());
        assertThrows(WireException.MalformedMessage.class, () -> Mask.fromPacked(new long[] {10}, new byte[] {(byte) 0xc0, 0x41}));
    }

    @Test
    void chunkRejectionsAreTyped() {
        List<byte[]> chunks = Chunks.split(signedUpdate, 100);
        assertThrows(WireException.Chunk.class, () -> Chunks.parseHeader(Arrays.copyOf(chunks.get(0), 50)));
        assertThrows(WireException.Chunk.class, () -> Chunks.parseHeader(flipped(chunks.get(0), 0)));
        byte[] longer = Arrays.copyOf(chunks.get(0), chunks.get(0).length + 1);
        assertThrows(WireException.Chunk.class, () -> Chunks.parseHeader(longer));
        Chunks.Reassembler r = new Chunks.Reassembler();
        r.add(chunks.get(0), "s");
        byte[] differing = chunks.get(0).clone();
        differing[differing.length - 1] ^= 1;
        assertThrows(WireException.Chunk.class, () -> r.add(differing, "s"));
        // Data that does not hash to what every chunk claims: an integrity failure once complete.
        Chunks.Reassembler r2 = new Chunks.Reassembler();
        for (int i = 0; i < chunks.size() - 1; i++) {
            r2.add(chunks.get(i), "s");
        }
        byte[] last = chunks.get(chunks.size() - 1).clone();
        last[last.length - 1] ^= 1;
        assertThrows(WireException.Integrity.class, () -> r2.add(last, "s"));
        assertEquals(1, Chunks.split(new byte[0], 10).size());
    }

    @Test
    void tensorsBodyKeepsDtypesInSafetensorsOrder() {
        Map<String, RawTensor> t = new TreeMap<>();
        t.put("a", new RawTensor(DType.I32, new long[] {1}, new byte[4]));
        t.put("b", new RawTensor(DType.F32, new long[] {1}, new byte[4]));
        t.put("c", new RawTensor(DType.U8, new long[] {3}, new byte[] {1, 2, 3}));
        byte[] body = Codec.encodeTensors(t);
        String header = new String(body, 8, body[0] & 0xff, StandardCharsets.UTF_8);
        assertTrue(header.indexOf("\"b\"") < header.indexOf("\"a\"") && header.indexOf("\"a\"") < header.indexOf("\"c\""),
                header);
        assertEquals(t, new TreeMap<>(Codec.decodeTensors(body, null, Limits.DEFAULT)));
        assertEquals(0, (body[0] & 0xff) % 8, "header padded to 8 bytes");
    }

    // --- sparse experts ---------------------------------------------------------------------

    private static RawTensor shape(long rows, long cols) {
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(16).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        b.putLong(rows).putLong(cols);
        return new RawTensor(DType.I64, new long[] {2}, b.array());
    }

    private static Map<String, RawTensor> sparseExpert() {
        // a 3x4 tensor, mask 1010 0001 1100 (row-major): packbits -> 0b10100001, 0b1100_0000
        Map<String, RawTensor> body = new TreeMap<>();
        body.put("q.B", RawTensor.ofFloats(DType.F16, new long[] {5}, new float[] {1f, 2f, 3f, 4f, 5f}));
        body.put("mask.q.B", new RawTensor(DType.U8, new long[] {2}, new byte[] {(byte) 0xA1, (byte) 0xC0}));
        body.put("shape.q.B", shape(3, 4));
        body.put("k.B", RawTensor.ofFloats(DType.F16, new long[] {1, 2}, new float[] {7f, 8f}));
        body.put("latent.mean", RawTensor.ofFloats(DType.F32, new long[] {2}, new float[] {0f, 0f}));
        return body;
    }

    @Test
    void sparseExpertTensorsAreRebuiltDense() {
        Map<String, RawTensor> body = Codec.decodeTensors(Codec.encodeTensors(sparseExpert()), null, Limits.DEFAULT);
        Map<String, FloatTensor> got = Codec.denseExpert(body, Limits.DEFAULT);
        assertEquals(Set.of("q.B", "k.B"), got.keySet());
        assertArrayEquals(new long[] {3, 4}, got.get("q.B").shape());
        assertArrayEquals(new float[] {1f, 0f, 2f, 0f, 0f, 0f, 0f, 3f, 4f, 5f, 0f, 0f}, got.get("q.B").values());
        assertArrayEquals(new float[] {7f, 8f}, got.get("k.B").values());
    }

    @Test
    void malformedSparseExpertsAreRejectedAsPythonRejectsThem() {
        Map<String, RawTensor> count = sparseExpert();
        count.put("q.B", RawTensor.ofFloats(DType.F16, new long[] {4}, new float[] {1f, 2f, 3f, 4f}));
        Map<String, RawTensor> bits = sparseExpert();
        bits.put("mask.q.B", new RawTensor(DType.U8, new long[] {1}, new byte[] {(byte) 0xA1}));
        Map<String, RawTensor> badShape = sparseExpert();
        badShape.put("shape.q.B", shape(3, 0));
        Map<String, RawTensor> orphan = sparseExpert();
        orphan.put("mask.v.B", orphan.remove("mask.q.B"));
        Map<String, RawTensor> half = sparseExpert();
        half.remove("shape.q.B");
        for (Map<String, RawTensor> bad : List.of(count, bits, badShape, orphan, half)) {
            WireException e = assertThrows(WireException.MalformedMessage.class,
                    () -> Codec.denseExpert(bad, Limits.DEFAULT));
            assertEquals("MalformedMessage", e.pythonName());
        }
    }
}
