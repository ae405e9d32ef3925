package org.edgedfl.wire;

/** How update values travel: fp16 (the default), int8 with a per-tensor fp32 scale, or fp32. */
public enum Precision {
    FP16(DType.F16),
    INT8(DType.I8),
    FP32(DType.F32);

    private final DType wireDtype;

    Precision(DType wireDtype) {
        this.wireDtype = wireDtype;
    }

    /** The safetensors dtype of the transmitted values. */
    public DType wireDtype() {
        return wireDtype;
    }

    /** The Python spelling ("fp16", "int8", "fp32"). */
    public String pythonName() {
        return name().toLowerCase(java.util.Locale.ROOT);
    }

    /** The precision whose values travel as {@code dtype}, or null. */
    public static Precision ofWireDtype(DType dtype) {
        for (Precision p : values()) {
            if (p.wireDtype == dtype) {
                return p;
            }
        }
        return null;
    }

    /** Parse "fp16" / "int8" / "fp32". */
    public static Precision parse(String name) {
        for (Precision p : values()) {
            if (p.pythonName().equals(name)) {
                return p;
            }
        }
        throw new IllegalArgumentException("precision=" + name + ": must be one of fp16, int8, fp32");
    }
}
