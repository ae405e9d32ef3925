package org.edgedfl.wire;

/**
 * The safetensors dtypes a body may hold (BF16 and the 8-bit floats are refused, as in Python).
 *
 * <p>Declaration order matters: it is the order of the Rust safetensors {@code Dtype} enum, and
 * its writer lays tensors out by that enum <em>descending</em>, then by name. Sorting by size
 * alone is not enough: F32, U32 and I32 share a size and come out in that order.
 */
public enum DType {
    BOOL(1),
    U8(1),
    I8(1),
    I16(2),
    U16(2),
    F16(2),
    I32(4),
    U32(4),
    F32(4),
    F64(8),
    I64(8),
    U64(8);

    private final int itemSize;

    DType(int itemSize) {
        this.itemSize = itemSize;
    }

    /** Bytes per element. */
    public int itemSize() {
        return itemSize;
    }

    /** Whether the values are floats (and so must be finite on the wire). */
    public boolean isFloat() {
        return this == F16 || this == F32 || this == F64;
    }

    /** The dtype named {@code name} in a safetensors header, or null if not supported. */
    public static DType fromName(String name) {
        for (DType d : values()) {
            if (d.name().equals(name)) {
                return d;
            }
        }
        return null;
    }
}
