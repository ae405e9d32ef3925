package org.edgedfl.app

import java.io.File
import org.edgedfl.wire.Limits
import org.edgedfl.wire.Mask
import org.edgedfl.wire.RawTensor
import org.edgedfl.wire.SafeTensors
import org.json.JSONObject

/** One adapted linear layer: its name in the model and the shapes of A (r, dIn) and B (dOut, r). */
class Layer(val name: String, val dIn: Int, val dOut: Int) {
    /** The tensor name of this layer's B on the wire (as `AdaptedModel.get_update` names it). */
    val wireName: String get() = "$name.lora_B"
}

/** The swarm's shared settings, as exported into the manifest (edgedfl/node/config.py SwarmConfig). */
class SwarmSettings(
    val name: String,
    val seed: Long,
    val method: String,
    val rounds: Int,
    val localSteps: Int,
    val lr: Double,
    val momentum: Double,
    val maxSlots: Int,
    val degree: Int,
    val quorum: Double,
    val roundDeadlineS: Double,
    val joinTimeoutS: Double,
    val expectedDevices: Int,
    /** The first N cluster members by name pool the calibration statistics (0: every member). */
    val calibrationPeers: Int,
    val precision: String,
    val expertEvery: Int,
    /** Who may take part (FORMAT.md 5.3): tofu (the default), keyring or open. */
    val admission: String,
) {
    init {
        require(admission in Identity.ADMISSIONS) { "swarm_settings.admission=$admission: choose from ${Identity.ADMISSIONS}" }
    }
}

/**
 * An Android bundle written by `edgedfl android export` (layout: edgedfl/android/manifest.py):
 * manifest.json, train.pte, features.pte, infer.pte, tokenizer.json, lora_A.safetensors and
 * masks.safetensors, copied into the app's files directory.
 *
 * Only the manifest fields listed in README.md ("Manifest fields the app reads") are used; a
 * missing required one fails loudly with its name.
 */
class Bundle private constructor(val dir: File, private val m: JSONObject) {
    val version: Int = m.getInt("bundle_version")
    val rank: Int = m.getInt("rank")
    val layers: List<Layer> = m.getJSONArray("layers").let { arr ->
        (0 until arr.length()).map { i ->
            val l = arr.getJSONObject(i)
            Layer(l.getString("name"), l.getInt("d_in"), l.getInt("d_out"))
        }
    }
    /** The slot planned at export; the live clustering decides the slot actually used. */
    val plannedSlot: Int = m.optInt("slot", 0)
    private val mqtt: JSONObject = m.optJSONObject("mqtt") ?: JSONObject()
    private val training: JSONObject = m.getJSONObject("training")
    /** `swarm_settings` is the swarm's SwarmConfig as exported (may be partial: SwarmConfig's defaults fill in). */
    val swarm: SwarmSettings = (m.optJSONObject("swarm_settings") ?: JSONObject()).let { s ->
        SwarmSettings(
            name = mqtt.optString("swarm").ifEmpty { s.getString("name") },
            seed = m.optLong("seed", s.optLong("seed", 0)),
            method = m.optString("method", s.optString("method", "solora")),
            rounds = s.optInt("rounds", 3),
            localSteps = training.optInt("local_steps", s.optInt("local_steps", 10)),
            lr = training.optDouble("lr", s.optDouble("lr", 2e-3)),
            momentum = training.optDouble("momentum", 0.0),
            maxSlots = s.optInt("max_slots", m.optInt("num_slots", 4)),
            degree = s.optInt("degree", 3),
            quorum = s.optDouble("quorum", 0.5),
            roundDeadlineS = s.optDouble("round_deadline_s", 60.0),
            joinTimeoutS = s.optDouble("join_timeout_s", 120.0),
            expectedDevices = s.optInt("expected_devices", 0),
            calibrationPeers = s.optInt("calibration_peers", 16),
            precision = s.optString("precision", "fp16"),
            expertEvery = s.optInt("expert_every", 0),
            admission = s.optString("admission", "tofu"),
        )
    }
    private val programs: JSONObject = m.getJSONObject("programs")
    val trainFile: File = file(programs.getJSONObject("train").getString("file"))
    val featuresFile: File = file(programs.getJSONObject("features").getString("file"))
    val inferFile: File? = programs.optJSONObject("infer")?.let { file(it.getString("file")) }
    /** Fixed input shapes of the training program: ExecuTorch plans its memory once. */
    val batchSize: Int = training.getInt("batch_size")
    val maxLength: Int = training.getInt("max_length")
    /** layer -> fully qualified name of its B among the training program's parameters (`layers[].param`). */
    val parameterNames: Map<String, String> = m.getJSONArray("layers").let { arr ->
        (0 until arr.length()).associate { i ->
            val l = arr.getJSONObject(i)
            l.getString("name") to l.getString("param").also { require(it.isNotEmpty()) { "layer ${l.getString("name")} has no param name" } }
        }
    }
    val padId: Long = m.optJSONObject("tokenizer")?.optLong("pad_id", 0) ?: 0
    val brokerUrl: String? = mqtt.optString("broker").takeIf { it.startsWith("mqtt") }
    /** Link rate the phone advertises in its hello (the phone profile's, edgedfl/devices.py). */
    val linkRateBps: Long = m.optLong("link_rate_bps", 20_000_000)

    private fun file(name: String): File = File(dir, name).also {
        require(it.isFile) { "bundle file missing: $it" }
    }

    private fun safetensors(key: String): Map<String, RawTensor> {
        val f = file(m.getJSONObject(key).getString("file"))
        val limits = Limits(64 * 1024, f.length() + 1, 16L shl 20, 1 shl 16, 1L shl 32, 1L shl 34, 64, 8192)
        return SafeTensors.read(f.readBytes(), limits).tensors()
    }

    /** A of [slot] for every layer, in layer order, each (r, dIn) row-major: the programs' trailing inputs. */
    fun loraA(slot: Int): List<FloatArray> {
        val all = safetensors("lora_A")
        return layers.map { l ->
            val t = requireNotNull(all["slot$slot/${l.name}"]) { "lora_A has no A of slot $slot for ${l.name}" }
            require(t.shape().contentEquals(longArrayOf(rank.toLong(), l.dIn.toLong()))) { "A of ${l.name}: bad shape" }
            t.toFloats()
        }
    }

    /** The masks known at export (uniform masks of the planned slot), keyed by wire name. */
    fun exportMasks(): Map<String, Mask> {
        val packed = safetensors("masks")
        return layers.associate { l ->
            val t = requireNotNull(packed[l.name]) { "masks.safetensors has no mask for ${l.name}" }
            l.wireName to Mask.fromPacked(longArrayOf(l.dOut.toLong(), rank.toLong()), t.data())
        }
    }

    /**
     * The swarm's signature projection (hidden, dim), float32: `edgedfl.topology.projection_matrix`
     * evaluated at export (numpy's generator is not ported), or null if the bundle carries none.
     */
    fun signatureProjection(): RawTensor? {
        if (!m.has("signature")) return null
        val t = safetensors("signature")
        return t["projection"]
    }

    companion object {
        const val SUPPORTED_VERSION = 1

        fun load(dir: File): Bundle {
            val manifest = File(dir, "manifest.json")
            require(manifest.isFile) { "$dir is not an edgedfl bundle (no manifest.json): run `edgedfl android export`" }
            val b = Bundle(dir, JSONObject(manifest.readText()))
            require(b.version == SUPPORTED_VERSION) { "bundle_version ${b.version}, this app reads $SUPPORTED_VERSION" }
            return b
        }
    }
}
