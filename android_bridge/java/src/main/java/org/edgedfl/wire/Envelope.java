package org.edgedfl.wire;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.regex.Pattern;

/**
 * One message: routing fields, a body (safetensors bytes) or an error text, and a signature.
 *
 * <pre>
 * "EDFL" | u8 version | u8 flags | u32be H | header JSON (H bytes) | [64-byte signature] | body
 * </pre>
 *
 * <p>The header is canonical JSON (see {@link Json}), so the same envelope always encodes to the
 * same bytes. The signature covers the bytes as sent from the magic through the end of the
 * header; the header holds {@code body_len} and {@code body_sha256}, so the body is bound too, and
 * a verifier never re-serialises JSON. Decoding runs Python's checks in Python's order:
 * size, preamble, header fields, signature (when a key ring is given), body hash.
 *
 * <p>{@code swarm} and {@code sender} are 1..128 characters of {@code [A-Za-z0-9._-]} (they become
 * MQTT topic levels); {@code round}, {@code slot}, {@code seq} are in {@code 0 .. 2^63-1}, which is
 * exactly Java's non-negative {@code long}. Kind {@code "error"} carries an error text and an
 * empty body, every other kind a body and no error: content or an error, never both. Immutable.
 */
public final class Envelope {
    public static final int SCHEMA_VERSION = 1;
    public static final int FLAG_SIGNED = 0x01;
    /** Bytes before the JSON header: magic, version, flags, header length. */
    public static final int PREAMBLE_BYTES = 10;
    public static final Set<String> KINDS = Set.of("presence", "hello", "update", "expert", "ack", "mask", "error", "metrics");
    private static final byte[] MAGIC = {'E', 'D', 'F', 'L'};
    private static final Pattern IDENT = Pattern.compile("[A-Za-z0-9._-]{1,128}");
    private static final Pattern HEX64 = Pattern.compile("[0-9a-f]{64}");
    private static final List<String> REQUIRED =
            List.of("body_len", "body_sha256", "kind", "meta", "round", "sender", "seq", "slot", "swarm");
    private static final List<String> OPTIONAL = List.of("error", "key_id");

    private final String kind;
    private final String swarm;
    private final String sender;
    private final long round;
    private final long slot;
    private final long seq;
    private final byte[] body;
    private final Map<String, String> meta;
    private final String error;
    private final String keyId;
    private final byte[] signature;

    /**
     * Every field; {@code keyId} and {@code signature} are those of a received envelope (both or
     * neither), re-emitted by {@link #encode()} when it is relayed.
     *
     * @throws WireException.MalformedMessage if the fields break the rules above
     */
    public Envelope(String kind, String swarm, String sender, long round, long slot, long seq, byte[] body,
            Map<String, String> meta, String error, String keyId, byte[] signature) {
        checkRouting(kind, swarm, sender, round, slot, seq);
        this.kind = kind;
        this.swarm = swarm;
        this.sender = sender;
        this.round = round;
        this.slot = slot;
        this.seq = seq;
        this.body = body == null ? new byte[0] : body.clone();
        Map<String, String> m = new TreeMap<>(Json.CODE_POINT_ORDER);
        if (meta != null) {
            for (Map.Entry<String, String> e : meta.entrySet()) {
                if (e.getKey() == null || e.getKey().isEmpty() || e.getValue() == null) {
                    throw new WireException.MalformedMessage("envelope meta must map non-empty str keys to str values");
                }
                m.put(e.getKey(), e.getValue());
            }
        }
        this.meta = Collections.unmodifiableMap(m);
        if (error != null) {
            if (!kind.equals("error") || error.isEmpty()) {
                throw new WireException.MalformedMessage(
                        "only an envelope of kind 'error' carries a (non-empty) error text");
            }
            if (this.body.length > 0) {
                throw new WireException.MalformedMessage("an error envelope carries an error or a body, never both");
            }
        } else if (kind.equals("error")) {
            throw new WireException.MalformedMessage("an envelope of kind 'error' must carry an error text");
        }
        this.error = error;
        if ((keyId == null) != (signature == null)) {
            throw new WireException.MalformedMessage("key_id and signature come together or not at all");
        }
        if (signature != null && signature.length != Ed25519.SIGNATURE_BYTES) {
            throw new WireException.MalformedMessage("signature must be " + Ed25519.SIGNATURE_BYTES + " bytes");
        }
        this.keyId = keyId;
        this.signature = signature == null ? null : signature.clone();
    }

    /** An unsigned envelope carrying {@code body}. */
    public static Envelope of(String kind, String swarm, String sender, long round, long slot, long seq, byte[] body,
            Map<String, String> meta) {
        return new Envelope(kind, swarm, sender, round, slot, seq, body, meta, null, null, null);
    }

    /** An error envelope (kind "error", empty body): how a remote failure travels. */
    public static Envelope forError(String swarm, String sender, String error, long round, long slot, long seq,
            Map<String, String> meta) {
        return new Envelope("error", swarm, sender, round, slot, seq, new byte[0], meta, error, null, null);
    }

    private static void checkRouting(Object kind, Object swarm, Object sender, Object round, Object slot, Object seq) {
        if (!(kind instanceof String k) || !KINDS.contains(k)) {
            throw new WireException.MalformedMessage(
                    "envelope kind " + kind + " is not one of " + new TreeSet<>(KINDS));
        }
        Object[][] idents = {{"swarm", swarm}, {"sender", sender}};
        for (Object[] field : idents) {
            if (!(field[1] instanceof String s) || !IDENT.matcher(s).matches()) {
                throw new WireException.MalformedMessage(
                        "envelope " + field[0] + "=" + field[1] + ": must be 1..128 chars of [A-Za-z0-9._-]");
            }
        }
        Object[][] ints = {{"round", round}, {"slot", slot}, {"seq", seq}};
        for (Object[] field : ints) {
            if (!(field[1] instanceof Long v) || v < 0) {
                throw new WireException.MalformedMessage(
                        "envelope " + field[0] + "=" + field[1] + ": must be an int in 0..2**63-1");
            }
        }
    }

    public String kind() {
        return kind;
    }

    public String swarm() {
        return swarm;
    }

    public String sender() {
        return sender;
    }

    public long round() {
        return round;
    }

    public long slot() {
        return slot;
    }

    public long seq() {
        return seq;
    }

    /** A copy of the body (safetensors bytes, or empty). */
    public byte[] body() {
        return body.clone();
    }

    /** Unmodifiable, sorted. */
    public Map<String, String> meta() {
        return meta;
    }

    /** The error text of an error envelope, else null. */
    public String error() {
        return error;
    }

    public boolean isError() {
        return kind.equals("error");
    }

    /** Key id of a received signed envelope, else null. */
    public String keyId() {
        return keyId;
    }

    /** Signature of a received signed envelope, else null. */
    public byte[] signature() {
        return signature == null ? null : signature.clone();
    }

    public boolean isSigned() {
        return signature != null;
    }

    /** Hex sha256 of the body, as carried in the header. */
    public String sha256() {
        return Hex.encode(Mask.sha256().digest(body));
    }

    /** The same envelope without key id and signature. */
    public Envelope unsigned() {
        return new Envelope(kind, swarm, sender, round, slot, seq, body, meta, error, null, null);
    }

    /** The same routing fields and meta around another body (re-encoding a decoded body, say). */
    public Envelope withBody(byte[] newBody) {
        return new Envelope(kind, swarm, sender, round, slot, seq, newBody, meta, error, null, null);
    }

    // --- encoding ---------------------------------------------------------------------------

    /** Serialise; a received signed envelope keeps its key id and signature (relaying). */
    public byte[] encode() {
        return encode(null);
    }

    /** Serialise, signed by {@code signer} if not null (then any received signature is replaced). */
    public byte[] encode(Signer signer) {
        String id = signer != null ? signer.keyId() : keyId;
        Map<String, Object> header = new LinkedHashMap<>();
        header.put("body_len", (long) body.length);
        header.put("body_sha256", sha256());
        header.put("kind", kind);
        header.put("meta", meta);
        header.put("round", round);
        header.put("sender", sender);
        header.put("seq", seq);
        header.put("slot", slot);
        header.put("swarm", swarm);
        if (error != null) {
            header.put("error", error);
        }
        if (id != null) {
            header.put("key_id", id);
        }
        byte[] headerBytes = Json.canonicalBytes(header);
        ByteBuffer signed = ByteBuffer.allocate(PREAMBLE_BYTES + headerBytes.length);
        signed.put(MAGIC).put((byte) SCHEMA_VERSION).put((byte) (id != null ? FLAG_SIGNED : 0))
                .putInt(headerBytes.length).put(headerBytes);
        byte[] sig = signer != null ? signer.sign(signed.array()) : signature != null ? signature : new byte[0];
        return ByteBuffer.allocate(signed.capacity() + sig.length + body.length)
                .put(signed.array()).put(sig).put(body).array();
    }

    /** Whether {@code data} starts like an envelope (magic only; says nothing of validity). */
    public static boolean isEnvelope(byte[] data) {
        return Hex.startsWith(data, MAGIC);
    }

    // --- decoding ---------------------------------------------------------------------------

    /** {@link #decode(byte[], Limits, KeyRing)} with default limits and no signature check. */
    public static Envelope decode(byte[] data) {
        return decode(data, Limits.DEFAULT, null);
    }

    /**
     * Parse and check one envelope. With a {@code keyring}, the message must be signed by a key in
     * it; without one, a signature is kept on the result but not verified.
     *
     * @throws WireException.PayloadTooLarge the message or its header exceeds {@code limits}
     * @throws WireException.MalformedMessage bad magic, truncated, bad JSON, bad fields
     * @throws WireException.SchemaVersion a version other than {@link #SCHEMA_VERSION}
     * @throws WireException.UnknownSigner signed by a key id the ring does not hold
     * @throws WireException.Signature unsigned while a ring is given, or the signature fails
     * @throws WireException.Integrity the body does not match {@code body_sha256}
     */
    public static Envelope decode(byte[] data, Limits limits, KeyRing keyring) {
        int total = data.length;
        if (total > limits.maxMessageBytes()) {
            throw new WireException.PayloadTooLarge(
                    "message of " + total + " bytes exceeds limit " + limits.maxMessageBytes());
        }
        if (total < PREAMBLE_BYTES) {
            throw new WireException.MalformedMessage(
                    "message of " + total + " bytes is shorter than the " + PREAMBLE_BYTES + "-byte preamble");
        }
        if (!isEnvelope(data)) {
            throw new WireException.MalformedMessage("bad magic, expected b'EDFL'");
        }
        int version = data[4] & 0xff;
        int flags = data[5] & 0xff;
        long headerLen = ByteBuffer.wrap(data, 6, 4).getInt() & 0xffffffffL;
        if (version != SCHEMA_VERSION) {
            throw new WireException.SchemaVersion(
                    "wire schema version " + version + "; this build speaks " + SCHEMA_VERSION);
        }
        if ((flags & ~FLAG_SIGNED) != 0) {
            throw new WireException.MalformedMessage(String.format("unknown flag bits 0x%02x", flags));
        }
        if (headerLen > limits.maxHeaderBytes()) {
            throw new WireException.PayloadTooLarge(
                    "header length " + headerLen + " exceeds limit " + limits.maxHeaderBytes());
        }
        int sigLen = (flags & FLAG_SIGNED) != 0 ? Ed25519.SIGNATURE_BYTES : 0;
        long bodyStart = PREAMBLE_BYTES + headerLen + sigLen;
        if (bodyStart > total) {
            throw new WireException.MalformedMessage(
                    "truncated: header and signature need " + bodyStart + " bytes, have " + total);
        }
        int headerEnd = PREAMBLE_BYTES + (int) headerLen;
        Map<String, Object> header =
                Json.parseObject(Arrays.copyOfRange(data, PREAMBLE_BYTES, headerEnd), "envelope header");
        checkHeader(header, limits);
        String keyId = optionalString(header, "key_id");
        if ((keyId != null) != (sigLen > 0)) {
            throw new WireException.MalformedMessage("signed flag and key_id in the header disagree");
        }
        if (total - bodyStart != (Long) header.get("body_len")) {
            throw new WireException.MalformedMessage(
                    "body is " + (total - bodyStart) + " bytes, header says " + header.get("body_len"));
        }
        byte[] signature = sigLen > 0 ? Arrays.copyOfRange(data, headerEnd, (int) bodyStart) : null;
        if (keyring != null) {
            if (keyId == null) {
                throw new WireException.Signature("message is unsigned but signatures are required");
            }
            keyring.verify(keyId, signature, Arrays.copyOfRange(data, 0, headerEnd), (String) header.get("sender"));
        }
        byte[] body = Arrays.copyOfRange(data, (int) bodyStart, total);
        if (!Hex.encode(Mask.sha256().digest(body)).equals(header.get("body_sha256"))) {
            throw new WireException.Integrity("body sha256 does not match the envelope header");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> rawMeta = (Map<String, Object>) header.get("meta");
        Map<String, String> meta = new LinkedHashMap<>();
        rawMeta.forEach((k, v) -> meta.put(k, (String) v));
        return new Envelope((String) header.get("kind"), (String) header.get("swarm"), (String) header.get("sender"),
                (Long) header.get("round"), (Long) header.get("slot"), (Long) header.get("seq"), body, meta,
                optionalString(header, "error"), keyId, signature);
    }

    /** An optional header field: JSON null counts as absent, as {@code dict.get} makes it in Python. */
    private static String optionalString(Map<String, Object> header, String key) {
        Object v = header.get(key);
        return v == null || v == Json.NULL ? null : (String) v;
    }

    private static void checkHeader(Map<String, Object> header, Limits limits) {
        List<String> missing = REQUIRED.stream().filter(k -> !header.containsKey(k))
                .collect(java.util.stream.Collectors.toList());
        if (!missing.isEmpty()) {
            throw new WireException.MalformedMessage("envelope header lacks " + missing);
        }
        Set<String> unknown = new TreeSet<>(header.keySet());
        unknown.removeAll(REQUIRED);
        unknown.removeAll(OPTIONAL);
        if (!unknown.isEmpty()) {
            throw new WireException.MalformedMessage(
                    "envelope header has unknown keys " + unknown + " (schema " + SCHEMA_VERSION + ")");
        }
        checkRouting(header.get("kind"), header.get("swarm"), header.get("sender"), header.get("round"),
                header.get("slot"), header.get("seq"));
        if (!(header.get("body_len") instanceof Long len) || len < 0) {
            throw new WireException.MalformedMessage(
                    "envelope body_len=" + header.get("body_len") + ": not a non-negative int");
        }
        if (!(header.get("body_sha256") instanceof String h) || !HEX64.matcher(h).matches()) {
            throw new WireException.MalformedMessage("envelope body_sha256 must be 64 lowercase hex characters");
        }
        if (!(header.get("meta") instanceof Map<?, ?> meta)) {
            throw new WireException.MalformedMessage("envelope meta must be a JSON object");
        }
        if (meta.size() > limits.maxMetaItems()) {
            throw new WireException.MalformedMessage(
                    "envelope meta has " + meta.size() + " items, limit " + limits.maxMetaItems());
        }
        for (Map.Entry<?, ?> e : meta.entrySet()) {
            String key = (String) e.getKey();
            if (!(e.getValue() instanceof String value)) {
                throw new WireException.MalformedMessage("envelope meta['" + key + "'] must be a string");
            }
            if (chars(key) > limits.maxStringChars() || chars(value) > limits.maxStringChars()) {
                throw new WireException.MalformedMessage(
                        "envelope meta key or value longer than " + limits.maxStringChars() + " chars");
            }
        }
        Object error = header.get("error");
        if (error != null && error != Json.NULL
                && (!(error instanceof String s) || chars(s) > limits.maxStringChars())) {
            throw new WireException.MalformedMessage("envelope error must be a string within max_string_chars");
        }
        Object keyId = header.get("key_id");
        if (keyId != null && keyId != Json.NULL && !(keyId instanceof String)) {
            throw new WireException.MalformedMessage("envelope key_id must be a string");
        }
    }

    /** Python's {@code len(str)}: code points, not UTF-16 units. */
    private static int chars(String s) {
        return s.codePointCount(0, s.length());
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Envelope e && e.kind.equals(kind) && e.swarm.equals(swarm) && e.sender.equals(sender)
                && e.round == round && e.slot == slot && e.seq == seq && Arrays.equals(e.body, body)
                && e.meta.equals(meta) && java.util.Objects.equals(e.error, error)
                && java.util.Objects.equals(e.keyId, keyId) && Arrays.equals(e.signature, signature);
    }

    @Override
    public int hashCode() {
        return java.util.Objects.hash(kind, swarm, sender, round, slot, seq, Arrays.hashCode(body));
    }

    @Override
    public String toString() {
        return "Envelope(" + kind + ", " + swarm + "/" + sender + ", round " + round + ", slot " + slot + ", seq "
                + seq + ", " + body.length + " body bytes" + (keyId != null ? ", key " + keyId : "") + ")";
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
