package org.edgedfl.wire;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Bounded, strict reading and byte-exact writing of safetensors files (the body of a message).
 *
 * <p>Layout: u64 little-endian header length {@code N}, {@code N} bytes of JSON header padded
 * with spaces to a multiple of 8, then the data section. Each tensor entry is {@code
 * {"dtype","shape","data_offsets"}} with offsets relative to the data section.
 *
 * <p><b>Writing</b> reproduces the Rust safetensors library (0.4 .. 0.8) that the Python side uses,
 * byte for byte: {@code "__metadata__"} first, then tensors ordered by dtype (the Rust enum order
 * of {@link DType}, descending) and then by name (UTF-8 byte order), data laid out in that order,
 * entry keys in the order dtype, shape, data_offsets, strings escaped as serde_json does.
 *
 * <p><b>Reading</b> bounds every claim before acting on it, as Python's {@code read_safetensors}
 * does: the header length against {@link Limits#maxBodyHeaderBytes()}, the tensor count, each
 * byte range against the buffer, each dtype against {@link DType}; the ranges must tile the data
 * section exactly. Readers never depend on the order of entries.
 */
public final class SafeTensors {
    private static final Comparator<Map.Entry<String, RawTensor>> WRITE_ORDER =
            Comparator.<Map.Entry<String, RawTensor>>comparingInt(e -> -e.getValue().dtype().ordinal())
                    .thenComparing(e -> e.getKey().getBytes(StandardCharsets.UTF_8), Arrays::compareUnsigned);

    private SafeTensors() {}

    /** A parsed body: its {@code __metadata__} strings and its tensors, in header order. */
    public record Parsed(Map<String, String> metadata, Map<String, RawTensor> tensors) {}

    /**
     * Serialise {@code tensors} with {@code metadata} (may be null: no {@code __metadata__} key).
     *
     * <p>Metadata entries are written in the map's iteration order. The Rust writer emits them
     * from a hash map, so only a single key gives deterministic bytes; edgedfl writes exactly one.
     */
    public static byte[] write(Map<String, RawTensor> tensors, Map<String, String> metadata) {
        List<Map.Entry<String, RawTensor>> ordered = new ArrayList<>(tensors.entrySet());
        ordered.sort(WRITE_ORDER);
        StringBuilder header = new StringBuilder("{");
        boolean first = true;
        if (metadata != null) {
            header.append("\"__metadata__\":{");
            boolean firstMeta = true;
            for (Map.Entry<String, String> e : metadata.entrySet()) {
                if (!firstMeta) {
                    header.append(',');
                }
                firstMeta = false;
                Json.appendSerdeString(header, e.getKey());
                header.append(':');
                Json.appendSerdeString(header, e.getValue());
            }
            header.append('}');
            first = false;
        }
        long offset = 0;
        for (Map.Entry<String, RawTensor> e : ordered) {
            RawTensor t = e.getValue();
            if (!first) {
                header.append(',');
            }
            first = false;
            Json.appendSerdeString(header, e.getKey());
            header.append(":{\"dtype\":\"").append(t.dtype().name()).append("\",\"shape\":[");
            long[] shape = t.shape();
            for (int i = 0; i < shape.length; i++) {
                if (i > 0) {
                    header.append(',');
                }
                header.append(shape[i]);
            }
            header.append("],\"data_offsets\":[").append(offset).append(',').append(offset + t.nbytes()).append("]}");
            offset += t.nbytes();
        }
        header.append('}');
        byte[] headerBytes = header.toString().getBytes(StandardCharsets.UTF_8);
        int padding = (8 - headerBytes.length % 8) % 8; // the data section starts 8-aligned
        ByteArrayOutputStream out = new ByteArrayOutputStream(8 + headerBytes.length + padding + (int) offset);
        out.write(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(headerBytes.length + padding).array(), 0, 8);
        out.write(headerBytes, 0, headerBytes.length);
        for (int i = 0; i < padding; i++) {
            out.write(' ');
        }
        for (Map.Entry<String, RawTensor> e : ordered) {
            byte[] data = e.getValue().data();
            out.write(data, 0, data.length);
        }
        return out.toByteArray();
    }

    private record Entry(String name, DType dtype, long[] shape, long begin, long end) {}

    /** Parse {@code body} with every claim bounded by {@code limits}. */
    @SuppressWarnings("unchecked")
    public static Parsed read(byte[] body, Limits limits) {
        int total = body.length;
        if (total < 8) {
            throw new WireException.MalformedMessage(
                    "safetensors body of " + total + " bytes is shorter than its 8-byte length prefix");
        }
        long headerLen = ByteBuffer.wrap(body, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        if (headerLen < 0 || headerLen > limits.maxBodyHeaderBytes()) { // < 0: a u64 over 2^63
            throw new WireException.PayloadTooLarge("safetensors header length " + Long.toUnsignedString(headerLen)
                    + " exceeds limit " + limits.maxBodyHeaderBytes());
        }
        if (8 + headerLen > total) {
            throw new WireException.MalformedMessage(
                    "safetensors header claims " + headerLen + " bytes, only " + (total - 8) + " follow");
        }
        Map<String, Object> header = Json.parseObject(Arrays.copyOfRange(body, 8, 8 + (int) headerLen),
                "safetensors header");
        int dataStart = 8 + (int) headerLen;
        long dataLen = total - dataStart;

        Object metadataRaw = header.remove("__metadata__");
        Map<String, String> metadata = new LinkedHashMap<>();
        if (metadataRaw != null && metadataRaw != Json.NULL) {
            if (!(metadataRaw instanceof Map)) {
                throw new WireException.MalformedMessage("safetensors __metadata__ must map strings to strings");
            }
            for (Map.Entry<String, Object> e : ((Map<String, Object>) metadataRaw).entrySet()) {
                if (!(e.getValue() instanceof String v)) {
                    throw new WireException.MalformedMessage("safetensors __metadata__ must map strings to strings");
                }
                metadata.put(e.getKey(), v);
            }
        }
        if (header.size() > limits.maxTensors()) {
            throw new WireException.PayloadTooLarge(
                    "body holds " + header.size() + " tensors, limit " + limits.maxTensors());
        }

        List<Entry> entries = new ArrayList<>();
        for (Map.Entry<String, Object> e : header.entrySet()) {
            String name = e.getKey();
            if (!(e.getValue() instanceof Map<?, ?> entry)
                    || !entry.keySet().equals(java.util.Set.of("dtype", "shape", "data_offsets"))) {
                throw new WireException.MalformedMessage(
                        "safetensors entry '" + name + "' must have exactly [data_offsets, dtype, shape]");
            }
            DType dtype = entry.get("dtype") instanceof String s ? DType.fromName(s) : null;
            if (dtype == null) {
                throw new WireException.MalformedMessage(
                        "tensor '" + name + "': unsupported dtype " + entry.get("dtype"));
            }
            long[] shape = Shapes.fromJson(entry.get("shape"));
            if (shape == null) {
                throw new WireException.MalformedMessage(
                        "tensor '" + name + "': shape " + entry.get("shape") + " is not a list of ints >= 0");
            }
            if (!(entry.get("data_offsets") instanceof List<?> offsets) || offsets.size() != 2
                    || !(offsets.get(0) instanceof Long begin) || !(offsets.get(1) instanceof Long end)) {
                throw new WireException.MalformedMessage(
                        "tensor '" + name + "': data_offsets " + entry.get("data_offsets") + " is not [begin, end]");
            }
            if (!(0 <= begin && begin <= end && end <= dataLen)) {
                throw new WireException.MalformedMessage("tensor '" + name + "': data_offsets [" + begin + ", "
                        + end + "] outside " + dataLen + " data bytes");
            }
            long n = Shapes.numel(shape);
            if (n < 0 || n > Long.MAX_VALUE / 8 || n * dtype.itemSize() != end - begin) {
                throw new WireException.MalformedMessage("tensor '" + name + "': shape " + Arrays.toString(shape)
                        + " x " + dtype + " does not fill [" + begin + ", " + end + "]");
            }
            entries.add(new Entry(name, dtype, shape, begin, end));
        }

        List<Entry> byOffset = new ArrayList<>(entries);
        byOffset.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end));
        long cursor = 0;
        for (Entry e : byOffset) {
            if (e.begin() != cursor) {
                throw new WireException.MalformedMessage("tensor '" + e.name() + "': data starts at " + e.begin()
                        + ", expected " + cursor + " (gap or overlap)");
            }
            cursor = e.end();
        }
        if (cursor != dataLen) {
            throw new WireException.MalformedMessage((dataLen - cursor) + " bytes after the last tensor");
        }

        Map<String, RawTensor> tensors = new LinkedHashMap<>();
        for (Entry e : entries) {
            byte[] data = Arrays.copyOfRange(body, dataStart + (int) e.begin(), dataStart + (int) e.end());
            tensors.put(e.name(), new RawTensor(e.dtype(), e.shape(), data));
        }
        return new Parsed(metadata, tensors);
    }
}
