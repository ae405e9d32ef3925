package org.edgedfl.app

import java.io.File
import kotlin.random.Random
import org.json.JSONObject

/** One training example as token ids; labels are -100 on the prompt (loss on the completion only). */
class Example(val inputIds: LongArray, val labels: LongArray) {
    /** The prompt part (what the signature and the calibration look at). */
    val prompt: LongArray get() = inputIds.copyOfRange(0, labels.indexOfFirst { it != PhoneTrainer.IGNORE }.let { if (it < 0) inputIds.size else it })
}

/**
 * The phone's local data, a JSONL file. Each line is either
 *
 * - `{"input_ids": [...], "labels": [...]}`: tokenized on the export machine with the bundle's own
 *   tokenizer (`edgedfl.train.batching.encode_pair`), exact for every model; or
 * - `{"prompt": "...", "completion": "..."}` for the tiny test model only, whose tokenizer is
 *   byte-level (ids 3..258 are the UTF-8 bytes, 2 = eos; edgedfl/model/tiny.py).
 *
 * A BPE tokenizer on the phone (SmolLM2's tokenizer.json) is not in this app: tokenize on the
 * export machine, or add a Hugging Face tokenizers binding.
 */
class TrainData(val examples: List<Example>, private val maxLength: Int, private val padId: Long, seed: Long) {
    private val random = Random(seed)
    private var order = examples.indices.shuffled(random)
    private var pos = 0

    /** The next (batch, maxLength) batch, right-padded, cycling through a shuffled order. */
    fun next(batch: Int): Batch {
        val ids = LongArray(batch * maxLength) { padId }
        val labels = LongArray(batch * maxLength) { PhoneTrainer.IGNORE }
        val mask = LongArray(batch * maxLength)
        for (row in 0 until batch) {
            if (pos == order.size) {
                order = examples.indices.shuffled(random)
                pos = 0
            }
            val ex = examples[order[pos++]]
            val n = minOf(ex.inputIds.size, maxLength)
            val cut = ex.inputIds.size - n // cut the prompt from the left, as encode_pair does
            for (j in 0 until n) {
                ids[row * maxLength + j] = ex.inputIds[cut + j]
                labels[row * maxLength + j] = ex.labels[cut + j]
                mask[row * maxLength + j] = 1
            }
        }
        return Batch(ids, labels, mask, batch, maxLength)
    }

    /** The first [n] prompts, cut to the last [maxLength] tokens. */
    fun prompts(n: Int): List<LongArray> = examples.take(n).map { it.prompt.takeLast(maxLength).toLongArray() }

    companion object {
        private const val EOS = 2L
        private const val BYTE_OFFSET = 3L

        fun load(file: File, maxLength: Int, padId: Long, seed: Long): TrainData {
            val examples = file.readLines().filter { it.isNotBlank() }.map { line ->
                val o = JSONObject(line)
                if (o.has("input_ids")) {
                    val ids = o.getJSONArray("input_ids")
                    val labels = o.getJSONArray("labels")
                    require(ids.length() == labels.length()) { "input_ids and labels differ in length" }
                    Example(LongArray(ids.length()) { ids.getLong(it) }, LongArray(labels.length()) { labels.getLong(it) })
                } else {
                    val p = o.getString("prompt").toByteArray().map { (it.toLong() and 0xff) + BYTE_OFFSET }
                    val c = o.getString("completion").toByteArray().map { (it.toLong() and 0xff) + BYTE_OFFSET } + EOS
                    Example((p + c).toLongArray(), (p.map { PhoneTrainer.IGNORE } + c).toLongArray())
                }
            }
            require(examples.isNotEmpty()) { "$file holds no examples" }
            return TrainData(examples, maxLength, padId, seed)
        }
    }
}
