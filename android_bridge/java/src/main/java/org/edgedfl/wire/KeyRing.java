package org.edgedfl.wire;

import java.security.PublicKey;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;

/**
 * Public keys a receiver trusts: key id -> public key, optionally limited to some senders, so
 * one stolen-but-valid key cannot speak for every node (Python's {@code KeyRing}).
 */
public final class KeyRing {
    private record Trusted(PublicKey key, Set<String> senders) {}

    private final Map<String, Trusted> keys = new HashMap<>();

    /** Trust {@code rawPublic} (32 bytes) under {@code keyId} for any sender. */
    public KeyRing add(String keyId, byte[] rawPublic) {
        return add(keyId, rawPublic, null);
    }

    /** Trust {@code rawPublic} under {@code keyId}, only for {@code senders} if not null. */
    public synchronized KeyRing add(String keyId, byte[] rawPublic, Set<String> senders) {
        Signer.checkKeyId(keyId);
        keys.put(keyId, new Trusted(Ed25519.publicKey(rawPublic), senders == null ? null : Set.copyOf(senders)));
        return this;
    }

    /** A ring trusting the public halves of {@code signers}. */
    public static KeyRing of(Signer... signers) {
        KeyRing ring = new KeyRing();
        for (Signer s : signers) {
            ring.add(s.keyId(), s.publicBytes());
        }
        return ring;
    }

    public synchronized void remove(String keyId) {
        keys.remove(keyId);
    }

    public synchronized boolean contains(String keyId) {
        return keys.containsKey(keyId);
    }

    /**
     * Raise unless {@code signature} is {@code keyId}'s valid signature over {@code data}.
     *
     * @param sender the envelope's sender, checked against the key's allowed senders (or null)
     * @throws WireException.UnknownSigner the key id is not in the ring
     * @throws WireException.Signature the signature does not verify, or the key may not speak for
     *     {@code sender}
     */
    public void verify(String keyId, byte[] signature, byte[] data, String sender) {
        Trusted trusted;
        synchronized (this) {
            trusted = keys.get(keyId);
        }
        if (trusted == null) {
            throw new WireException.UnknownSigner("signed by unknown key id '" + keyId + "'");
        }
        if (!Ed25519.verify(trusted.key(), signature, data)) {
            throw new WireException.Signature("signature by key '" + keyId + "' does not verify");
        }
        if (sender != null && trusted.senders() != null && !trusted.senders().contains(sender)) {
            throw new WireException.Signature("key '" + keyId + "' may not sign for sender '" + sender + "'");
        }
    }
}
