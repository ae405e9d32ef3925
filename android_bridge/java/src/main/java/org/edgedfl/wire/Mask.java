package org.edgedfl.wire;

import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;

/**
 * A boolean sparsity mask over a dense tensor, with its content id.
 *
 * <p>On the wire a mask is its row-major flattening packed 8 booleans per byte, the first in the
 * most significant bit ({@code np.packbits(..., bitorder="big")}), trailing bits 0. Its id is the
 * lowercase hex sha256 of {@code u8 ndim | u64 big-endian dims | packed bytes}: the shape is
 * hashed too, so a 4x2 and a 2x4 mask with the same bits never share an id, and equal masks
 * agree on an id without a leader. Immutable.
 */
public final class Mask {
    private final long[] shape;
    private final boolean[] bits;
    private final byte[] packed;
    private final String id;
    private final int[] indices;

    /**
     * @param shape dense shape the mask covers (at most 255 dims)
     * @param bits row-major flags, {@code prod(shape)} of them
     */
    public Mask(long[] shape, boolean[] bits) {
        long n = Shapes.numel(shape);
        if (shape.length > 255) {
            throw new WireException.TensorValidation("mask: more than 255 dimensions");
        }
        if (n != bits.length) {
            throw new WireException.TensorValidation(
                    "mask of shape " + Arrays.toString(shape) + " needs " + n + " flags, got " + bits.length);
        }
        this.shape = shape.clone();
        this.bits = bits.clone();
        this.packed = pack(this.bits);
        this.id = idOf(this.shape, this.packed);
        this.indices = trueIndices(this.bits);
    }

    /**
     * The mask whose packed bytes are {@code packed} (as carried by a {@code mask/1} body).
     *
     * @throws WireException.MalformedMessage if the byte count does not fit the shape
     */
    public static Mask fromPacked(long[] shape, byte[] packed) {
        long n = Shapes.numel(shape);
        if (n < 0 || (n + 7) / 8 != packed.length) {
            throw new WireException.MalformedMessage("mask: expected " + ((n + 7) / 8) + " U8 bytes for shape "
                    + Arrays.toString(shape) + ", got " + packed.length);
        }
        boolean[] bits = new boolean[(int) n];
        for (int i = 0; i < bits.length; i++) {
            bits[i] = (packed[i >>> 3] & (0x80 >>> (i & 7))) != 0;
        }
        Mask mask = new Mask(shape, bits);
        // FORMAT.md: pad bits are 0. Refusing others keeps "id of the bytes sent" and "id of the
        // mask" the same thing (Python's reader is laxer here and hashes the bytes as sent).
        if (!Arrays.equals(mask.packed, packed)) {
            throw new WireException.MalformedMessage("mask: trailing pad bits of the last byte are not 0");
        }
        return mask;
    }

    /** Row-major packing, first flag in the most significant bit of each byte. */
    public static byte[] pack(boolean[] bits) {
        byte[] out = new byte[(bits.length + 7) / 8];
        for (int i = 0; i < bits.length; i++) {
            if (bits[i]) {
                out[i >>> 3] |= (byte) (0x80 >>> (i & 7));
            }
        }
        return out;
    }

    /** The content id of a mask of {@code shape} with packed bytes {@code packed}. */
    public static String idOf(long[] shape, byte[] packed) {
        ByteBuffer prefix = ByteBuffer.allocate(1 + 8 * shape.length); // big endian by default
        prefix.put((byte) shape.length);
        for (long d : shape) {
            prefix.putLong(d);
        }
        MessageDigest sha = sha256();
        sha.update(prefix.array());
        sha.update(packed);
        return Hex.encode(sha.digest());
    }

    static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is required of every Java platform", e);
        }
    }

    private static int[] trueIndices(boolean[] bits) {
        int count = 0;
        for (boolean b : bits) {
            count += b ? 1 : 0;
        }
        int[] out = new int[count];
        int k = 0;
        for (int i = 0; i < bits.length; i++) {
            if (bits[i]) {
                out[k++] = i;
            }
        }
        return out;
    }

    public long[] shape() {
        return shape.clone();
    }

    /** Row-major flags. */
    public boolean[] bits() {
        return bits.clone();
    }

    /** Packed bytes, as they travel. */
    public byte[] packed() {
        return packed.clone();
    }

    /** Content id (64 lowercase hex characters). */
    public String id() {
        return id;
    }

    /** Row-major flat positions of the true flags. */
    public int[] indices() {
        return indices.clone();
    }

    /** Number of true flags: how many values a sparse tensor under this mask carries. */
    public int count() {
        return indices.length;
    }

    int[] indicesView() {
        return indices;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Mask m && m.id.equals(id);
    }

    @Override
    public int hashCode() {
        return id.hashCode();
    }

    @Override
    public String toString() {
        return "Mask(" + Arrays.toString(shape) + ", " + count() + " set, id " + id.substring(0, 12) + ")";
    }
}
