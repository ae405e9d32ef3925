package org.edgedfl.wire;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * One tensor of a safetensors body as it travels: dtype, shape and little-endian data bytes.
 *
 * <p>Keeping the bytes (rather than decoded numbers) is what lets a decode followed by an
 * encode reproduce a message byte for byte, NaN payloads and negative zeros included.
 * Immutable: the constructor and the accessors copy.
 */
public final class RawTensor {
    private final DType dtype;
    private final long[] shape;
    private final byte[] data;

    /**
     * @param dtype element type
     * @param shape dimensions, each {@code >= 0}
     * @param data {@code prod(shape) * dtype.itemSize()} little-endian bytes
     */
    public RawTensor(DType dtype, long[] shape, byte[] data) {
        this.dtype = dtype;
        this.shape = shape.clone();
        long n = Shapes.numel(shape);
        if (n < 0 || n * dtype.itemSize() != data.length) {
            throw new IllegalArgumentException("tensor " + dtype + Arrays.toString(shape) + " needs "
                    + (n * dtype.itemSize()) + " bytes, got " + data.length);
        }
        this.data = data.clone();
    }

    /** Float values stored as {@code dtype} (F16 rounds to nearest even, F32 is exact). */
    public static RawTensor ofFloats(DType dtype, long[] shape, float[] values) {
        ByteBuffer buf = ByteBuffer.allocate(values.length * dtype.itemSize()).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) {
            switch (dtype) {
                case F16 -> buf.putShort(Half.fromFloat(v));
                case F32 -> buf.putFloat(v);
                case F64 -> buf.putDouble(v);
                default -> throw new IllegalArgumentException("ofFloats: " + dtype + " is not a float dtype");
            }
        }
        return new RawTensor(dtype, shape, buf.array());
    }

    /** Signed bytes as an I8 tensor. */
    public static RawTensor ofInt8(long[] shape, byte[] values) {
        return new RawTensor(DType.I8, shape, values);
    }

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    /** Number of elements. */
    public int numel() {
        return data.length / dtype.itemSize();
    }

    /** A copy of the little-endian data bytes. */
    public byte[] data() {
        return data.clone();
    }

    /** Bytes of data. */
    public int nbytes() {
        return data.length;
    }

    /** Values widened to float: exact for F16, F32, I8, U8, BOOL, I16, U16; rounded otherwise. */
    public float[] toFloats() {
        ByteBuffer buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[numel()];
        for (int i = 0; i < out.length; i++) {
            out[i] = switch (dtype) {
                case F16 -> Half.toFloat(buf.getShort());
                case F32 -> buf.getFloat();
                case F64 -> (float) buf.getDouble();
                case I8 -> buf.get();
                case U8, BOOL -> buf.get() & 0xff;
                case I16 -> buf.getShort();
                case U16 -> buf.getShort() & 0xffff;
                case I32 -> buf.getInt();
                case U32 -> buf.getInt() & 0xffffffffL;
                case I64 -> buf.getLong();
                case U64 -> unsignedToFloat(buf.getLong());
            };
        }
        return out;
    }

    /** Values of an F64 tensor, unrounded. */
    public double[] toDoubles() {
        if (dtype != DType.F64) {
            throw new IllegalStateException("toDoubles: " + dtype + " is not F64");
        }
        double[] out = new double[numel()];
        littleEndian().asDoubleBuffer().get(out);
        return out;
    }

    private static float unsignedToFloat(long v) {
        return v >= 0 ? v : (float) ((v >>> 1) * 2.0);
    }

    ByteBuffer littleEndian() {
        return ByteBuffer.wrap(data).asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof RawTensor t && t.dtype == dtype && Arrays.equals(t.shape, shape)
                && Arrays.equals(t.data, data);
    }

    @Override
    public int hashCode() {
        return 31 * (31 * dtype.hashCode() + Arrays.hashCode(shape)) + Arrays.hashCode(data);
    }

    @Override
    public String toString() {
        return "RawTensor(" + dtype + Arrays.toString(shape) + ")";
    }
}
