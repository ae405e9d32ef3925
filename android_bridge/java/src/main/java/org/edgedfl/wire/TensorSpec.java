package org.edgedfl.wire;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * What a receiver accepts, checked before anything touches a model (Python's {@code TensorSpec}).
 *
 * <p>Exact names and dense shapes, allowed dtypes (numpy spelling: "float16", "float32",
 * "int8"), optional bounds on max |x| and the L2 norm of every tensor, and on the body's size.
 * Unlike Python, the norm bounds are one value for all tensors (no per-name table): a phone
 * receives one adapter's B matrices, whose bounds do not differ by name. Finiteness is always
 * checked, spec or not, because a NaN that reaches an average poisons every neighbour.
 *
 * @param shapes expected tensor name -> dense shape
 * @param dtypes allowed dtype names
 * @param maxAbs largest |x| per element, or null
 * @param maxL2 largest L2 norm per tensor, or null
 * @param maxTotalBytes largest encoded body, or null
 * @param allowMissing whether expected tensors may be absent
 * @param allowExtra whether tensors not in {@code shapes} may be present
 */
public record TensorSpec(
        Map<String, long[]> shapes,
        Set<String> dtypes,
        Double maxAbs,
        Double maxL2,
        Long maxTotalBytes,
        boolean allowMissing,
        boolean allowExtra) {

    /** What the codec sends. */
    public static final Set<String> WIRE_DTYPES = Set.of("float16", "float32", "int8");

    public TensorSpec {
        shapes = new LinkedHashMap<>(shapes);
        dtypes = Set.copyOf(dtypes);
        if ((maxAbs != null && !(maxAbs >= 0)) || (maxL2 != null && !(maxL2 >= 0))
                || (maxTotalBytes != null && maxTotalBytes < 0)) {
            throw new IllegalArgumentException("TensorSpec: bounds must be >= 0");
        }
    }

    /** A spec expecting exactly these names and shapes, wire dtypes, no norm bounds. */
    public static TensorSpec of(Map<String, long[]> shapes) {
        return new TensorSpec(shapes, WIRE_DTYPES, null, null, null, false, false);
    }

    /** Missing and unexpected names, both listed in one error. */
    void checkNames(Collection<String> names) {
        Set<String> present = new TreeSet<>(names);
        List<String> problems = new ArrayList<>();
        if (!allowMissing) {
            Set<String> missing = new TreeSet<>(shapes.keySet());
            missing.removeAll(present);
            if (!missing.isEmpty()) {
                problems.add("missing tensors " + missing);
            }
        }
        if (!allowExtra) {
            Set<String> extra = new TreeSet<>(present);
            extra.removeAll(shapes.keySet());
            if (!extra.isEmpty()) {
                problems.add("unexpected tensors " + extra);
            }
        }
        if (!problems.isEmpty()) {
            throw new WireException.TensorValidation(String.join("; ", problems));
        }
    }

    /** dtype and dense shape of one tensor, from a header, before any data is read. */
    void checkEntry(String name, String dtype, long[] shape) {
        if (!dtypes.contains(dtype)) {
            throw new WireException.TensorValidation("tensor '" + name + "': dtype " + dtype
                    + " not allowed (allowed: " + new TreeSet<>(dtypes) + ")");
        }
        long[] expected = shapes.get(name);
        if (expected != null && !Arrays.equals(expected, shape)) {
            throw new WireException.TensorValidation("tensor '" + name + "': shape " + Arrays.toString(shape)
                    + ", expected " + Arrays.toString(expected));
        }
    }

    void checkTotalBytes(long total) {
        if (maxTotalBytes != null && total > maxTotalBytes) {
            throw new WireException.TensorValidation(
                    "tensors total " + total + " bytes, limit " + maxTotalBytes);
        }
    }

    /**
     * Finiteness (always) and, with a spec, the norm bounds, on the values that were sent.
     * Zeros outside a sparse mask change neither, so the sent values stand for the dense tensor.
     */
    static void checkValues(String name, float[] values, TensorSpec spec) {
        check(name, values.length, i -> values[i], spec);
    }

    /** {@link #checkValues(String, float[], TensorSpec)} for F64 tensors (no narrowing to float). */
    static void checkValues(String name, double[] values, TensorSpec spec) {
        check(name, values.length, i -> values[i], spec);
    }

    private static void check(String name, int n, java.util.function.IntToDoubleFunction at, TensorSpec spec) {
        double sumsq = 0;
        double peak = 0;
        int nan = 0;
        int inf = 0;
        for (int i = 0; i < n; i++) {
            double v = at.applyAsDouble(i);
            if (Double.isNaN(v)) {
                nan++;
            } else if (Double.isInfinite(v)) {
                inf++;
            } else {
                sumsq += v * v;
                peak = Math.max(peak, Math.abs(v));
            }
        }
        if (nan + inf > 0) {
            throw new WireException.TensorValidation(
                    "tensor '" + name + "': " + nan + " NaN and " + inf + " infinite values");
        }
        if (spec == null) {
            return;
        }
        if (spec.maxL2 != null && Math.sqrt(sumsq) > spec.maxL2) {
            throw new WireException.TensorValidation(
                    "tensor '" + name + "': L2 norm " + Math.sqrt(sumsq) + " exceeds " + spec.maxL2);
        }
        if (spec.maxAbs != null && peak > spec.maxAbs) {
            throw new WireException.TensorValidation(
                    "tensor '" + name + "': max |x| " + peak + " exceeds " + spec.maxAbs);
        }
    }
}
