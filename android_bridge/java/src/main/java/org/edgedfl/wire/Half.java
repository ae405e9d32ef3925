package org.edgedfl.wire;

/**
 * IEEE 754 binary16 conversions, as numpy does them.
 *
 * <p>Java 17 has no {@code Float.floatToFloat16} (that arrived in Java 20) and Android's {@code
 * android.util.Half} does not exist on a desktop JVM, so the bits are done here. Narrowing rounds
 * to nearest, ties to even, with subnormals and overflow to infinity, exactly like numpy's {@code
 * astype(np.float16)}; the cross test against Python feeds it random and edge-case values.
 */
public final class Half {
    /** Largest finite binary16 value. */
    public static final float MAX_VALUE = 65504.0f;

    private Half() {}

    /** The binary16 bits nearest to {@code f} (ties to even). */
    public static short fromFloat(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 16) & 0x8000;
        int exp = (bits >>> 23) & 0xff;
        int mant = bits & 0x7fffff;
        if (exp == 0xff) { // infinity or NaN (kept quiet, top payload bits kept)
            return (short) (sign | 0x7c00 | (mant != 0 ? 0x200 | (mant >>> 13) : 0));
        }
        int e = exp - 127 + 15;
        if (e >= 0x1f) {
            return (short) (sign | 0x7c00);
        }
        if (e <= 0) { // binary16 subnormal (or zero)
            if (e < -10) {
                return (short) sign; // below half the smallest subnormal
            }
            int full = mant | 0x800000;
            int shift = 14 - e;
            int half = full >>> shift;
            int rem = full & ((1 << shift) - 1);
            int halfway = 1 << (shift - 1);
            if (rem > halfway || (rem == halfway && (half & 1) == 1)) {
                half++; // may carry into the smallest normal: still the right bits
            }
            return (short) (sign | half);
        }
        int half = (e << 10) | (mant >>> 13);
        int rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (half & 1) == 1)) {
            half++; // a carry out of the mantissa bumps the exponent, up to infinity
        }
        return (short) (sign | half);
    }

    /** The float value of binary16 bits {@code h} (exact: every binary16 is a float). */
    public static float toFloat(short h) {
        int bits = h & 0xffff;
        int sign = (bits & 0x8000) << 16;
        int exp = (bits >>> 10) & 0x1f;
        int mant = bits & 0x3ff;
        if (exp == 0) {
            float v = mant * 0x1p-24f; // exact: mant < 2^10
            return sign != 0 ? -v : v;
        }
        if (exp == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mant << 13));
        }
        return Float.intBitsToFloat(sign | ((exp - 15 + 127) << 23) | (mant << 13));
    }
}
