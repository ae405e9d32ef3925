package org.edgedfl.wire;

import java.security.PrivateKey;
import java.util.regex.Pattern;

/** An Ed25519 private key with the key id that receivers know it by (Python's {@code Signer}). */
public final class Signer {
    static final Pattern KEY_ID = Pattern.compile("[A-Za-z0-9._-]{1,64}");

    private final PrivateKey key;
    private final byte[] publicRaw;
    private final String keyId;

    private Signer(PrivateKey key, byte[] publicRaw, String keyId) {
        this.key = key;
        this.publicRaw = publicRaw;
        this.keyId = keyId;
    }

    /**
     * A signer from its 32-byte private seed (deterministic; key files and tests).
     *
     * @param keyId 1..64 chars of {@code [A-Za-z0-9._-]}, or null for the key's fingerprint
     */
    public static Signer fromSeed(byte[] seed, String keyId) {
        byte[] publicRaw = Ed25519.publicKeyOfSeed(seed);
        String id = keyId != null ? checkKeyId(keyId) : Ed25519.fingerprint(publicRaw);
        return new Signer(Ed25519.privateKey(seed), publicRaw, id);
    }

    static String checkKeyId(String keyId) {
        if (keyId == null || !KEY_ID.matcher(keyId).matches()) {
            throw new IllegalArgumentException("key_id=" + keyId + ": must be 1..64 characters of [A-Za-z0-9._-]");
        }
        return keyId;
    }

    public String keyId() {
        return keyId;
    }

    /** The raw 32-byte public key, to hand to peers' key rings. */
    public byte[] publicBytes() {
        return publicRaw.clone();
    }

    /** 64-byte signature of {@code data}. */
    public byte[] sign(byte[] data) {
        return Ed25519.sign(key, data);
    }

    @Override
    public String toString() { // never show key material
        return "Signer(key_id=" + keyId + ")";
    }
}
