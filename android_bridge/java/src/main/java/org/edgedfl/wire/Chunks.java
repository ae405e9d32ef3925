package org.edgedfl.wire;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.LongSupplier;

/**
 * Cutting a message into chunks and putting it back together, within bounds (FORMAT.md section 3).
 *
 * <pre>
 * "EDFC" | u8 version | u8 flags | 16-byte message id | u32 index | u32 count
 *        | u32 chunk size | u64 total length | 32-byte sha256 of the whole message | data
 * </pre>
 *
 * <p>Every chunk repeats count, chunk size, total and hash, so each is checked on its own and one
 * that disagrees with its siblings is refused without disturbing them. The message id defaults to
 * the first 16 bytes of the message's sha256, so a re-sent message is recognised.
 */
public final class Chunks {
    public static final int HEADER_BYTES = 74;
    public static final int VERSION = 1;
    public static final int MESSAGE_ID_BYTES = 16;
    private static final byte[] MAGIC = {'E', 'D', 'F', 'C'};
    private static final long MAX_U32 = 0xffffffffL;

    private Chunks() {}

    /** The fixed header of one chunk, parsed. */
    public record Header(byte[] messageId, long index, long count, long chunkSize, long total, byte[] sha256) {
        /** How many data bytes chunk {@code i} must carry. */
        public long dataLength(long i) {
            return i < count - 1 ? chunkSize : total - chunkSize * (count - 1);
        }

        /** The fields every chunk of one message shares (everything but the index). */
        boolean sameMessage(Header o) {
            return Arrays.equals(messageId, o.messageId) && count == o.count && chunkSize == o.chunkSize
                    && total == o.total && Arrays.equals(sha256, o.sha256);
        }
    }

    /** Whether {@code data} starts like a chunk (magic only). */
    public static boolean isChunk(byte[] data) {
        return Hex.startsWith(data, MAGIC);
    }

    /** Default message id: the first 16 bytes of sha256(data). */
    public static byte[] messageIdFor(byte[] data) {
        return Arrays.copyOf(Mask.sha256().digest(data), MESSAGE_ID_BYTES);
    }

    /** {@link #split(byte[], int, byte[])} with the default message id. */
    public static List<byte[]> split(byte[] data, int chunkSize) {
        return split(data, chunkSize, null);
    }

    /**
     * Cut {@code data} into chunks of at most {@code chunkSize} data bytes each (plus the header).
     * An empty message is one empty chunk. Deterministic for given arguments.
     */
    public static List<byte[]> split(byte[] data, int chunkSize, byte[] messageId) {
        if (chunkSize < 1) {
            throw new IllegalArgumentException("chunk_size=" + chunkSize + ": must be in 1..2**32-1");
        }
        byte[] mid = messageId != null ? messageId : messageIdFor(data);
        if (mid.length != MESSAGE_ID_BYTES) {
            throw new IllegalArgumentException("message_id: must be " + MESSAGE_ID_BYTES + " bytes");
        }
        int total = data.length;
        int count = Math.max(1, (int) ((total + (long) chunkSize - 1) / chunkSize));
        byte[] digest = Mask.sha256().digest(data);
        List<byte[]> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int begin = (int) Math.min((long) i * chunkSize, total);
            int end = (int) Math.min((long) (i + 1) * chunkSize, total);
            ByteBuffer chunk = ByteBuffer.allocate(HEADER_BYTES + end - begin); // big endian
            chunk.put(MAGIC).put((byte) VERSION).put((byte) 0).put(mid).putInt(i).putInt(count).putInt(chunkSize)
                    .putLong(total).put(digest).put(data, begin, end - begin);
            out.add(chunk.array());
        }
        return out;
    }

    /**
     * Parse and self-check one chunk's header.
     *
     * @throws WireException.Chunk on any inconsistency
     */
    public static Header parseHeader(byte[] chunk) {
        if (chunk.length < HEADER_BYTES) {
            throw new WireException.Chunk(
                    "chunk of " + chunk.length + " bytes is shorter than its " + HEADER_BYTES + "-byte header");
        }
        if (!isChunk(chunk)) {
            throw new WireException.Chunk("bad chunk magic");
        }
        ByteBuffer b = ByteBuffer.wrap(chunk);
        int version = chunk[4] & 0xff;
        int flags = chunk[5] & 0xff;
        if (version != VERSION || flags != 0) {
            throw new WireException.Chunk("chunk version " + version + " / flags " + flags + " not understood");
        }
        byte[] mid = Arrays.copyOfRange(chunk, 6, 22);
        long index = b.getInt(22) & MAX_U32;
        long count = b.getInt(26) & MAX_U32;
        long chunkSize = b.getInt(30) & MAX_U32;
        long total = b.getLong(34);
        byte[] digest = Arrays.copyOfRange(chunk, 42, 74);
        if (count < 1 || index >= count || chunkSize < 1) {
            throw new WireException.Chunk(
                    "chunk index " + index + " / count " + count + " / size " + chunkSize + " impossible");
        }
        // total is a u64: above 2^63 it reads negative here, and no count can match it.
        long expected = total < 0 ? -1 : Math.max(1, total / chunkSize + (total % chunkSize != 0 ? 1 : 0));
        if (count != expected) {
            throw new WireException.Chunk("count " + count + " does not match total " + Long.toUnsignedString(total)
                    + " / chunk size " + chunkSize);
        }
        Header header = new Header(mid, index, count, chunkSize, total, digest);
        if (chunk.length - HEADER_BYTES != header.dataLength(index)) {
            throw new WireException.Chunk("chunk " + index + "/" + count + " carries " + (chunk.length - HEADER_BYTES)
                    + " bytes, expected " + header.dataLength(index));
        }
        return header;
    }

    /**
     * Collects chunks into messages, bounded in message size, chunk count, pending messages and
     * time. Chunks from different sources (topics or senders) never mix.
     */
    public static final class Reassembler {
        private record Key(String source, String messageId) {}

        private static final class Partial {
            final Header header;
            final Map<Long, byte[]> parts = new HashMap<>();
            long nbytes;
            long lastSeenNanos;

            Partial(Header header, long now) {
                this.header = header;
                this.lastSeenNanos = now;
            }
        }

        private final long maxMessageBytes;
        private final long maxChunks;
        private final int maxPendingMessages;
        private final long timeoutNanos;
        private final LongSupplier clock;
        private final LinkedHashMap<Key, Partial> pending = new LinkedHashMap<>(16, 0.75f, true);
        private final LinkedHashMap<Key, Boolean> completed = new LinkedHashMap<>();
        private static final int REMEMBER_COMPLETED = 1024;

        /** Python's defaults: 64 MiB messages, 4096 chunks, 16 pending messages, 120 s idle timeout. */
        public Reassembler() {
            this(64L * 1024 * 1024, 4096, 16, 120_000_000_000L, System::nanoTime);
        }

        /**
         * @param timeoutNanos a partial message is dropped this long after its last chunk
         * @param clock monotonic nanoseconds (injectable for tests)
         */
        public Reassembler(long maxMessageBytes, long maxChunks, int maxPendingMessages, long timeoutNanos,
                LongSupplier clock) {
            if (maxMessageBytes <= 0 || maxChunks <= 0 || maxPendingMessages <= 0 || timeoutNanos <= 0) {
                throw new IllegalArgumentException("Reassembler: every bound must be > 0");
            }
            this.maxMessageBytes = maxMessageBytes;
            this.maxChunks = maxChunks;
            this.maxPendingMessages = maxPendingMessages;
            this.timeoutNanos = timeoutNanos;
            this.clock = clock;
        }

        /** Number of unfinished messages held. */
        public synchronized int pending() {
            return pending.size();
        }

        /**
         * Take one chunk; return the whole message when this chunk completes it, else null.
         * Exact duplicates and stragglers of a completed message return null.
         *
         * @throws WireException.Chunk malformed, or inconsistent with its siblings
         * @throws WireException.PayloadTooLarge the claimed message exceeds the bound
         * @throws WireException.Integrity the completed message does not match its sha256
         */
        public synchronized byte[] add(byte[] chunk, String source) {
            long now = clock.getAsLong();
            pending.values().removeIf(p -> now - p.lastSeenNanos > timeoutNanos);
            Header header = parseHeader(chunk);
            if (header.total() > maxMessageBytes) {
                throw new WireException.PayloadTooLarge(
                        "chunked message of " + header.total() + " bytes exceeds " + maxMessageBytes);
            }
            if (header.count() > maxChunks) {
                throw new WireException.Chunk("message in " + header.count() + " chunks exceeds limit " + maxChunks);
            }
            Key key = new Key(source, Hex.encode(header.messageId()));
            if (completed.containsKey(key)) {
                return null;
            }
            byte[] data = Arrays.copyOfRange(chunk, HEADER_BYTES, chunk.length);
            Partial partial = pending.get(key);
            if (partial == null) {
                while (pending.size() >= maxPendingMessages) { // drop the one idle longest
                    pending.remove(pending.keySet().iterator().next());
                }
                partial = new Partial(header, now);
                pending.put(key, partial);
            } else if (!header.sameMessage(partial.header)) {
                throw new WireException.Chunk("chunk " + header.index() + " of message " + key.messageId()
                        + " disagrees with its siblings");
            }
            byte[] seen = partial.parts.get(header.index());
            if (seen != null) {
                if (!Arrays.equals(seen, data)) {
                    throw new WireException.Chunk("chunk " + header.index() + " of message " + key.messageId()
                            + " arrived twice, differing");
                }
                return null;
            }
            partial.parts.put(header.index(), data);
            partial.nbytes += data.length;
            partial.lastSeenNanos = now;
            if (partial.parts.size() < partial.header.count()) {
                return null;
            }
            pending.remove(key);
            ByteArrayOutputStream out = new ByteArrayOutputStream((int) partial.nbytes);
            for (long i = 0; i < partial.header.count(); i++) {
                byte[] part = partial.parts.get(i);
                out.write(part, 0, part.length);
            }
            byte[] message = out.toByteArray();
            if (!Arrays.equals(Mask.sha256().digest(message), partial.header.sha256())) {
                throw new WireException.Integrity(
                        "reassembled message " + key.messageId() + " does not match its sha256");
            }
            completed.put(key, Boolean.TRUE);
            while (completed.size() > REMEMBER_COMPLETED) {
                completed.remove(completed.keySet().iterator().next());
            }
            return message;
        }
    }
}
