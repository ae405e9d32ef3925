package org.edgedfl.wire;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * Tensors to and from safetensors bodies: the three layouts of FORMAT.md section 2.
 *
 * <p>Every body's {@code __metadata__} holds one key, {@code "edgedfl"}, whose value is canonical
 * JSON naming the {@code "codec"}:
 *
 * <ul>
 *   <li>{@code update/1}: per tensor a dense shape, and for a sparse tensor the id of its mask; the
 *       values travel as fp16, fp32, or int8 with an fp32 scale in a sibling {@code "<name>#scale"}.
 *   <li>{@code mask/1}: masks as packed bits, with their shape and id.
 *   <li>{@code tensors/1}: plain dense tensors in their own dtype (task signatures, latent codes).
 * </ul>
 *
 * <p>The encoders reproduce the Python reference byte for byte (same quantisation arithmetic, same
 * fp16 rounding, same safetensors layout). The decoders run the same checks in the same order as
 * Python, so both codecs reject the same bytes with the same {@link WireException} class.
 */
public final class Codec {
    public static final String META_KEY = "edgedfl";
    public static final String UPDATE_CODEC = "update/1";
    public static final String MASK_CODEC = "mask/1";
    public static final String TENSORS_CODEC = "tensors/1";
    public static final String SCALE_SUFFIX = "#scale";
    private static final String TENSORS_KEY = "tensors";
    private static final String MASKS_KEY = "masks";

    private Codec() {}

    // --- shared -----------------------------------------------------------------------------

    /**
     * The codec a body declares (without decoding the rest).
     *
     * @throws WireException.MalformedMessage if the body's metadata is not edgedfl's
     */
    public static String codecOf(byte[] body, Limits limits) {
        Map<String, String> meta = SafeTensors.read(body, limits).metadata();
        Object codec = metaContent(meta).get("codec");
        if (!(codec instanceof String s)) {
            throw new WireException.MalformedMessage("body metadata names no codec");
        }
        return s;
    }

    private static Map<String, Object> metaContent(Map<String, String> meta) {
        if (!meta.keySet().equals(Set.of(META_KEY))) {
            throw new WireException.MalformedMessage(
                    "body metadata keys " + new TreeSet<>(meta.keySet()) + ", expected ['" + META_KEY + "']");
        }
        return Json.parseObject(meta.get(META_KEY).getBytes(java.nio.charset.StandardCharsets.UTF_8),
                "body metadata");
    }

    /** The table under {@code key} after checking the body is a {@code codec} body and nothing else. */
    @SuppressWarnings("unchecked")
    private static Map<String, Object> codecTable(Map<String, String> meta, String codec, String key) {
        Map<String, Object> content = metaContent(meta);
        if (!codec.equals(content.get("codec"))) {
            throw new WireException.MalformedMessage(
                    "body codec " + content.get("codec") + ", expected '" + codec + "'");
        }
        Set<String> expected = key == null ? Set.of("codec") : Set.of("codec", key);
        if (!content.keySet().equals(expected)) {
            throw new WireException.MalformedMessage(codec + " metadata has keys "
                    + new TreeSet<>(content.keySet()) + ", expected " + new TreeSet<>(expected));
        }
        if (key == null) {
            return Map.of();
        }
        if (!(content.get(key) instanceof Map<?, ?> table)) {
            throw new WireException.MalformedMessage(codec + " metadata '" + key + "' must be an object");
        }
        return (Map<String, Object>) table;
    }

    private static Map<String, String> metadata(String codec, String key, Object table) {
        Map<String, Object> content = new TreeMap<>();
        content.put("codec", codec);
        if (key != null) {
            content.put(key, table);
        }
        return Map.of(META_KEY, Json.canonical(content));
    }

    private static void checkName(String name) {
        if (name == null || name.isEmpty() || name.contains(SCALE_SUFFIX) || name.equals("__metadata__")) {
            throw new WireException.TensorValidation(
                    "tensor name '" + name + "': must be a non-empty str without '" + SCALE_SUFFIX + "'");
        }
    }

    /** The dense shape of a table entry, bounded by {@code limits}. */
    private static long[] shapeOf(Object info, String name, Limits limits) {
        long[] shape = info instanceof Map<?, ?> m ? Shapes.fromJson(m.get("shape")) : null;
        if (shape == null) {
            throw new WireException.MalformedMessage(
                    "tensor '" + name + "': dense shape is not a list of ints >= 0");
        }
        if (shape.length > 255) {
            throw new WireException.MalformedMessage("tensor '" + name + "': more than 255 dimensions");
        }
        long n = Shapes.numel(shape);
        if (n < 0 || n > limits.maxDenseElements()) {
            throw new WireException.PayloadTooLarge("tensor '" + name + "': shape " + Arrays.toString(shape)
                    + " exceeds " + limits.maxDenseElements() + " elements");
        }
        return shape;
    }

    // --- masks ------------------------------------------------------------------------------

    /** A {@code mask/1} body: each named mask as packed bits, with its shape and id. */
    public static byte[] encodeMasks(Map<String, Mask> masks) {
        Map<String, RawTensor> tensors = new LinkedHashMap<>();
        Map<String, Object> table = new TreeMap<>();
        for (Map.Entry<String, Mask> e : masks.entrySet()) {
            checkName(e.getKey());
            Mask mask = e.getValue();
            byte[] packed = mask.packed();
            tensors.put(e.getKey(), new RawTensor(DType.U8, new long[] {packed.length}, packed));
            table.put(e.getKey(), Map.of("id", mask.id(), "shape", mask.shape()));
        }
        return SafeTensors.write(tensors, metadata(MASK_CODEC, MASKS_KEY, table));
    }

    /**
     * Parse a {@code mask/1} body into name -> mask; also add each to {@code registry} if given.
     *
     * @throws WireException.MalformedMessage not a mask body, bits that do not fit the shape, or
     *     an id that does not match the bits
     */
    public static Map<String, Mask> decodeMasks(byte[] body, MaskRegistry registry, Limits limits) {
        SafeTensors.Parsed parsed = SafeTensors.read(body, limits);
        Map<String, Object> table = codecTable(parsed.metadata(), MASK_CODEC, MASKS_KEY);
        Map<String, RawTensor> raw = parsed.tensors();
        if (!table.keySet().equals(raw.keySet())) {
            throw new WireException.MalformedMessage("mask body lists " + new TreeSet<>(table.keySet())
                    + " but holds " + new TreeSet<>(raw.keySet()));
        }
        Map<String, Mask> result = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : table.entrySet()) {
            String name = e.getKey();
            long[] shape = shapeOf(e.getValue(), name, limits);
            if (!(e.getValue() instanceof Map<?, ?> info) || !info.keySet().equals(Set.of("id", "shape"))
                    || !(info.get("id") instanceof String id)) {
                throw new WireException.MalformedMessage("mask '" + name + "': entry must be {'id', 'shape'}");
            }
            RawTensor packed = raw.get(name);
            long size = Shapes.numel(shape);
            if (packed.dtype() != DType.U8 || !Arrays.equals(packed.shape(), new long[] {(size + 7) / 8})) {
                throw new WireException.MalformedMessage("mask '" + name + "': expected " + ((size + 7) / 8)
                        + " U8 bytes for shape " + Arrays.toString(shape));
            }
            if (!Mask.idOf(shape, packed.data()).equals(id)) {
                throw new WireException.MalformedMessage("mask '" + name + "': id does not match its bits and shape");
            }
            Mask mask = Mask.fromPacked(shape, packed.data());
            if (registry != null) {
                registry.add(mask);
            }
            result.put(name, mask);
        }
        return result;
    }

    // --- updates ----------------------------------------------------------------------------

    /**
     * An {@code update/1} body. Tensors named in {@code masks} travel sparse (values + mask id).
     *
     * <p>int8: {@code scale = fp32(max|x| / 127)} (division in double), {@code q =
     * round_half_even(x / scale)} in fp32, clipped to [-127, 127]; an all-zero tensor has scale 0.
     *
     * @param tensors name -> dense float32 tensor
     * @param masks name -> mask of that tensor's shape (entries outside it are dropped); may be empty
     * @param precision how the values travel
     * @throws WireException.TensorValidation non-finite values, fp16 overflow, a mask of the wrong
     *     shape or for a tensor not in the update, a bad name
     */
    public static byte[] encodeUpdate(Map<String, FloatTensor> tensors, Map<String, Mask> masks, Precision precision) {
        Set<String> unknown = new TreeSet<>(masks.keySet());
        unknown.removeAll(tensors.keySet());
        if (!unknown.isEmpty()) {
            throw new WireException.TensorValidation("masks given for tensors that are not in the update: " + unknown);
        }
        List<UpdateTensor> out = new ArrayList<>();
        for (Map.Entry<String, FloatTensor> e : tensors.entrySet()) {
            String name = e.getKey();
            checkName(name);
            FloatTensor tensor = e.getValue();
            Mask mask = masks.get(name);
            float[] dense = tensor.values();
            float[] values;
            if (mask == null) {
                values = dense;
            } else {
                if (!Arrays.equals(mask.shape(), tensor.shape())) {
                    throw new WireException.TensorValidation("tensor '" + name + "': mask shape "
                            + Arrays.toString(mask.shape()) + " != tensor shape " + Arrays.toString(tensor.shape()));
                }
                int[] idx = mask.indicesView();
                values = new float[idx.length];
                for (int i = 0; i < idx.length; i++) {
                    values[i] = dense[idx[i]];
                }
            }
            TensorSpec.checkValues(name, values, null);
            long[] valueShape = mask == null ? tensor.shape() : new long[] {values.length};
            String maskId = mask == null ? null : mask.id();
            if (precision == Precision.INT8) {
                float scale = int8Scale(values);
                byte[] q = new byte[values.length];
                if (scale != 0) {
                    for (int i = 0; i < values.length; i++) {
                        double r = Math.rint(values[i] / scale); // fp32 division, then half-to-even
                        q[i] = (byte) Math.max(-127, Math.min(127, r));
                    }
                }
                out.add(new UpdateTensor(name, tensor.shape(), maskId, RawTensor.ofInt8(valueShape, q),
                        RawTensor.ofFloats(DType.F32, new long[] {1}, new float[] {scale})));
            } else {
                if (precision == Precision.FP16) {
                    for (float v : values) {
                        if (Math.abs(v) > Half.MAX_VALUE) {
                            throw new WireException.TensorValidation(
                                    "tensor '" + name + "': values beyond fp16 range; send fp32 or int8");
                        }
                    }
                }
                out.add(new UpdateTensor(name, tensor.shape(), maskId,
                        RawTensor.ofFloats(precision.wireDtype(), valueShape, values), null));
            }
        }
        return writeUpdate(out);
    }

    /** {@code fp32(max|x| / 127)} with the division in double, as the reference writer computes it. */
    static float int8Scale(float[] values) {
        float peak = 0;
        for (float v : values) {
            peak = Math.max(peak, Math.abs(v));
        }
        return (float) (peak / 127.0);
    }

    /** Serialise wire-level tensors (as {@link #readUpdate} returns them) into an update body. */
    public static byte[] writeUpdate(Collection<UpdateTensor> tensors) {
        Map<String, RawTensor> raw = new LinkedHashMap<>();
        Map<String, Object> table = new TreeMap<>();
        for (UpdateTensor t : tensors) {
            checkName(t.name());
            raw.put(t.name(), t.values());
            if (t.scale() != null) {
                raw.put(t.name() + SCALE_SUFFIX, t.scale());
            }
            Map<String, Object> entry = new TreeMap<>();
            entry.put("shape", t.shape());
            if (t.maskId() != null) {
                entry.put("mask", t.maskId());
            }
            table.put(t.name(), entry);
        }
        return SafeTensors.write(raw, metadata(UPDATE_CODEC, TENSORS_KEY, table));
    }

    /**
     * Parse and cross-check an update body's header: the wire-level tensors, no values decoded.
     *
     * @throws WireException.MalformedMessage not an update body, or internally inconsistent
     * @throws WireException.PayloadTooLarge a claimed size beyond {@code limits}
     */
    public static List<UpdateTensor> readUpdate(byte[] body, Limits limits) {
        SafeTensors.Parsed parsed = SafeTensors.read(body, limits);
        Map<String, Object> table = codecTable(parsed.metadata(), UPDATE_CODEC, TENSORS_KEY);
        Map<String, RawTensor> raw = parsed.tensors();
        Set<String> valueNames = new TreeSet<>();
        for (String n : raw.keySet()) {
            if (!n.endsWith(SCALE_SUFFIX)) {
                valueNames.add(n);
            }
        }
        if (!table.keySet().equals(valueNames)) {
            Set<String> extra = new TreeSet<>(valueNames);
            extra.removeAll(table.keySet());
            Set<String> absent = new TreeSet<>(table.keySet());
            absent.removeAll(valueNames);
            throw new WireException.MalformedMessage(
                    "update table and tensors disagree (untabled " + extra + ", absent " + absent + ")");
        }
        List<UpdateTensor> planned = new ArrayList<>();
        long totalDense = 0;
        for (Map.Entry<String, Object> e : table.entrySet()) {
            String name = e.getKey();
            long[] shape = shapeOf(e.getValue(), name, limits);
            Map<?, ?> info = (Map<?, ?>) e.getValue();
            Set<Object> unknownKeys = new TreeSet<>();
            for (Object k : info.keySet()) {
                if (!k.equals("shape") && !k.equals("mask")) {
                    unknownKeys.add(k);
                }
            }
            if (!unknownKeys.isEmpty()) {
                throw new WireException.MalformedMessage("tensor '" + name + "': unknown keys " + unknownKeys);
            }
            RawTensor values = raw.get(name);
            if (Precision.ofWireDtype(values.dtype()) == null) {
                throw new WireException.MalformedMessage(
                        "tensor '" + name + "': value dtype " + values.dtype() + " is not F16, F32 or I8");
            }
            RawTensor scale = raw.get(name + SCALE_SUFFIX);
            if ((values.dtype() == DType.I8) != (scale != null)) {
                throw new WireException.MalformedMessage(
                        "tensor '" + name + "': int8 values need a " + SCALE_SUFFIX + " tensor, others none");
            }
            if (scale != null && (scale.dtype() != DType.F32 || !Arrays.equals(scale.shape(), new long[] {1}))) {
                throw new WireException.MalformedMessage("tensor '" + name + "': scale must be one F32 value");
            }
            Object mid = info.get("mask");
            if (mid != null) {
                if (!(mid instanceof String s) || s.length() != 64) {
                    throw new WireException.MalformedMessage(
                            "tensor '" + name + "': mask id " + mid + " is not a sha256 hex");
                }
                if (values.shape().length != 1) {
                    throw new WireException.MalformedMessage("tensor '" + name + "': sparse values must be 1-D, got "
                            + Arrays.toString(values.shape()));
                }
            } else if (!Arrays.equals(values.shape(), shape)) {
                throw new WireException.MalformedMessage("tensor '" + name + "': dense values "
                        + Arrays.toString(values.shape()) + " != shape " + Arrays.toString(shape));
            }
            totalDense += Shapes.numel(shape);
            if (totalDense > limits.maxTotalDenseElements()) {
                throw new WireException.PayloadTooLarge(
                        "update stands for more than " + limits.maxTotalDenseElements() + " elements");
            }
            planned.add(new UpdateTensor(name, shape, (String) mid, values, scale));
        }
        Set<String> orphans = new TreeSet<>();
        for (String n : raw.keySet()) {
            if (n.endsWith(SCALE_SUFFIX) && !table.containsKey(n.substring(0, n.length() - SCALE_SUFFIX.length()))) {
                orphans.add(n);
            }
        }
        if (!orphans.isEmpty()) {
            throw new WireException.MalformedMessage("scale tensors without values: " + orphans);
        }
        return planned;
    }

    private static String numpyName(DType dtype) {
        return switch (dtype) {
            case F16 -> "float16";
            case F32 -> "float32";
            case I8 -> "int8";
            case U8 -> "uint8";
            case BOOL -> "bool";
            case I16 -> "int16";
            case U16 -> "uint16";
            case I32 -> "int32";
            case U32 -> "uint32";
            case F64 -> "float64";
            case I64 -> "int64";
            case U64 -> "uint64";
        };
    }

    /**
     * Validate and decode an {@code update/1} body into dense float32 tensors (zeros outside masks).
     *
     * @param masks the masks this node holds (may be null when the update has no sparse tensor)
     * @param spec what to accept beyond the format's own rules, or null
     * @throws WireException.MalformedMessage not an update body, or internally inconsistent
     * @throws WireException.PayloadTooLarge a claimed size beyond {@code limits}
     * @throws WireException.UnknownMask a sparse tensor refers to a mask not in {@code masks}
     * @throws WireException.TensorValidation the spec refuses it, or a value is NaN or infinite
     */
    public static Map<String, FloatTensor> decodeUpdate(byte[] body, MaskRegistry masks, TensorSpec spec,
            Limits limits) {
        List<UpdateTensor> planned = readUpdate(body, limits);
        if (spec != null) {
            spec.checkNames(planned.stream().map(UpdateTensor::name).collect(java.util.stream.Collectors.toList()));
            spec.checkTotalBytes(body.length);
            for (UpdateTensor p : planned) {
                spec.checkEntry(p.name(), numpyName(p.values().dtype()), p.shape());
            }
        }
        Map<String, FloatTensor> result = new LinkedHashMap<>();
        for (UpdateTensor p : planned) {
            if (p.scale() != null) {
                float s = p.scale().toFloats()[0];
                if (!(s >= 0 && Float.isFinite(s))) {
                    throw new WireException.TensorValidation(
                            "tensor '" + p.name() + "': int8 scale " + s + " is not finite and >= 0");
                }
            }
            float[] values = p.transmittedValues();
            TensorSpec.checkValues(p.name(), values, spec);
            if (p.maskId() == null) {
                result.put(p.name(), new FloatTensor(p.shape(), values));
                continue;
            }
            if (masks == null) {
                throw new WireException.UnknownMask("tensor '" + p.name() + "': mask "
                        + p.maskId().substring(0, 16) + "... is not held by this receiver");
            }
            Mask mask = masks.get(p.maskId());
            // A mask id covers its shape, but a forged table could pair a held mask with another
            // shape: refuse that here rather than scatter out of bounds.
            if (!Arrays.equals(mask.shape(), p.shape())) {
                throw new WireException.MalformedMessage("tensor '" + p.name() + "': mask shape "
                        + Arrays.toString(mask.shape()) + " != dense shape " + Arrays.toString(p.shape()));
            }
            int[] idx = mask.indicesView();
            if (idx.length != values.length) {
                throw new WireException.MalformedMessage("tensor '" + p.name() + "': " + values.length
                        + " values for a mask with " + idx.length + " positions");
            }
            float[] dense = new float[(int) Shapes.numel(p.shape())];
            for (int i = 0; i < idx.length; i++) {
                dense[idx[i]] = values[i];
            }
            result.put(p.name(), new FloatTensor(p.shape(), dense));
        }
        return result;
    }

    // --- plain tensors ----------------------------------------------------------------------

    /** A {@code tensors/1} body: dense tensors in their own dtype (signatures, latent codes). */
    public static byte[] encodeTensors(Map<String, RawTensor> tensors) {
        for (String name : tensors.keySet()) {
            checkName(name);
        }
        return SafeTensors.write(tensors, metadata(TENSORS_CODEC, null, null));
    }

    /** Prefix of the latent code's tensors inside an expert body. */
    public static final String LATENT_PREFIX = "latent.";
    /** Prefix of a sparse expert tensor's mask: numpy.packbits of the bool mask (row-major, big bit order), U8. */
    public static final String MASK_PREFIX = "mask.";
    /** Prefix of a sparse expert tensor's dense shape: I64, two sizes. */
    public static final String SHAPE_PREFIX = "shape.";

    /**
     * An expert body's weights (its {@code tensors/1} tensors without {@code latent.*}), with every
     * sparse one (values under the mask + {@code mask.<name>} + {@code shape.<name>}) rebuilt dense,
     * zero outside the mask. As Python's {@code NeighbourProtocol} does on receipt.
     *
     * @throws WireException.MalformedMessage a mask or shape without its tensor, a tensor with only
     *     one of them, a shape that is not two positive sizes within the limits, mask bytes that do
     *     not cover the shape, or a value count other than the mask's
     */
    public static Map<String, FloatTensor> denseExpert(Map<String, RawTensor> tensors, Limits limits) {
        Map<String, FloatTensor> out = new TreeMap<>();
        for (Map.Entry<String, RawTensor> e : tensors.entrySet()) {
            String name = e.getKey();
            RawTensor t = e.getValue();
            if (name.startsWith(LATENT_PREFIX)) {
                continue;
            }
            if (name.startsWith(MASK_PREFIX) || name.startsWith(SHAPE_PREFIX)) {
                String base = name.substring(name.indexOf('.') + 1);
                if (!tensors.containsKey(base)) {
                    throw new WireException.MalformedMessage("expert: '" + name + "' without the tensor '" + base + "'");
                }
                continue;
            }
            RawTensor bits = tensors.get(MASK_PREFIX + name);
            RawTensor shapeT = tensors.get(SHAPE_PREFIX + name);
            if (bits == null && shapeT == null) {
                out.put(name, new FloatTensor(t.shape(), t.toFloats()));
                continue;
            }
            if (bits == null || shapeT == null) {
                throw new WireException.MalformedMessage("expert: sparse tensor '" + name + "' needs both its mask and its shape");
            }
            if (shapeT.dtype() != DType.I64 || shapeT.numel() != 2) {
                throw new WireException.MalformedMessage("expert: bad shape tensor for '" + name + "'");
            }
            java.nio.ByteBuffer sb = java.nio.ByteBuffer.wrap(shapeT.data()).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            long rows = sb.getLong();
            long cols = sb.getLong();
            if (rows < 1 || cols < 1 || rows > limits.maxDenseElements() / cols) {
                throw new WireException.MalformedMessage("expert: bad shape [" + rows + ", " + cols + "] for '" + name + "'");
            }
            int size = (int) (rows * cols);
            byte[] mask = bits.data();
            if (bits.dtype() != DType.U8 || bits.shape().length != 1 || mask.length != (size + 7) / 8) {
                throw new WireException.MalformedMessage("expert: mask of '" + name + "' has " + mask.length
                        + " bytes, " + ((size + 7) / 8) + " expected");
            }
            float[] values = t.toFloats();
            int count = 0;
            for (int i = 0; i < size; i++) {
                count += (mask[i >> 3] >> (7 - (i & 7))) & 1;
            }
            if (t.shape().length != 1 || values.length != count) {
                throw new WireException.MalformedMessage("expert: '" + name + "' has " + values.length
                        + " values for a mask of " + count);
            }
            float[] dense = new float[size];
            int k = 0;
            for (int i = 0; i < size; i++) {
                if (((mask[i >> 3] >> (7 - (i & 7))) & 1) != 0) {
                    dense[i] = values[k++];
                }
            }
            out.put(name, new FloatTensor(new long[] {rows, cols}, dense));
        }
        return out;
    }

    /** Parse a {@code tensors/1} body into its tensors (floats checked finite), validated against {@code spec}. */
    public static Map<String, RawTensor> decodeTensors(byte[] body, TensorSpec spec, Limits limits) {
        SafeTensors.Parsed parsed = SafeTensors.read(body, limits);
        codecTable(parsed.metadata(), TENSORS_CODEC, null);
        if (spec != null) {
            spec.checkNames(parsed.tensors().keySet());
            spec.checkTotalBytes(body.length);
        }
        for (Map.Entry<String, RawTensor> e : parsed.tensors().entrySet()) {
            RawTensor t = e.getValue();
            if (spec != null) {
                spec.checkEntry(e.getKey(), numpyName(t.dtype()), t.shape());
            }
            if (t.dtype() == DType.F64) {
                TensorSpec.checkValues(e.getKey(), t.toDoubles(), spec);
            } else if (t.dtype().isFloat() || spec != null) { // integers are finite; bounds still apply
                TensorSpec.checkValues(e.getKey(), t.toFloats(), spec);
            }
        }
        return parsed.tensors();
    }
}
