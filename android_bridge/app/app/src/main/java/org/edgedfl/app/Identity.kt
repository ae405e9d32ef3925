package org.edgedfl.app

import java.io.File
import java.io.FileOutputStream
import java.security.SecureRandom
import org.edgedfl.wire.Hex
import org.edgedfl.wire.KeyRing
import org.edgedfl.wire.Signer
import org.json.JSONArray
import org.json.JSONObject

/** One trusted key: its id, its raw 32-byte public key, and the nodes it may sign for (null: any). */
class KeyEntry(val keyId: String, val publicKey: ByteArray, val senders: Set<String>?)

/**
 * The device's signing key and the key rings it checks others against (edgedfl/wire/signing.py
 * load_or_create_signer, read_keyring; FORMAT.md 5.3), in the same file formats as the Python
 * node, so a key file or a key ring moves between a phone and a Python node unchanged.
 */
object Identity {
    /** SwarmConfig.admission: who may take part. */
    val ADMISSIONS = listOf("tofu", "keyring", "open")

    /**
     * The device key in [file] (its 32-byte Ed25519 seed as 64 hex chars and a newline), created
     * on first use, owner-only, written atomically; its key id is the public key's fingerprint.
     */
    fun loadOrCreateSigner(file: File): Signer {
        if (file.isFile) {
            val seed = try {
                Hex.decode(file.readText().trim())
            } catch (e: IllegalArgumentException) {
                throw IllegalStateException("$file: not an edgedfl device key (${e.message})")
            }
            check(seed.size == 32) { "$file: not an edgedfl device key (a ${seed.size}-byte seed, expected 32)" }
            return Signer.fromSeed(seed, null)
        }
        val seed = ByteArray(32)
        SecureRandom().nextBytes(seed)
        writeAtomically(file, (Hex.encode(seed) + "\n").toByteArray(Charsets.US_ASCII))
        return Signer.fromSeed(seed, null)
    }

    /** A key ring file: `{"keys": {key_id: {"public": hex, "senders": [node, ...]}}}` (signing.py read_keyring). */
    fun readKeyRing(file: File): KeyRing =
        try {
            ringOf(parseEntries(JSONObject(file.readText()).getJSONObject("keys")))
        } catch (e: Exception) {
            throw IllegalStateException("key ring $file: ${e.message}", e)
        }

    fun ringOf(entries: Collection<KeyEntry>): KeyRing {
        val ring = KeyRing()
        for (e in entries) ring.add(e.keyId, e.publicKey, e.senders)
        return ring
    }

    /** `{key_id: {"public": hex, "senders": [...]}}`: KeyRing.entries() in Python, the pins file's form. */
    fun parseEntries(keys: JSONObject): List<KeyEntry> {
        val out = ArrayList<KeyEntry>()
        for (keyId in keys.keys()) {
            val entry = keys.getJSONObject(keyId)
            val senders = entry.optJSONArray("senders")?.let { a -> (0 until a.length()).map { a.getString(it) }.toSet() }
            out.add(KeyEntry(keyId, Hex.decode(entry.getString("public")), senders))
        }
        return out
    }

    fun entriesJson(entries: Collection<KeyEntry>): JSONObject {
        val keys = JSONObject()
        for (e in entries.sortedBy { it.keyId }) {
            val entry = JSONObject().put("public", Hex.encode(e.publicKey))
            e.senders?.let { entry.put("senders", JSONArray(it.sorted())) }
            keys.put(e.keyId, entry)
        }
        return keys
    }

    /** Write [file] through a temporary file and a rename, readable by this app's user only. */
    fun writeAtomically(file: File, bytes: ByteArray) {
        file.parentFile?.mkdirs()
        val tmp = File(file.path + ".tmp")
        tmp.delete()
        check(tmp.createNewFile()) { "cannot create $tmp" }
        // the app's files folder is private already; owner-only besides
        tmp.setReadable(false, false)
        tmp.setReadable(true, true)
        tmp.setWritable(false, false)
        tmp.setWritable(true, true)
        FileOutputStream(tmp).use { out ->
            out.write(bytes)
            out.fd.sync()
        }
        check(tmp.renameTo(file)) { "cannot move $tmp to $file" }
    }
}
