package org.edgedfl.wire;

import java.util.Arrays;

/**
 * A dense float32 tensor: what a decoded update hands to a model, and what an encoder takes.
 *
 * @param shape dense dimensions
 * @param values row-major values, {@code prod(shape)} of them
 */
public record FloatTensor(long[] shape, float[] values) {
    public FloatTensor {
        if (Shapes.numel(shape) != values.length) {
            throw new IllegalArgumentException(
                    "shape " + Arrays.toString(shape) + " does not hold " + values.length + " values");
        }
        shape = shape.clone();
        values = values.clone();
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    @Override
    public float[] values() {
        return values.clone();
    }

    /** Bitwise equality (NaN equals NaN of the same bits; 0.0 and -0.0 differ). */
    @Override
    public boolean equals(Object o) {
        if (!(o instanceof FloatTensor t) || !Arrays.equals(t.shape, shape) || t.values.length != values.length) {
            return false;
        }
        for (int i = 0; i < values.length; i++) {
            if (Float.floatToRawIntBits(values[i]) != Float.floatToRawIntBits(t.values[i])) {
                return false;
            }
        }
        return true;
    }

    @Override
    public int hashCode() {
        return 31 * Arrays.hashCode(shape) + Arrays.hashCode(values);
    }

    @Override
    public String toString() {
        return "FloatTensor(" + Arrays.toString(shape) + ")";
    }
}
