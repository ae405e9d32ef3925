package org.edgedfl.app

import org.edgedfl.wire.FloatTensor
import org.edgedfl.wire.Mask
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.pytorch.executorch.training.SGD
import org.pytorch.executorch.training.TrainingModule

/** One fixed-shape training batch (batch, maxLength), int64 as the exported program takes them. */
class Batch(val inputIds: LongArray, val labels: LongArray, val attentionMask: LongArray, val rows: Int, val cols: Int)

/**
 * Sparse B of the phone's slot, trained through the bundle's training program with ExecuTorch's
 * Android training API: `TrainingModule.executeForwardBackward` gives the loss and fills the
 * gradients of B (the only parameters of the program), the gradients are masked, and `SGD.step`
 * updates B in place. Masked entries start at zero, get zero gradient and no weight decay, so they
 * stay exactly zero, as `AdaptedModel.apply_masks` guarantees on the Python side.
 *
 * A (the slot's frozen orthonormal rows) is an input of every call: the programs do not depend on
 * the slot, so a re-clustered phone only feeds another A.
 *
 * Writing B (after the Metropolis average) uses only the public API too: a second SGD over the same
 * parameters with learning rate 1 and the gradient (B - target) moves B exactly to the target,
 * through the same in-place path the training steps take.
 */
class PhoneTrainer(private val bundle: Bundle, lr: Double, momentum: Double) : AutoCloseable {
    private val module: TrainingModule = TrainingModule.load(bundle.trainFile.absolutePath)
    private val params: Map<String, Tensor>
    private val sgd: SGD
    private val setter: SGD
    private var a: List<Tensor> = emptyList()
    private var masks: Map<String, FloatArray> = emptyMap() // fqn -> 0/1 per entry of B
    private val shapes = bundle.layers.associate { bundle.parameterNames.getValue(it.name) to longArrayOf(it.dOut.toLong(), bundle.rank.toLong()) }

    init {
        // The parameters are only known once the method has run; one pass on a padding batch sets them up.
        module.executeForwardBackward(METHOD, *inputs(emptyBatch()))
        params = module.namedParameters(METHOD)
        require(params.keys.containsAll(shapes.keys)) { "training program lacks parameters ${shapes.keys - params.keys}" }
        sgd = SGD.create(params, lr, momentum, 0.0, 0.0, false)
        setter = SGD.create(params, 1.0)
    }

    /** Train the slot whose A rows are [slotA] (layer order), keeping B inside [wireMasks]. */
    fun configure(slotA: List<FloatArray>, wireMasks: Map<String, Mask>) {
        a = bundle.layers.zip(slotA).map { (l, values) -> Tensor.fromBlob(values, longArrayOf(bundle.rank.toLong(), l.dIn.toLong())) }
        masks = bundle.layers.associate { l ->
            val bits = wireMasks.getValue(l.wireName).bits()
            bundle.parameterNames.getValue(l.name) to FloatArray(bits.size) { if (bits[it]) 1f else 0f }
        }
        // B must already lie inside the mask (it does: zeros at the start, masked averages later)
        writeB(readB())
    }

    private fun emptyBatch(): Batch {
        val n = bundle.batchSize * bundle.maxLength
        return Batch(LongArray(n) { bundle.padId }, LongArray(n) { IGNORE }, LongArray(n).also { it[0] = 1 }, bundle.batchSize, bundle.maxLength)
    }

    private fun inputs(b: Batch): Array<EValue> {
        val shape = longArrayOf(b.rows.toLong(), b.cols.toLong())
        val fixed = listOf(Tensor.fromBlob(b.inputIds, shape), Tensor.fromBlob(b.labels, shape), Tensor.fromBlob(b.attentionMask, shape))
        val aIn = a.ifEmpty {
            bundle.layers.map { Tensor.fromBlob(FloatArray(bundle.rank * it.dIn), longArrayOf(bundle.rank.toLong(), it.dIn.toLong())) }
        }
        return (fixed + aIn).map { EValue.from(it) }.toTypedArray()
    }

    /** One SGD step on [batch]; returns the loss. */
    fun step(batch: Batch): Float {
        val out = module.executeForwardBackward(METHOD, *inputs(batch))
        val loss = out[0].toTensor().dataAsFloatArray[0]
        val grads = module.namedGradients(METHOD)
        val masked = HashMap<String, Tensor>()
        for ((fqn, shape) in shapes) {
            val g = grads.getValue(fqn).dataAsFloatArray
            val m = masks.getValue(fqn)
            for (i in g.indices) g[i] *= m[i]
            masked[fqn] = Tensor.fromBlob(g, shape)
        }
        sgd.step(masked)
        return loss
    }

    /** Current B of every layer, dense with zeros outside the mask, by wire name. */
    fun readB(): Map<String, FloatTensor> = bundle.layers.associate { l ->
        val fqn = bundle.parameterNames.getValue(l.name)
        l.wireName to FloatTensor(shapes.getValue(fqn), params.getValue(fqn).dataAsFloatArray)
    }

    /** Set B to [target] (by wire name), masked entries forced to exactly zero. */
    fun writeB(target: Map<String, FloatTensor>) {
        val grads = HashMap<String, Tensor>()
        for (l in bundle.layers) {
            val fqn = bundle.parameterNames.getValue(l.name)
            val cur = params.getValue(fqn).dataAsFloatArray
            val t = target.getValue(l.wireName).values()
            val m = masks[fqn]
            // B - (B - t) = t; with m = 0: B - B = 0 exactly
            grads[fqn] = Tensor.fromBlob(FloatArray(cur.size) { i -> if (m != null && m[i] == 0f) cur[i] else cur[i] - t[i] }, shapes.getValue(fqn))
        }
        setter.step(grads)
    }

    override fun close() {
        sgd.destroy()
        setter.destroy()
        module.destroy()
    }

    companion object {
        const val METHOD = "forward"
        const val IGNORE = -100L
    }
}

/**
 * The bundle's features program on the frozen base: pooled last hidden states (the task
 * signature's input) and per-layer input statistics in the slot's subspace (the round-0 mask
 * calibration), exactly what `edgedfl.node.signature` and `AdaptedModel.calibrate` compute.
 */
class PhoneFeatures(private val bundle: Bundle) : AutoCloseable {
    private val module = Module.load(bundle.featuresFile.absolutePath)

    /**
     * [routing]: per prompt, the routing features in the slot's subspace (the latent code's input,
     * `edgedfl.routing.calibrate.routing_features`), when the program has that fifth output; else empty.
     */
    class Stats(val pooled: List<FloatArray>, val cov: List<FloatArray>, val energy: DoubleArray, var tokens: Double,
                val routing: List<FloatArray>)

    /** Run over [prompts] (token ids, already cut to max length), one prompt per call: shape (1, T). */
    fun run(prompts: List<LongArray>, slotA: List<FloatArray>): Stats {
        val r = bundle.rank
        val aIn = bundle.layers.zip(slotA).map { (l, v) -> EValue.from(Tensor.fromBlob(v, longArrayOf(r.toLong(), l.dIn.toLong()))) }
        val pooled = ArrayList<FloatArray>()
        val routing = ArrayList<FloatArray>()
        val cov = bundle.layers.map { FloatArray(r * r) }
        val energy = DoubleArray(bundle.layers.size)
        var tokens = 0.0
        for (p in prompts) {
            val shape = longArrayOf(1, p.size.toLong())
            val out = module.forward(EValue.from(Tensor.fromBlob(p, shape)),
                EValue.from(Tensor.fromBlob(LongArray(p.size) { 1 }, shape)), *aIn.toTypedArray())
            pooled.add(out[0].toTensor().dataAsFloatArray)
            val c = out[1].toTensor().dataAsFloatArray
            val e = out[2].toTensor().dataAsFloatArray
            for (k in bundle.layers.indices) {
                for (x in 0 until r * r) cov[k][x] += c[k * r * r + x]
                energy[k] += e[k].toDouble()
            }
            tokens += out[3].toTensor().dataAsFloatArray[0].toDouble()
            if (out.size > 4) routing.add(out[4].toTensor().dataAsFloatArray)
        }
        return Stats(pooled, cov, energy, tokens, routing)
    }

    override fun close() = module.destroy()
}
