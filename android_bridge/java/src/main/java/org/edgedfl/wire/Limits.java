package org.edgedfl.wire;

/**
 * Receiver-side bounds for everything the codec decodes, with the Python reference's defaults.
 *
 * <p>Every length a sender can claim is checked against one of these before anything is
 * allocated for it, so an absurd claim costs the receiver nothing.
 *
 * @param maxHeaderBytes largest JSON header of an envelope, in bytes
 * @param maxMessageBytes largest whole envelope (header + signature + body), in bytes
 * @param maxBodyHeaderBytes largest JSON header inside a safetensors body, in bytes
 * @param maxTensors most tensors one body may hold
 * @param maxDenseElements most elements one decoded (dense) tensor may have
 * @param maxTotalDenseElements most elements all decoded tensors of one body may have together
 * @param maxMetaItems most entries in an envelope's {@code meta}
 * @param maxStringChars longest string (meta key or value, error text), in code points
 */
public record Limits(
        int maxHeaderBytes,
        long maxMessageBytes,
        long maxBodyHeaderBytes,
        int maxTensors,
        long maxDenseElements,
        long maxTotalDenseElements,
        int maxMetaItems,
        int maxStringChars) {

    private static final long MIB = 1024L * 1024L;

    /** The defaults of {@code edgedfl.wire.limits.DEFAULT_LIMITS}. */
    public static final Limits DEFAULT =
            new Limits(64 * 1024, 256 * MIB, 4 * MIB, 4096, 64 * MIB, 256 * MIB, 64, 8192);

    public Limits {
        long[] all = {maxHeaderBytes, maxMessageBytes, maxBodyHeaderBytes, maxTensors, maxDenseElements,
            maxTotalDenseElements, maxMetaItems, maxStringChars};
        for (long value : all) {
            if (value <= 0) {
                throw new IllegalArgumentException("Limits: every bound must be > 0, got " + value);
            }
        }
        // Decoded tensors live in Java arrays, which an int indexes.
        if (maxDenseElements > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("Limits.maxDenseElements must fit a Java array");
        }
    }
}
