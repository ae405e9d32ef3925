package org.edgedfl.app

import android.util.Log
import java.io.File
import org.edgedfl.wire.Chunks
import org.edgedfl.wire.Codec
import org.edgedfl.wire.DType
import org.edgedfl.wire.Envelope
import org.edgedfl.wire.FloatTensor
import org.edgedfl.wire.Hex
import org.edgedfl.wire.Limits
import org.edgedfl.wire.Mask
import org.edgedfl.wire.MaskRegistry
import org.edgedfl.wire.Precision
import org.edgedfl.wire.RawTensor
import org.edgedfl.wire.WireException
import org.json.JSONObject

/** Topic names of one swarm (edgedfl/transport/proto_topics.py). */
class Topics(val swarm: String) {
    val base = "edgedfl/$swarm"
    fun presence(node: String) = "$base/presence/$node"
    fun hello(node: String) = "$base/hello/$node"
    fun update(slot: Int, node: String) = "$base/update/$slot/$node"
    fun expert(slot: Int) = "$base/expert/$slot"
    fun ack(node: String) = "$base/ack/$node"
    fun slotUpdates(slot: Int) = "$base/update/$slot/+"
    val allPresence get() = "$base/presence/+"
    val allHello get() = "$base/hello/+"
    val allExperts get() = "$base/expert/+"
    val allAcks get() = "$base/ack/+"
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
 * The neighbour protocol of edgedfl/transport/protocol.py, the part a phone speaks: retained
 * presence with a last will, the retained hello, updates and masks in chunks re-sent until every
 * receiver acknowledged them end to end, acks on the receiver's own topic, deduplication on
 * (sender, round, seq) and one update per (sender, round, slot), stale and too-far-ahead rounds,
 * error envelopes for rejected messages, finished experts (retained), and rounds that close on a
 * deadline with a quorum.
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
) {
    val topics = Topics(swarm)
    val masks = MaskRegistry()
    val peers = HashMap<String, Peer>()
    val experts = HashMap<Int, Expert>()
    var rejects = 0
        private set
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

    /** Masks that reached us from cluster mates, by wire tensor name (the newest set wins). */
    val receivedMasks = HashMap<String, Mask>()

    fun start(slots: Collection<Int>) {
        for (f in listOf(topics.allPresence, topics.allHello, topics.allExperts, topics.allAcks)) link.subscribe(f)
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

    /** The retained hello: profile JSON in meta["profile"], the task signature as one float32 tensor. */
    fun publishHello(profile: Map<String, Any>, signature: FloatArray) {
        val body = Codec.encodeTensors(
            mapOf("signature" to RawTensor.ofFloats(DType.F32, longArrayOf(signature.size.toLong()), signature))
        )
        val env = Envelope.of("hello", swarm, me, 0, 0, 0, body, mapOf("profile" to canonicalJson(profile)))
        tryPublish(topics.hello(me), env.encode(), retain = true)
    }

    /** A finished expert of [slot], retained, with dense fp16 tensors (receivers also accept the sparse form). */
    fun publishExpert(slot: Int, round: Long, tensors: Map<String, FloatTensor>) {
        val raw = tensors.mapValues { (_, t) -> RawTensor.ofFloats(DType.F16, t.shape(), t.values()) }
        val env = Envelope.of("expert", swarm, me, round, slot.toLong(), 0, Codec.encodeTensors(raw), mapOf("task_hint" to ""))
        val bytes = env.encode()
        require(bytes.size <= link.maxPayload) { "expert of slot $slot is ${bytes.size} bytes: over the broker limit" }
        tryPublish(topics.expert(slot), bytes, retain = true)
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
        val data = Envelope.of(kind, swarm, me, round, slot.toLong(), seq, body, meta).encode()
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
        Log.d(TAG, "$me: rejected message on $topic: ${e.message}")
    }

    private fun handle(msg: Incoming) {
        val prefix = topics.base + "/"
        if (!msg.topic.startsWith(prefix)) return
        val parts = msg.topic.removePrefix(prefix).split("/")
        val kind = parts[0]
        val node = when (kind) {
            "presence", "hello", "ack" -> parts.getOrNull(1)
            "update" -> parts.getOrNull(2)
            else -> null
        }
        if (node == me) return // our own messages, echoed back
        when {
            kind == "update" && parts.size == 3 -> onUpdateChunk(msg, parts[2], parts[1].toInt())
            msg.payload.isEmpty() -> return // a cleared retained message
            kind == "presence" && node != null -> onPresence(node, String(msg.payload))
            else -> {
                val env = Envelope.decode(msg.payload, limits, null)
                if (env.swarm() != swarm) throw WireException.MalformedMessage("envelope of swarm ${env.swarm()}")
                if (node != null && env.sender() != node) throw WireException.MalformedMessage("sender ${env.sender()} on $node's topic")
                when {
                    kind == "hello" && env.kind() == "hello" -> onHello(env)
                    kind == "expert" && env.kind() == "expert" -> onExpert(env, parts[1].toInt())
                    kind == "ack" && (env.kind() == "ack" || env.kind() == "error") -> onAck(env)
                    else -> throw WireException.MalformedMessage("a ${env.kind()} envelope on ${msg.topic}")
                }
            }
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

    private fun onExpert(env: Envelope, slot: Int) {
        if (env.slot() != slot.toLong()) throw WireException.MalformedMessage("expert of slot ${env.slot()} on slot $slot's topic")
        val known = experts[slot]
        if (known != null && (known.round > env.round() || (known.round == env.round() && known.sender > env.sender()))) return
        val t = Codec.decodeTensors(env.body(), null, limits)
        // sparse tensors (values + mask. + shape., as the Python nodes send them) come back dense
        experts[slot] = Expert(slot, env.sender(), env.round(), Codec.denseExpert(t, limits).mapValues { it.value.values() })
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
        val answer = onMessage(data, sender, slot) ?: return
        answered[key] = answer
        sendAck(sender, answer)
    }

    private fun onMessage(data: ByteArray, sender: String, slot: Int): Answer? {
        var env: Envelope? = null
        var mid = ""
        try {
            env = Envelope.decode(data, limits, null)
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
            rejects++
            return null // not applied, not acked: the mask message is on its way, the re-send will find it
        } catch (e: WireException) {
            rejects++
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
        tryPublish(topics.ack(me), out.encode())
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
