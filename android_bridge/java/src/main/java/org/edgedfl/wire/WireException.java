package org.edgedfl.wire;

/**
 * Root of every error this codec raises on purpose: bytes from the wire were rejected.
 *
 * <p>The tree mirrors the wire section of Python's {@code edgedfl.errors}, one nested class per
 * Python class, so a Java peer and a Python peer reject the same bytes with the same class:
 *
 * <pre>
 * WireException                  (IllegalArgumentException, as WireError is a ValueError)
 * ├── MalformedMessage           cannot be parsed (truncated, bad header, bad JSON)
 * ├── SchemaVersion              unknown wire schema version
 * ├── Integrity                  content hash does not match the body
 * ├── Signature                  signature missing or does not verify
 * │   └── UnknownSigner          signed by a key nobody configured
 * ├── TensorValidation           names, dtypes, shapes, finiteness, norms
 * ├── UnknownMask                sparse update refers to a mask not (yet) held
 * ├── PayloadTooLarge            over a size limit
 * └── Chunk                      chunk out of bounds or inconsistent with its siblings
 * </pre>
 *
 * <p>Unchecked, because a receiver handles all of them the same way (drop the message, maybe
 * answer with an error envelope) and a checked exception on every decode call would only be
 * rethrown. {@link #pythonName()} gives the matching Python class name, for error envelopes and
 * for tests that compare both codecs.
 */
public class WireException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public WireException(String message) {
        super(message);
    }

    /** Name of the matching class in Python's {@code edgedfl.errors}. */
    public String pythonName() {
        return "WireError";
    }

    /** The bytes cannot be parsed: truncated, bad magic, bad JSON, bad or unknown fields. */
    public static class MalformedMessage extends WireException {
        private static final long serialVersionUID = 1L;

        public MalformedMessage(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "MalformedMessage";
        }
    }

    /** The envelope's version byte names a schema this codec does not speak. */
    public static class SchemaVersion extends WireException {
        private static final long serialVersionUID = 1L;

        public SchemaVersion(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "SchemaVersionError";
        }
    }

    /** A body or a reassembled message does not match its sha256. */
    public static class Integrity extends WireException {
        private static final long serialVersionUID = 1L;

        public Integrity(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "IntegrityError";
        }
    }

    /** A signature is missing where one is required, or does not verify. */
    public static class Signature extends WireException {
        private static final long serialVersionUID = 1L;

        public Signature(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "SignatureError";
        }
    }

    /** Signed by a key id the receiver's key ring does not hold. */
    public static class UnknownSigner extends Signature {
        private static final long serialVersionUID = 1L;

        public UnknownSigner(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "UnknownSigner";
        }
    }

    /** Tensor names, dtypes, shapes, finiteness or norms refused. */
    public static class TensorValidation extends WireException {
        private static final long serialVersionUID = 1L;

        public TensorValidation(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "TensorValidationError";
        }
    }

    /** A sparse update refers to a mask id the receiver does not hold (yet). */
    public static class UnknownMask extends WireException {
        private static final long serialVersionUID = 1L;

        public UnknownMask(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "UnknownMask";
        }
    }

    /** A claimed or actual size is over a {@link Limits} bound. */
    public static class PayloadTooLarge extends WireException {
        private static final long serialVersionUID = 1L;

        public PayloadTooLarge(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "PayloadTooLarge";
        }
    }

    /** A chunk is malformed, out of bounds, or disagrees with its siblings. */
    public static class Chunk extends WireException {
        private static final long serialVersionUID = 1L;

        public Chunk(String message) {
            super(message);
        }

        @Override
        public String pythonName() {
            return "ChunkError";
        }
    }
}
