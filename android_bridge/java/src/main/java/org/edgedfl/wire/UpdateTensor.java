package org.edgedfl.wire;

import java.util.Arrays;

/**
 * One tensor of an {@code update/1} body exactly as it travels (before densification).
 *
 * <p>Holding the wire form (values in their wire dtype, the int8 scale's bits, the mask id) is
 * what lets a relay or a test decode and re-encode an update byte for byte; {@link
 * Codec#decodeUpdate} turns these into dense {@link FloatTensor}s for a model.
 *
 * @param name tensor name (no {@code "#scale"} in it)
 * @param shape dense shape
 * @param maskId id of the mask of a sparse tensor, or null for a dense one
 * @param values F16, F32 or I8 values: the dense tensor, or 1-D values at the mask's true
 *     positions in row-major order
 * @param scale the F32 {@code [1]} scale of I8 values, else null
 */
public record UpdateTensor(String name, long[] shape, String maskId, RawTensor values, RawTensor scale) {
    public UpdateTensor {
        shape = shape.clone();
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** How the values travel. */
    public Precision precision() {
        return Precision.ofWireDtype(values.dtype());
    }

    public boolean isSparse() {
        return maskId != null;
    }

    /** The transmitted values as float32 ({@code q * scale} in fp32 for int8, as Python computes it). */
    public float[] transmittedValues() {
        float[] v = values.toFloats();
        if (scale != null) {
            float s = scale.toFloats()[0];
            for (int i = 0; i < v.length; i++) {
                v[i] = v[i] * s;
            }
        }
        return v;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof UpdateTensor t && t.name.equals(name) && Arrays.equals(t.shape, shape)
                && java.util.Objects.equals(t.maskId, maskId) && t.values.equals(values)
                && java.util.Objects.equals(t.scale, scale);
    }

    @Override
    public int hashCode() {
        return name.hashCode() * 31 + values.hashCode();
    }

    @Override
    public String toString() {
        return "UpdateTensor(" + name + ", " + Arrays.toString(shape) + ", " + values.dtype()
                + (maskId != null ? ", mask " + maskId.substring(0, 12) : "") + ")";
    }
}
