package org.edgedfl.app

import android.util.Log
import java.io.File
import kotlin.math.ceil
import kotlin.math.sqrt
import org.edgedfl.wire.DType
import org.edgedfl.wire.FloatTensor
import org.edgedfl.wire.Hex
import org.edgedfl.wire.KeyRing
import org.edgedfl.wire.Mask
import org.edgedfl.wire.Precision
import org.edgedfl.wire.RawTensor
import org.edgedfl.wire.SafeTensors
import org.edgedfl.wire.Signer

/** What the user sets on the phone; everything shared comes from the bundle's manifest. */
class PhoneConfig(
    val nodeId: String,
    val brokerUrl: String,
    val bundleDir: File,
    val dataFile: File,
    val stateDir: File,
    val nSignature: Int = 16,
    val nCalibration: Int = 16,
)

/**
 * One phone's life in a swarm, step for step the life of edgedfl/node/node.py:
 *
 * ```
 * connect (retained presence, last will "offline"), follow every slot during the join
 * hello: profile + task signature (features program + the swarm's projection)
 * wait for the swarm's hellos, cluster them (Topology.cluster: same result as every Python node)
 * place: slot, neighbour graph, Metropolis weights
 * round 0: the calibration pool (the first calibration_peers members) sends its statistics to the cluster
 * rounds 1..R: train local steps (ExecuTorch, SGD), publish sparse B, collect until all arrived or
 *              deadline + quorum, Metropolis-average, write B back; the speaker shares the expert
 * collect every cluster's finished expert
 * ```
 *
 * One difference: a Python node derives its cluster's masks from the pooled round-0 statistics with
 * numpy's seeded generator, which this app does not port. The phone contributes its statistics like
 * every member, then adopts the masks its cluster mates send (identical on every member by
 * construction, content-addressed on the wire) with their first update; it trains round 1 once they
 * are here. A phone alone in its cluster keeps the bundle's masks.
 */
class PhoneNode(private val cfg: PhoneConfig, private val status: (String) -> Unit) {
    private val bundle = Bundle.load(cfg.bundleDir)
    private val s = bundle.swarm
    private val me = cfg.nodeId

    @Volatile var stopRequested = false

    fun run() {
        status("loading bundle and data")
        cfg.stateDir.mkdirs()
        val data = TrainData.load(cfg.dataFile, bundle.maxLength, bundle.padId, s.seed)
        val topics = Topics(s.name)
        val (signer, keyring) = identity()
        status("connecting to ${cfg.brokerUrl}")
        val link = MqttLink(cfg.brokerUrl, me, topics.presence(me), "offline".toByteArray())
        val chunk = minOf(1_000_000, maxOf(16_384, link.maxPayload - 4096))
        val ackTimeoutMs = (maxOf(10.0, s.roundDeadlineS / 2) * 1000).toLong()
        val proto = PhoneProtocol(
            link, s.name, me, cfg.stateDir, ackTimeoutMs, chunk,
            signer = signer, keyring = keyring, tofu = signer != null && keyring == null,
        )
        try {
            proto.start((0 until s.maxSlots).toList())
            PhoneFeatures(bundle).use { features ->
                status("hello")
                val sig = signature(features, data)
                proto.publishHello(mapOf("link_rate_bps" to bundle.linkRateBps, "profile" to "phone"), sig)
                status("joining")
                val assignment = join(proto, sig)
                // a slot's finished expert is taken only from a member of that cluster, for a round of this run
                proto.admitExperts(assignment.entries.groupBy({ it.value }, { it.key }), s.rounds.toLong())
                val slot = assignment.getValue(me)
                val members = assignment.filterValues { it == slot }.keys.sorted()
                val (neighbours, row) = place(proto, members)
                proto.follow(slot)
                val slotA = bundle.loraA(slot)
                status("calibrating in slot $slot with ${members - me}")
                calibrate(proto, features, data, slot, members, slotA)
                val masks = if (s.method == "solora") clusterMasks(proto, slot, members) else null
                (0 until s.maxSlots).filter { it != slot }.forEach { proto.unfollow(it) }
                PhoneTrainer(bundle, s.lr, s.momentum).use { trainer ->
                    trainer.configure(slotA, masks ?: bundle.exportMasks())
                    for (r in 1..s.rounds) {
                        if (stopRequested) break
                        runRound(proto, trainer, data, r.toLong(), slot, neighbours, row, masks, members)
                    }
                }
                status("collecting experts")
                collectExperts(proto, assignment.values.toSet() - slot)
                status("done")
            }
        } finally {
            proto.close(leave = true)
        }
    }

    // -- identity ------------------------------------------------------------------------------------

    /**
     * The device key and the key ring of the swarm's admission (member.py connect): `open` signs and
     * checks nothing; `tofu` signs with the device key (identity.key in the state folder, created on
     * first start) and pins each node's key at its first hello; `keyring` checks against the key ring
     * file keyring.json of the bundle folder, and falls back to tofu (with a warning) without one.
     */
    private fun identity(): Pair<Signer?, KeyRing?> {
        if (s.admission == "open") return null to null
        val signer = Identity.loadOrCreateSigner(File(cfg.stateDir, "identity.key"))
        Log.i(TAG, "$me: device key ${signer.keyId()}, public ${Hex.encode(signer.publicBytes())}")
        if (s.admission != "keyring") return signer to null
        val file = File(cfg.bundleDir, KEYRING_FILE)
        if (!file.isFile) {
            Log.w(TAG, "$me: admission is keyring but the bundle has no $KEYRING_FILE: pinning keys on first use instead")
            return signer to null
        }
        return signer to Identity.readKeyRing(file)
    }

    // -- joining -------------------------------------------------------------------------------------

    /** mean pooled hidden state @ projection, unit norm (edgedfl.topology.project_signature). */
    private fun signature(features: PhoneFeatures, data: TrainData): FloatArray {
        val proj = requireNotNull(bundle.signatureProjection()) { "bundle has no signature projection: re-export it" }
        val hidden = proj.shape()[0].toInt()
        val dim = proj.shape()[1].toInt()
        val p = proj.toFloats()
        val pooled = features.run(data.prompts(cfg.nSignature), bundle.loraA(0)).pooled
        val mean = DoubleArray(hidden)
        pooled.forEach { row -> for (i in 0 until hidden) mean[i] += row[i].toDouble() / pooled.size }
        val sig = DoubleArray(dim) { j -> (0 until hidden).sumOf { i -> mean[i] * p[i * dim + j] } }
        val norm = sqrt(sig.sumOf { it * it })
        require(norm > 0 && norm.isFinite()) { "signature cannot be normalised" }
        return FloatArray(dim) { (sig[it] / norm).toFloat() }
    }

    private fun join(proto: PhoneProtocol, own: FloatArray): Map<String, Int> {
        val deadline = System.currentTimeMillis() + (s.joinTimeoutS * 1000).toLong()
        var sigs: Map<String, FloatArray>
        while (true) {
            proto.poll(200)
            sigs = proto.peers.filter { it.value.signature != null && it.key != me }.mapValues { it.value.signature!! } + (me to own)
            if ((s.expectedDevices > 0 && sigs.size >= s.expectedDevices) || System.currentTimeMillis() > deadline) break
        }
        if (s.method != "solora") return sigs.keys.associateWith { 0 } // flat gossip: one slot
        return Topology.cluster(sigs, s.maxSlots)
    }

    /** Neighbours and this node's Metropolis row, built the same way on every member (node.py place()). */
    private fun place(proto: PhoneProtocol, members: List<String>): Pair<Set<String>, Map<String, Double>> {
        val rates = HashMap<String, Double>()
        proto.peers.forEach { (p, info) -> info.profile?.let { rates[p] = it.optDouble("link_rate_bps", 0.0) } }
        rates[me] = bundle.linkRateBps.toDouble()
        val quality = HashMap<Pair<String, String>, Double>()
        for (a in members) for (b in members) if (a != b && a in rates && b in rates) quality[a to b] = minOf(rates.getValue(a), rates.getValue(b))
        val edges = Topology.neighbourGraph(members, quality, s.degree)
        val row = Topology.metropolisRow(me, edges)
        return row.keys.filter { it != me }.toSet() to row
    }

    private fun calibrate(proto: PhoneProtocol, features: PhoneFeatures, data: TrainData, slot: Int, members: List<String>, slotA: List<FloatArray>) {
        if (s.method != "solora") return
        val st = features.run(data.prompts(cfg.nCalibration), slotA)
        val r = bundle.rank.toLong()
        val tensors = HashMap<String, FloatTensor>()
        bundle.layers.forEachIndexed { k, l ->
            tensors["${l.name}.cov"] = FloatTensor(longArrayOf(r, r), st.cov[k])
            tensors["${l.name}.energy"] = FloatTensor(longArrayOf(2), floatArrayOf(st.energy[k].toFloat(), st.tokens.toFloat()))
        }
        // The cluster's latent code (implicit MoE routing): node.py sends its own code with the
        // statistics as "code.latent.{count,mean,cov}" (LatentCode.from_features: mean, cov / N).
        if (st.routing.size >= 2) {
            val n = st.routing.size
            val d = st.routing[0].size
            val mean = DoubleArray(d) { j -> st.routing.sumOf { it[j].toDouble() } / n }
            val cov = FloatArray(d * d) { x ->
                val (i, j) = x / d to x % d
                (st.routing.sumOf { (it[i] - mean[i]) * (it[j] - mean[j]) } / n).toFloat()
            }
            tensors["code.latent.count"] = FloatTensor(longArrayOf(1), floatArrayOf(n.toFloat()))
            tensors["code.latent.mean"] = FloatTensor(longArrayOf(d.toLong()), FloatArray(d) { mean[it].toFloat() })
            tensors["code.latent.cov"] = FloatTensor(longArrayOf(d.toLong(), d.toLong()), cov)
        } else {
            Log.w(TAG, "$me: the features program gives no routing features: no latent code sent (README.md)")
        }
        // node.py's calibration_pool(): the first calibration_peers members by name send their statistics
        // to every mate; the others only receive (and ack) them
        val mates = members.filter { it != me }.toSet()
        val sorted = members.sorted()
        val pool = if (s.calibrationPeers > 0) sorted.take(s.calibrationPeers) else sorted
        if (me in pool) proto.publishUpdate(0, slot, tensors, mates, null, Precision.FP32)
        val fromPool = pool.filter { it != me }.toSet()
        val (_, short) = proto.collectRound(0, slot, fromPool, fromPool.size, (s.joinTimeoutS * 1000).toLong())
        if (short) Log.w(TAG, "$me: calibration statistics missing from some cluster members")
    }

    /** The cluster's masks, as the mates send them before their first update. */
    private fun clusterMasks(proto: PhoneProtocol, slot: Int, members: List<String>): Map<String, Mask> {
        if (members.size == 1) return bundle.exportMasks()
        status("waiting for the cluster's masks")
        val wanted = bundle.layers.map { it.wireName }
        val deadline = System.currentTimeMillis() + (2 * s.roundDeadlineS * 1000).toLong()
        while (!proto.receivedMasks.keys.containsAll(wanted) && System.currentTimeMillis() < deadline) proto.poll(200)
        require(proto.receivedMasks.keys.containsAll(wanted)) { "no masks from the cluster of slot $slot" }
        return wanted.associateWith { proto.receivedMasks.getValue(it) }
    }

    // -- rounds -------------------------------------------------------------------------------------------

    private fun runRound(
        proto: PhoneProtocol, trainer: PhoneTrainer, data: TrainData, r: Long, slot: Int,
        neighbours: Set<String>, row: Map<String, Double>, masks: Map<String, Mask>?, members: List<String>,
    ) {
        proto.beginRound(r)
        status("round $r: training ${s.localSteps} steps")
        var loss = 0f
        repeat(s.localSteps) { loss = trainer.step(data.next(bundle.batchSize)) }
        val own = trainer.readB()
        status("round $r: publishing (loss %.4f)".format(loss))
        proto.publishUpdate(r, slot, own, neighbours, masks, Precision.parse(s.precision))
        status("round $r: collecting from $neighbours")
        val quorum = minOf(neighbours.size, ceil(s.quorum * neighbours.size).toInt())
        val (arrived, short) = proto.collectRound(r, slot, neighbours, quorum, (s.roundDeadlineS * 1000).toLong())
        val usable = arrived.filterValues { u -> own.all { (k, t) -> u.tensors[k]?.shape()?.contentEquals(t.shape()) == true } }
        val (ownW, peerW) = Topology.presentWeights(row, me, usable.keys)
        val mixed = own.mapValues { (name, t) ->
            val acc = DoubleArray(t.values().size) { ownW * t.values()[it] }
            for ((p, w) in peerW) {
                val v = usable.getValue(p).tensors.getValue(name).values()
                for (i in acc.indices) acc[i] += w * v[i]
            }
            val bits = masks?.get(name)?.bits()
            FloatTensor(t.shape(), FloatArray(acc.size) { if (bits != null && !bits[it]) 0f else acc[it].toFloat() })
        }
        trainer.writeB(mixed)
        if (me == members.min() && (r == s.rounds.toLong() || (s.expertEvery > 0 && r % s.expertEvery == 0L))) {
            proto.publishExpert(slot, r, mixed)
        }
        saveExpert(slot, mixed.mapValues { it.value.values() }, mixed.mapValues { it.value.shape() })
        status("round $r done: loss %.4f, peers %s%s".format(loss, usable.keys.sorted(), if (short) " (quorum short)" else ""))
    }

    private fun collectExperts(proto: PhoneProtocol, wanted: Set<Int>) {
        val deadline = System.currentTimeMillis() + (s.roundDeadlineS * 1000).toLong()
        while (!proto.experts.keys.containsAll(wanted) && System.currentTimeMillis() < deadline) proto.poll(200)
        for (slot in wanted) {
            val e = proto.experts[slot] ?: continue
            val shapes = bundle.layers.associate { it.wireName to longArrayOf(it.dOut.toLong(), bundle.rank.toLong()) }
            saveExpert(slot, e.tensors.filterKeys { it in shapes }, shapes)
        }
    }

    /** experts/slot<k>.safetensors in the state folder: what the inference program takes as its B inputs. */
    private fun saveExpert(slot: Int, values: Map<String, FloatArray>, shapes: Map<String, LongArray>) {
        val dir = File(cfg.stateDir, "experts").apply { mkdirs() }
        val raw = values.mapValues { (k, v) -> RawTensor.ofFloats(DType.F32, shapes.getValue(k), v) }
        val tmp = File(dir, "slot$slot.safetensors.tmp")
        tmp.writeBytes(SafeTensors.write(raw, null))
        tmp.renameTo(File(dir, "slot$slot.safetensors"))
    }

    companion object {
        private const val TAG = "edgedfl.node"
        /** The swarm's key ring (admission `keyring`), copied into the bundle folder: signing.py's file format. */
        const val KEYRING_FILE = "keyring.json"
    }
}
