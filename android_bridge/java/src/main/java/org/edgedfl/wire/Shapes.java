package org.edgedfl.wire;

import java.util.List;

/** Shape helpers shared by the body codecs. */
final class Shapes {
    private Shapes() {}

    /** Product of the dims, or -1 if it overflows a long (no real tensor is that large). */
    static long numel(long[] shape) {
        long n = 1;
        for (long d : shape) {
            if (d < 0) {
                return -1;
            }
            try {
                n = Math.multiplyExact(n, d);
            } catch (ArithmeticException e) {
                return -1;
            }
        }
        return n;
    }

    /** A JSON list of non-negative ints as a shape, or null if it is not one. */
    static long[] fromJson(Object value) {
        if (!(value instanceof List<?> list)) {
            return null;
        }
        long[] shape = new long[list.size()];
        for (int i = 0; i < shape.length; i++) {
            if (!(list.get(i) instanceof Long d) || d < 0) {
                return null;
            }
            shape[i] = d;
        }
        return shape;
    }
}
