package org.edgedfl.wire;

import java.security.GeneralSecurityException;
import java.security.InvalidKeyException;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.PrivateKey;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.interfaces.EdECPublicKey;
import java.security.spec.NamedParameterSpec;
import java.security.spec.PKCS8EncodedKeySpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.Arrays;

/**
 * Ed25519 (RFC 8032) through {@code java.security} (Java 15+, Android API 33+): raw 32-byte keys
 * in and out, as the wire format and Python's {@code cryptography} use them.
 *
 * <p>The JCA speaks DER, so raw keys are wrapped in the fixed X.509 / PKCS#8 prefixes of RFC 8410.
 * On older Android, register a provider that implements "Ed25519" (Conscrypt, BouncyCastle)
 * before use; nothing else changes.
 */
public final class Ed25519 {
    /** Bytes of a signature. */
    public static final int SIGNATURE_BYTES = 64;
    private static final byte[] X509_PREFIX = Hex.decode("302a300506032b6570032100");
    private static final byte[] PKCS8_PREFIX = Hex.decode("302e020100300506032b657004220420");

    private Ed25519() {}

    /** A public key from its raw 32 bytes. */
    public static PublicKey publicKey(byte[] raw) {
        if (raw.length != 32) {
            throw new IllegalArgumentException("Ed25519 public key: expected 32 bytes, got " + raw.length);
        }
        try {
            return KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(concat(X509_PREFIX, raw)));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("Ed25519 is not available on this platform", e);
        }
    }

    /** A private key from its raw 32-byte seed. */
    public static PrivateKey privateKey(byte[] seed) {
        if (seed.length != 32) {
            throw new IllegalArgumentException("Ed25519 seed: expected 32 bytes, got " + seed.length);
        }
        try {
            return KeyFactory.getInstance("Ed25519").generatePrivate(new PKCS8EncodedKeySpec(concat(PKCS8_PREFIX, seed)));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("Ed25519 is not available on this platform", e);
        }
    }

    /**
     * The raw public key of {@code seed}.
     *
     * <p>The JCA has no "public key of this private key" call for EdDSA; a key pair generator fed
     * the seed as its randomness derives it (the generator draws exactly the 32 seed bytes).
     */
    public static byte[] publicKeyOfSeed(byte[] seed) {
        if (seed.length != 32) {
            throw new IllegalArgumentException("Ed25519 seed: expected 32 bytes, got " + seed.length);
        }
        try {
            KeyPairGenerator gen = KeyPairGenerator.getInstance("Ed25519");
            gen.initialize(NamedParameterSpec.ED25519, new FixedRandom(seed));
            KeyPair pair = gen.generateKeyPair();
            return rawPublic(pair.getPublic());
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("Ed25519 is not available on this platform", e);
        }
    }

    /** The raw 32-byte encoding of a public key (little-endian y, x's parity in the top bit). */
    public static byte[] rawPublic(PublicKey key) {
        if (key instanceof EdECPublicKey ed) {
            byte[] yBigEndian = ed.getPoint().getY().toByteArray();
            byte[] out = new byte[32];
            for (int i = 0; i < Math.min(32, yBigEndian.length); i++) {
                out[i] = yBigEndian[yBigEndian.length - 1 - i];
            }
            if (ed.getPoint().isXOdd()) {
                out[31] |= (byte) 0x80;
            }
            return out;
        }
        byte[] der = key.getEncoded(); // X.509: the raw key is the last 32 bytes
        return Arrays.copyOfRange(der, der.length - 32, der.length);
    }

    /** Sign {@code data} (deterministic: the same key and data give the same signature). */
    public static byte[] sign(PrivateKey key, byte[] data) {
        try {
            java.security.Signature s = java.security.Signature.getInstance("Ed25519");
            s.initSign(key);
            s.update(data);
            return s.sign();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("Ed25519 signing failed", e);
        }
    }

    /** Whether {@code signature} is {@code key}'s valid signature of {@code data}. */
    public static boolean verify(PublicKey key, byte[] signature, byte[] data) {
        try {
            java.security.Signature s = java.security.Signature.getInstance("Ed25519");
            s.initVerify(key);
            s.update(data);
            return s.verify(signature);
        } catch (InvalidKeyException | java.security.SignatureException e) {
            return false; // a malformed signature is simply not valid
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("Ed25519 is not available on this platform", e);
        }
    }

    /** Default key id: first 16 hex chars of sha256(raw public key), as Python's key_fingerprint. */
    public static String fingerprint(byte[] rawPublic) {
        return Hex.encode(Mask.sha256().digest(rawPublic)).substring(0, 16);
    }

    private static byte[] concat(byte[] a, byte[] b) {
        byte[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    /** "Randomness" that hands out the seed: how {@link #publicKeyOfSeed} steers the generator. */
    private static final class FixedRandom extends SecureRandom {
        private static final long serialVersionUID = 1L;
        private final byte[] seed;

        FixedRandom(byte[] seed) {
            this.seed = seed.clone();
        }

        @Override
        public void nextBytes(byte[] bytes) {
            if (bytes.length != seed.length) {
                throw new IllegalStateException("unexpected draw of " + bytes.length + " bytes");
            }
            System.arraycopy(seed, 0, bytes, 0, bytes.length);
        }
    }

}
