package org.edgedfl.app

import android.util.Log
import java.io.File
import java.io.IOException
import org.edgedfl.wire.Chunks
import org.edgedfl.wire.Codec
import org.edgedfl.wire.DType
import org.edgedfl.wire.Ed25519
import org.edgedfl.wire.Envelope
import org.edgedfl.wire.FloatTensor
import org.edgedfl.wire.Hex
import org.edgedfl.wire.KeyRing
import org.edgedfl.wire.Limits
import org.edgedfl.wire.Mask
import org.edgedfl.wire.MaskRegistry
import org.edgedfl.wire.Precision
import org.edgedfl.wire.RawTensor
import org.edgedfl.wire.Signer
import org.edgedfl.wire.WireException
import org.json.JSONObject

/** What a protocol topic names: its kind, the node at its end, and the slot of an update or expert. */
class ParsedTopic(val kind: String, val node: String, val slot: Int?, val to: String? = null)

/**
 * Topic names of one swarm (edgedfl/protocol/topics.py). Every topic a node publishes on ends in
 * its own name (an expert too: `expert/<slot>/<node>`), so a broker ACL can let each node write
 * only its own topics.
 */
class Topics(val swarm: String) {
    val base = "edgedfl/$swarm"
    fun presence(node: String) = "$base/presence/$node"
    fun hello(node: String) = "$base/hello/$node"
    fun update(slot: Int, node: String) = "$base/update/$slot/$node"
    fun expert(slot: Int, node: String) = "$base/expert/$slot/$node"
    /** An ack that [node] sends to [to]: the addressee first, the writer's own id last (ACL). */
    fun ack(to: String, node: String) = "$base/ack/$to/$node"
    fun slotUpdates(slot: Int) = "$base/update/$slot/+"
    val allPresence get() = "$base/presence/+"
    val allHello get() = "$base/hello/+"
    val allExperts get() = "$base/expert/+/+"
    /** The acks addressed to [node]: the broker delivers each ack to its addressee alone. */
    fun acksTo(node: String) = "$base/ack/$node/+"

    /** Kind, node and slot of a topic of this swarm (topics.py parse); MalformedMessage for anything else. */
    fun parse(topic: String): ParsedTopic {
        val prefix = "$base/"
        if (!topic.startsWith(prefix)) throw WireException.MalformedMessage("topic $topic is not under $prefix")
        val parts = topic.removePrefix(prefix).split("/")
        val kind = parts[0]
        if (kind == "ack" && parts.size == 3 && NAME.matches(parts[1]) && NAME.matches(parts[2])) {
            return ParsedTopic(kind, parts[2], null, parts[1])
        }
        if (kind in listOf("presence", "hello") && parts.size == 2 && NAME.matches(parts[1])) {
            return ParsedTopic(kind, parts[1], null)
        }
        if (kind in listOf("update", "expert") && parts.size == 3 && NAME.matches(parts[2]) && SLOT.matches(parts[1])
            && parts[1].toLong() <= Int.MAX_VALUE
        ) {
            return ParsedTopic(kind, parts[2], parts[1].toInt())
        }
        throw WireException.MalformedMessage("topic $topic is not a protocol topic")
    }

    companion object {
        private val NAME = Regex("[A-Za-z0-9._-]{1,128}")
        private val SLOT = Regex("0|[1-9][0-9]{0,9}")
    }
}

/** Rejections of edgedfl.errors that the Java codec has no class for, named as Python names them. */
class StaleRound(message: String) : WireException(message) {
    override fun pythonName() = "StaleRound"
}

class NotAMember(message: String) : WireException(message) {
    override fun pythonName() = "NotAMember"
}

class KeyChanged(message: String) : WireException.Signature(message) {
    override fun pythonName() = "KeyChanged"
}

class Peer(val node: String) {
    var online = false
    var profile: JSONObject? = null
    var signature: FloatArray? = null
}

/** An applied neighbour update (or calibration statistics, round 0). */
class Received(val sender: String, val round: Long, val slot: Long, val seq: Long, val tensors: Map<String, FloatTensor>)

class Expert(val slot: Int, val sender: String, val round: Long, val tensors: Map<String, FloatArray>)

private class OutEntry(
    val mid: String, val kind: String, val round: Long, val parts: List<Pair<String, ByteArray>>,
    val receivers: Set<String>,
) {
    val acked = HashSet<String>()
    var lastSent = 0L
    var attempts = 0
    val done get() = acked.containsAll(receivers)
}

private class Answer(val mid: String, val env: Envelope?, val status: String, val error: WireException? = null)

/**
 * The neighbour protocol of edgedfl/protocol/ (receiving.py, sending.py), the part a phone speaks:
 * retained presence with a last will, the retained hello, updates and masks in chunks re-sent until
 * every receiver acknowledged them end to end, acks on the receiver's own topic, deduplication on
 * (sender, round, seq) and one update per (sender, round, slot), stale and too-far-ahead rounds,
 * error envelopes for rejected messages, finished experts (retained, one copy per publisher), and
 * rounds that close on a deadline with a quorum.
 *
 * Identity (FORMAT.md 5.3): every envelope is signed by [signer] (null: admission `open`). With
 * [tofu], a node's key is pinned from its first signed hello (meta["key"], whose fingerprint is the
 * envelope's key_id) into a key ring, kept in `pins.json` in the state folder, and every other
 * message is verified against the pinned keys; a later hello with another key is refused. A given
 * [keyring] (admission `keyring`) is used as it is. Neither: nothing is verified.
 *
 * Differences from the Python endpoint, on purpose: the outbox and the ledger live in memory (a
 * killed app rejoins fresh; its sequence numbers are persisted so they are never reused), and every
 * call runs on the service's one worker thread, as the Python node does.
 */
class PhoneProtocol(
    private val link: MqttLink,
    val swarm: String,
    val me: String,
    stateDir: File,
    private val ackTimeoutMs: Long,
    private val chunkBytes: Int,
    private val signer: Signer? = null,
    keyring: KeyRing? = null,
    private val tofu: Boolean = false,
) {
    val topics = Topics(swarm)
    val masks = MaskRegistry()
    val peers = HashMap<String, Peer>()
    /** Every copy of a finished expert received, by slot and sender (members of a cluster may each publish one). */
    val expertCopies = HashMap<Int, HashMap<String, Expert>>()
    var rejects = 0
        private set
    /** Rejected incoming messages by error class (Python's names, e.g. SignatureError, NotAMember). */
    val rejectsByType = HashMap<String, Int>()
    var currentRound = -1L
        private set

    private val limits = Limits.DEFAULT
    private val reassembler = Chunks.Reassembler()
    private val applied = HashMap<String, Received>() // mid -> update
    private val appliedMasks = HashSet<String>()
    private val onePerRound = HashMap<Triple<String, Long, Long>, String>()
    private val closed = HashSet<Pair<Long, Long>>()
    private val answered = object : LinkedHashMap<String, Answer>() {
        override fun removeEldestEntry(eldest: MutableMap.MutableEntry<String, Answer>?) = size > 4096
    }
    private val outbox = LinkedHashMap<String, OutEntry>()
    private val maskSentTo = HashMap<String, MutableSet<String>>()
    private val followed = HashSet<Int>()
    private val seqFile = File(stateDir, "next_seq")

    /** Who may publish each slot's expert ([admitExperts]); null: not known yet, every copy is kept. */
    private var expertMembers: Map<Int, Set<String>>? = null
    /** The last round of the run's schedule: an expert of a later round is refused. */
    private var expertMaxRound: Long? = null

    /** The keys messages are verified against (null: nothing is verified, admission `open`). */
    private val ring: KeyRing? = if (tofu) (keyring ?: KeyRing()) else keyring
    /** Keys pinned by trust on first use, by key id, each bound to the node(s) it may sign for. */
    private val pins = LinkedHashMap<String, KeyEntry>()
    private val pinsFile = File(stateDir, "pins.json")

    init {
        if (tofu && pinsFile.isFile) { // a restarted app keeps the keys it pinned
            for (e in Identity.parseEntries(JSONObject(pinsFile.readText()))) {
                ring!!.add(e.keyId, e.publicKey, e.senders)
                pins[e.keyId] = e
            }
        }
    }

    /** Masks that reached us from cluster mates, by wire tensor name (the newest set wins). */
    val receivedMasks = HashMap<String, Mask>()

    fun start(slots: Collection<Int>) {
        for (f in listOf(topics.allPresence, topics.allHello, topics.allExperts, topics.acksTo(me))) link.subscribe(f)
        slots.forEach { follow(it) }
        announce(true)
    }

    fun follow(slot: Int) {
        if (followed.add(slot)) link.subscribe(topics.slotUpdates(slot))
    }

    fun unfollow(slot: Int) {
        if (followed.remove(slot)) link.unsubscribe(topics.slotUpdates(slot))
    }

    // -- publishing ----------------------------------------------------------------------------

    private fun nextSeq(): Long {
        val seq = if (seqFile.isFile) seqFile.readText().trim().toLong() else 0L
        seqFile.writeText((seq + 1).toString())
        return seq
    }

    private fun tryPublish(topic: String, payload: ByteArray, retain: Boolean = false): Boolean =
        try {
            link.publish(topic, payload, retain)
            true
        } catch (e: Exception) {
            Log.i(TAG, "$me: publish on $topic failed (${e.message}); will retry")
            false
        }

    fun announce(online: Boolean) {
        tryPublish(topics.presence(me), (if (online) "online" else "offline").toByteArray(), retain = true)
    }

    /**
     * The retained hello: profile JSON in meta["profile"], the task signature as one float32 tensor,
     * and the raw public key this device signs with in meta["key"] (64 hex chars; receivers pin it).
     */
    fun publishHello(profile: Map<String, Any>, signature: FloatArray) {
        val body = Codec.encodeTensors(
            mapOf("signature" to RawTensor.ofFloats(DType.F32, longArrayOf(signature.size.toLong()), signature))
        )
        val meta = HashMap<String, String>()
        meta["profile"] = canonicalJson(profile)
        signer?.let { meta["key"] = Hex.encode(it.publicBytes()) }
        val env = Envelope.of("hello", swarm, me, 0, 0, 0, body, meta)
        tryPublish(topics.hello(me), env.encode(signer), retain = true)
    }

    /**
     * A finished expert of [slot], retained on this phone's own `expert/<slot>/<me>` topic, with dense
     * fp16 tensors (receivers also accept the sparse form).
     */
    fun publishExpert(slot: Int, round: Long, tensors: Map<String, FloatTensor>) {
        val raw = tensors.mapValues { (_, t) -> RawTensor.ofFloats(DType.F16, t.shape(), t.values()) }
        val env = Envelope.of("expert", swarm, me, round, slot.toLong(), 0, Codec.encodeTensors(raw), mapOf("task_hint" to ""))
        val bytes = env.encode(signer)
        require(bytes.size <= link.maxPayload) { "expert of slot $slot is ${bytes.size} bytes: over the broker limit" }
        tryPublish(topics.expert(slot, me), bytes, retain = true)
    }

    /**
     * This phone's update for (round, slot) to [receivers]; tensors named in [masks] travel sparse,
     * and a mask a receiver has not been sent yet goes first (its own reliable message).
     */
    fun publishUpdate(
        round: Long, slot: Int, tensors: Map<String, FloatTensor>, receivers: Collection<String>,
        masks: Map<String, Mask>?, precision: Precision,
    ): String {
        outbox.values.firstOrNull { it.kind == "update" && it.round == round && it.parts.first().first == topics.update(slot, me) }
            ?.let { resend(it, force = true); return it.mid }
        val to = receivers.toSet() - me
        if (!masks.isNullOrEmpty()) {
            val missing = HashSet<String>()
            var neverSent = false
            for (m in masks.values) {
                val sent = maskSentTo["$slot:${m.id()}"]
                if (sent == null) neverSent = true
                missing += to - (sent ?: emptySet())
            }
            if (missing.isNotEmpty() || neverSent) {
                recordAndSend("mask", round, slot, Codec.encodeMasks(masks), emptyMap(), missing)
                for (m in masks.values) maskSentTo.getOrPut("$slot:${m.id()}") { HashSet() } += missing
            }
        }
        return recordAndSend("update", round, slot, Codec.encodeUpdate(tensors, masks ?: emptyMap(), precision), emptyMap(), to)
    }

    private fun recordAndSend(kind: String, round: Long, slot: Int, body: ByteArray, meta: Map<String, String>, receivers: Set<String>): String {
        val seq = nextSeq()
        val mid = "$me/$round/$seq"
        val data = Envelope.of(kind, swarm, me, round, slot.toLong(), seq, body, meta).encode(signer)
        val size = maxOf(512, minOf(chunkBytes, link.maxPayload - Chunks.HEADER_BYTES - 64))
        val topic = topics.update(slot, me)
        val entry = OutEntry(mid, kind, round, Chunks.split(data, size).map { topic to it }, receivers)
        outbox[mid] = entry
        resend(entry, force = true)
        return mid
    }

    private fun resend(e: OutEntry, force: Boolean = false) {
        if (e.done && !force) return
        for ((topic, part) in e.parts) if (!tryPublish(topic, part)) return
        e.lastSent = System.currentTimeMillis()
        e.attempts++
    }

    /** Re-send every message whose acks are overdue (the wait doubles up to 30 s). */
    private fun resendDue() {
        val now = System.currentTimeMillis()
        for (e in outbox.values) {
            if (e.done) continue
            if (e.kind == "update" && e.round < currentRound - STALE_ROUNDS) continue // expired
            val wait = minOf(ackTimeoutMs shl minOf(e.attempts - 1, 8).coerceAtLeast(0), 30_000L)
            if (now - e.lastSent >= wait) resend(e)
        }
    }

    // -- rounds ----------------------------------------------------------------------------------

    fun beginRound(round: Long) {
        if (round > currentRound) currentRound = round
    }

    /**
     * Wait for the neighbours' updates of (round, slot) until all [expected] arrived, or the deadline
     * with at least [quorum] of them; the round is closed either way. Returns (updates, short).
     */
    fun collectRound(round: Long, slot: Int, expected: Set<String>, quorum: Int, deadlineMs: Long): Pair<Map<String, Received>, Boolean> {
        beginRound(round)
        follow(slot)
        val peersExpected = expected - me
        val end = System.currentTimeMillis() + deadlineMs
        while (true) {
            poll(0)
            val have = roundUpdates(round, slot).keys
            if (have.containsAll(peersExpected)) break
            val left = end - System.currentTimeMillis()
            if (left <= 0) break
            poll(minOf(left, 50))
        }
        closed += round to slot.toLong()
        val got = roundUpdates(round, slot).filterKeys { it in peersExpected }
        return got to (got.size < quorum)
    }

    fun roundUpdates(round: Long, slot: Int): Map<String, Received> =
        applied.values.filter { it.round == round && it.slot == slot.toLong() }.associateBy { it.sender }

    // -- receiving ------------------------------------------------------------------------------------

    /** Handle every queued message, waiting up to [timeoutMs] for the first; re-send overdue messages. */
    fun poll(timeoutMs: Long): Int {
        var n = 0
        var wait = timeoutMs
        while (true) {
            val msg = link.receive(wait) ?: break
            wait = 0
            n++
            try {
                handle(msg)
            } catch (e: WireException) {
                reject(e, msg.topic)
            } catch (e: RuntimeException) {
                reject(e, msg.topic) // a bad message never stops the node
            }
        }
        resendDue()
        return n
    }

    private fun reject(e: Exception, topic: String) {
        rejects++
        val type = (e as? WireException)?.pythonName() ?: e.javaClass.simpleName
        rejectsByType[type] = (rejectsByType[type] ?: 0) + 1
        Log.d(TAG, "$me: rejected message on $topic: $type: ${e.message}")
    }

    private fun handle(msg: Incoming) {
        val t = topics.parse(msg.topic) // we only subscribe to our own tree: anything else is counted
        if (t.node == me) return // our own messages, echoed back
        when {
            t.kind == "update" -> onUpdateChunk(msg, t.node, t.slot!!)
            msg.payload.isEmpty() -> return // a cleared retained message
            t.kind == "presence" -> onPresence(t.node, String(msg.payload))
            else -> {
                if (tofu && t.kind == "hello") pinFromHello(msg.payload, t.node)
                val env = Envelope.decode(msg.payload, limits, ring)
                if (env.swarm() != swarm) throw WireException.MalformedMessage("envelope of swarm ${env.swarm()}")
                if (env.sender() != t.node) throw WireException.MalformedMessage("sender ${env.sender()} on ${t.node}'s topic")
                when {
                    t.kind == "hello" && env.kind() == "hello" -> onHello(env)
                    t.kind == "expert" && env.kind() == "expert" -> onExpert(env, t.slot!!)
                    t.kind == "ack" && t.to != me -> Unit // addressed to another node
                    t.kind == "ack" && (env.kind() == "ack" || env.kind() == "error") -> onAck(env)
                    else -> throw WireException.MalformedMessage("a ${env.kind()} envelope on ${msg.topic}")
                }
            }
        }
    }

    /**
     * Trust on first use (receiving.py _pin_from_hello): pin the key a node's first signed hello
     * names in meta["key"], whose fingerprint must be the envelope's key_id; refuse another key
     * for that node later, and a key already pinned to another node. Unlike Python, the hello's
     * signature is checked before its key is pinned, so an unverifiable hello pins nothing.
     */
    private fun pinFromHello(payload: ByteArray, node: String) {
        val env = Envelope.decode(payload, limits, null) // integrity only; the ring verifies next
        val keyId = env.keyId() ?: return // unsigned: the ring refuses it
        if (env.sender() != node) return // misaddressed: refused after decoding
        val key = try {
            Hex.decode(env.meta()["key"] ?: "")
        } catch (e: IllegalArgumentException) {
            throw WireException.MalformedMessage("hello of $node: meta key is not hex")
        }
        if (key.size != 32 || Ed25519.fingerprint(key) != keyId) {
            throw WireException.Signature("hello of $node: its key does not match its key id $keyId")
        }
        val pinned = pins.entries.firstOrNull { it.value.senders?.contains(node) == true }?.key
        if (pinned != null && pinned != keyId) {
            throw KeyChanged("node $node pinned to key $pinned now signs with $keyId: refused")
        }
        if (pinned != null) return
        val owners = pins[keyId]?.senders
        if (owners != null && node !in owners) throw KeyChanged("key $keyId is pinned to ${owners.sorted()}, not $node")
        Envelope.decode(payload, limits, KeyRing().add(keyId, key, setOf(node))) // the signature holds
        ring!!.add(keyId, key, setOf(node))
        pins[keyId] = KeyEntry(keyId, key, setOf(node))
        try {
            Identity.writeAtomically(pinsFile, Identity.entriesJson(pins.values).toString().toByteArray())
        } catch (e: IOException) {
            Log.w(TAG, "$me: could not save the pinned keys to $pinsFile (${e.message}); kept in memory")
        }
    }

    private fun peer(node: String) = peers.getOrPut(node) { Peer(node) }

    private fun onPresence(node: String, text: String) {
        if (text != "online" && text != "offline") throw WireException.MalformedMessage("presence is neither online nor offline")
        peer(node).online = text == "online"
    }

    private fun onHello(env: Envelope) {
        val t = Codec.decodeTensors(env.body(), null, limits)
        val sig = t["signature"]
        if (sig == null || sig.shape().size != 1 || t.size != 1) throw WireException.MalformedMessage("hello must hold one 1-D 'signature'")
        val p = peer(env.sender())
        p.profile = JSONObject(env.meta()["profile"] ?: "{}")
        p.signature = sig.toFloats()
    }

    /** One member's copy of a slot's finished expert (receiving.py _on_expert): kept by sender. */
    private fun onExpert(env: Envelope, slot: Int) {
        if (env.slot() != slot.toLong()) throw WireException.MalformedMessage("expert of slot ${env.slot()} on slot $slot's topic")
        checkExpert(slot, env.sender(), env.round())
        val known = expertCopies[slot]?.get(env.sender())
        if (known != null && known.round > env.round()) return // an older copy of this sender's (retained replay)
        val t = Codec.decodeTensors(env.body(), null, limits)
        // sparse tensors (values + mask. + shape., as the Python nodes send them) come back dense
        val dense = Codec.denseExpert(t, limits).mapValues { it.value.values() }
        expertCopies.getOrPut(slot) { HashMap() }[env.sender()] = Expert(slot, env.sender(), env.round(), dense)
    }

    /** An expert must come from a member of its slot's cluster, for a round of the run's schedule. */
    private fun checkExpert(slot: Int, sender: String, round: Long) {
        val maxRound = expertMaxRound
        if (round < 1 || (maxRound != null && round > maxRound)) {
            throw StaleRound("expert of slot $slot from $sender for round $round: the run has rounds 1..${maxRound ?: "?"}")
        }
        val members = expertMembers
        if (members != null && sender !in (members[slot] ?: emptySet())) {
            throw NotAMember("expert of slot $slot from $sender, who is not a member of that cluster")
        }
    }

    /**
     * From now on accept a slot's expert only from `members[slot]`, for rounds 1..[maxRound]
     * (receiving.py admit_experts). Copies that arrived before (retained messages come at once,
     * before the clustering is known) are judged now: those that fail are dropped and counted.
     */
    fun admitExperts(members: Map<Int, Collection<String>>, maxRound: Long) {
        expertMembers = members.mapValues { it.value.toSet() }
        expertMaxRound = maxRound
        for ((slot, copies) in expertCopies) {
            for (sender in copies.keys.toList()) {
                try {
                    checkExpert(slot, sender, copies.getValue(sender).round)
                } catch (e: WireException) {
                    copies.remove(sender)
                    reject(e, topics.expert(slot, sender))
                }
            }
        }
    }

    /**
     * The finished expert of each slot: among its copies, the latest round, then the smallest sender
     * id. Every receiver holding the same copies chooses the same one, whatever their arrival order.
     */
    val experts: Map<Int, Expert>
        get() = expertCopies.filterValues { it.isNotEmpty() }.mapValues { (_, copies) ->
            copies.values.sortedWith(compareByDescending<Expert> { it.round }.thenBy { it.sender }).first()
        }

    private fun onAck(env: Envelope) {
        if (env.meta()["to"] != me) return
        val mid = env.meta()["id"] ?: return
        if (env.isError) Log.w(TAG, "$me: ${env.sender()} rejected $mid: ${env.error()}")
        outbox[mid]?.acked?.add(env.sender())
    }

    private fun onUpdateChunk(msg: Incoming, sender: String, slot: Int) {
        val header = Chunks.parseHeader(msg.payload)
        val key = msg.topic + "|" + Hex.encode(header.messageId())
        answered[key]?.let { done ->
            if (header.index() == header.count() - 1) sendAck(sender, done) // repairs a lost ack
            return
        }
        val data = reassembler.add(msg.payload, msg.topic) ?: return
        val answer = onMessage(data, sender, slot, msg.topic) ?: return
        answered[key] = answer
        sendAck(sender, answer)
    }

    private fun onMessage(data: ByteArray, sender: String, slot: Int, topic: String): Answer? {
        var env: Envelope? = null
        var mid = ""
        try {
            env = Envelope.decode(data, limits, ring) // with a ring: signed by a key that may speak for its sender
            if (env.kind() !in setOf("update", "mask") || env.swarm() != swarm || env.sender() != sender || env.slot() != slot.toLong()) {
                throw WireException.MalformedMessage("${env.kind()} envelope from ${env.sender()} on $sender's slot $slot topic")
            }
            mid = "${env.sender()}/${env.round()}/${env.seq()}"
            if (env.kind() == "mask") {
                val got = Codec.decodeMasks(env.body(), masks, limits)
                receivedMasks.putAll(got)
                if (!appliedMasks.add(mid)) return Answer(mid, env, "duplicate")
            } else {
                if (mid in applied) return Answer(mid, env, "duplicate")
                if ((env.round() to env.slot()) in closed || env.round() < currentRound - STALE_ROUNDS) {
                    return Answer(mid, env, "stale")
                }
                if (currentRound >= 0 && env.round() > currentRound + MAX_ROUNDS_AHEAD) {
                    return Answer(mid, env, "stale")
                }
                val tensors = Codec.decodeUpdate(env.body(), masks, null, limits)
                val one = Triple(env.sender(), env.round(), env.slot())
                if (one in onePerRound) return Answer(mid, env, "duplicate")
                onePerRound[one] = mid
                applied[mid] = Received(env.sender(), env.round(), env.slot(), env.seq(), tensors)
            }
        } catch (e: WireException.UnknownMask) {
            reject(e, topic)
            return null // not applied, not acked: the mask message is on its way, the re-send will find it
        } catch (e: WireException) {
            reject(e, topic)
            return Answer(mid, env, "rejected", e)
        }
        return Answer(mid, env, "applied")
    }

    private fun sendAck(to: String, a: Answer) {
        val meta = HashMap<String, String>()
        meta["to"] = to
        meta["status"] = a.status
        if (a.mid.isNotEmpty()) meta["id"] = a.mid
        val env = a.env
        val (round, slot, seq) = if (env != null) Triple(env.round(), env.slot(), env.seq()) else Triple(0L, 0L, 0L)
        val out = if (a.error == null) {
            Envelope.of("ack", swarm, me, round, slot, seq, ByteArray(0), meta)
        } else {
            meta["error_type"] = a.error.pythonName()
            Envelope.forError(swarm, me, (a.error.message ?: a.error.pythonName()).take(limits.maxStringChars()), round, slot, seq, meta)
        }
        tryPublish(topics.ack(to, me), out.encode(signer))
    }

    fun close(leave: Boolean = true) {
        if (leave) announce(false)
        link.close()
    }

    companion object {
        private const val TAG = "edgedfl.protocol"
        const val STALE_ROUNDS = 1
        const val MAX_ROUNDS_AHEAD = 16

        /** Python's json.dumps(sort_keys=True, separators=(",", ":")) for a flat map of strings and numbers. */
        fun canonicalJson(map: Map<String, Any>): String = map.toSortedMap().entries.joinToString(",", "{", "}") { (k, v) ->
            JSONObject.quote(k) + ":" + when (v) {
                is String -> JSONObject.quote(v)
                is Number -> v.toString()
                is Boolean -> v.toString()
                else -> throw IllegalArgumentException("hello profile values are strings or numbers")
            }
        }
    }
}
