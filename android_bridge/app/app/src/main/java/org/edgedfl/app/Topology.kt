package org.edgedfl.app

import java.math.BigDecimal
import java.math.RoundingMode
import kotlin.math.sqrt

/**
 * A port of what a phone needs from edgedfl/topology (clustering.py, graph.py, signatures.py) so it
 * agrees with every Python node on clusters, neighbours and Metropolis weights without a
 * coordinator: agglomerative average linkage on cosine distance, K by silhouette top-down with the
 * split floor, canonical slots by smallest node id; the degree-bounded link-aware neighbour graph;
 * Metropolis-Hastings weights. Only the default clustering (method "agglomerative", automatic K)
 * is ported; the k-means variant needs numpy's random generator.
 *
 * Rounding follows Python exactly where it decides anything: `np.round` (scale, rint, unscale) on
 * the distance matrix and Python's `round()` (correctly rounded, half-even) on merge heights and
 * silhouettes.
 */
object Topology {
    private const val DECIMALS = 9
    const val MIN_SILHOUETTE = 0.5
    const val MIN_SPLIT_DISTANCE = 0.01

    private fun npRound(x: Double): Double = Math.rint(x * 1e9) / 1e9
    private fun pyRound(x: Double): Double = BigDecimal(x).setScale(DECIMALS, RoundingMode.HALF_EVEN).toDouble()

    private fun normalise(v: DoubleArray): DoubleArray {
        val n = sqrt(v.sumOf { it * it })
        require(n.isFinite() && n > 0) { "signature cannot be normalised" }
        return DoubleArray(v.size) { v[it] / n }
    }

    /** Pairwise cosine distances, symmetric, zero diagonal, clipped to [0, 2], on the 1e-9 grid. */
    fun distanceMatrix(sigs: List<DoubleArray>): Array<DoubleArray> {
        val unit = sigs.map { normalise(it) }
        val n = unit.size
        val raw = Array(n) { i -> DoubleArray(n) { j -> 1.0 - unit[i].indices.sumOf { k -> unit[i][k] * unit[j][k] } } }
        return Array(n) { i ->
            DoubleArray(n) { j ->
                if (i == j) 0.0 else npRound((0.5 * (raw[i][j] + raw[j][i])).coerceIn(0.0, 2.0))
            }
        }
    }

    private fun meanBetween(d: Array<DoubleArray>, a: List<Int>, b: List<Int>): Double {
        var s = 0.0
        for (i in a) for (j in b) s += d[i][j]
        return s / (a.size * b.size)
    }

    private data class Merge(val a: List<Int>, val b: List<Int>, val height: Double)

    private fun averageLinkage(d: Array<DoubleArray>): List<Merge> {
        var active: List<List<Int>> = d.indices.map { listOf(it) }
        val merges = ArrayList<Merge>()
        while (active.size > 1) {
            var best: Triple<Double, Int, Int>? = null
            var bestXY = 0 to 0
            for (x in active.indices) for (y in x + 1 until active.size) {
                val h = pyRound(meanBetween(d, active[x], active[y]))
                val lo = minOf(active[x].min(), active[y].min())
                val hi = maxOf(active[x].min(), active[y].min())
                val key = Triple(h, lo, hi)
                if (best == null || compareValuesBy(key, best, { it.first }, { it.second }, { it.third }) < 0) {
                    best = key
                    bestXY = x to y
                }
            }
            val (x, y) = bestXY
            merges.add(Merge(active[x], active[y], best!!.first))
            val merged = (active[x] + active[y]).sorted()
            active = (active.filterIndexed { k, _ -> k != x && k != y } + listOf(merged)).sortedBy { it.min() }
        }
        return merges
    }

    private fun cut(n: Int, merges: List<Merge>, k: Int): List<List<Int>> {
        var clusters: List<List<Int>> = (0 until n).map { listOf(it) }
        for (m in merges.take(n - k)) {
            clusters = clusters.filter { it != m.a && it != m.b } + listOf((m.a + m.b).sorted())
        }
        return clusters.sortedBy { it.min() }
    }

    private fun median(v: List<Double>): Double {
        val s = v.sorted()
        return if (s.size % 2 == 1) s[s.size / 2] else 0.5 * (s[s.size / 2 - 1] + s[s.size / 2])
    }

    /** Mean silhouette with edgedfl's singleton rule (a lone point gets the median within-distance). */
    fun silhouette(d: Array<DoubleArray>, labels: IntArray): Double {
        val n = d.size
        val uniq = labels.distinct().sorted()
        if (uniq.size < 2 || uniq.size >= n) return 0.0
        val sizes = uniq.associateWith { u -> labels.count { it == u } }
        val within = DoubleArray(n) { Double.NaN }
        val between = DoubleArray(n)
        for (i in 0 until n) {
            if (sizes.getValue(labels[i]) > 1) {
                within[i] = (0 until n).filter { labels[it] == labels[i] }.sumOf { d[i][it] } / (sizes.getValue(labels[i]) - 1)
            }
            between[i] = uniq.filter { it != labels[i] }.minOf { u ->
                val idx = (0 until n).filter { labels[it] == u }
                idx.sumOf { d[i][it] } / idx.size
            }
        }
        val typical = median(within.filter { !it.isNaN() })
        var total = 0.0
        for (i in 0 until n) {
            val a = if (within[i].isNaN()) typical else within[i]
            val denom = maxOf(a, between[i])
            total += if (denom > 0) (between[i] - a) / denom else 0.0
        }
        return pyRound(total / n)
    }

    private fun labelsOf(n: Int, clusters: List<List<Int>>): IntArray {
        val labels = IntArray(n)
        clusters.forEachIndexed { k, c -> c.forEach { labels[it] = k } }
        return labels
    }

    private fun bestSplit(d: Array<DoubleArray>, maxK: Int): List<List<Int>>? {
        val m = d.size
        if (m < 3 || maxK < 2) return null
        val merges = averageLinkage(d)
        var best: Pair<Double, List<List<Int>>>? = null
        for (k in 2..minOf(maxK, m - 1)) {
            if (merges[m - k].height < MIN_SPLIT_DISTANCE) continue
            val clusters = cut(m, merges, k)
            val score = silhouette(d, labelsOf(m, clusters))
            if (best == null || score > best.first) best = score to clusters
        }
        return if (best != null && best.first >= MIN_SILHOUETTE) best.second else null
    }

    /** node -> slot, identical to `edgedfl.topology.cluster(signatures, ClusterConfig(max_clusters))`. */
    fun cluster(signatures: Map<String, FloatArray>, maxClusters: Int): Map<String, Int> {
        val ids = signatures.keys.sorted()
        val n = ids.size
        val d = distanceMatrix(ids.map { id -> signatures.getValue(id).map { it.toDouble() }.toDoubleArray() })
        var clusters: List<List<Int>> = listOf((0 until n).toList())
        if (n == 2 && maxClusters > 1) {
            if (d[0][1] >= MIN_SPLIT_DISTANCE && d[0][1] > 0) clusters = listOf(listOf(0), listOf(1))
        } else if (n > 2 && maxClusters > 1) {
            var changed = true
            while (changed && clusters.size < maxClusters) {
                changed = false
                for ((pos, group) in clusters.withIndex()) {
                    val sub = Array(group.size) { i -> DoubleArray(group.size) { j -> d[group[i]][group[j]] } }
                    val parts = bestSplit(sub, maxClusters - clusters.size + 1) ?: continue
                    val mapped = parts.map { p -> p.map { group[it] } }
                    clusters = (clusters.take(pos) + mapped + clusters.drop(pos + 1)).sortedBy { it.min() }
                    changed = true
                    break
                }
            }
        }
        // canonical slots: clusters ordered by their smallest node id (ids are sorted, so by min index)
        val out = HashMap<String, Int>()
        clusters.sortedBy { it.min() }.forEachIndexed { slot, c -> c.forEach { out[ids[it]] = slot } }
        return out
    }

    /** Edges (a < b) of one cluster's gossip graph: each member's [degree] best links, then connected. */
    fun neighbourGraph(members: Collection<String>, quality: Map<Pair<String, String>, Double>, degree: Int): Set<Pair<String, String>> {
        val nodes = members.toSortedSet().toList()
        val n = nodes.size
        // the worse direction if both are known, else the known one, else 0 (graph.link_score)
        fun score(a: String, b: String): Double =
            listOfNotNull(quality[a to b], quality[b to a]).minOrNull() ?: 0.0
        fun ring(i: Int, j: Int): Int = minOf(Math.floorMod(i - j, n), Math.floorMod(j - i, n))
        val edges = HashSet<Pair<String, String>>()
        for ((i, a) in nodes.withIndex()) {
            val ranked = nodes.filter { it != a }.sortedWith(
                compareBy<String>({ -score(a, it) }, { ring(i, nodes.indexOf(it)) }, { Math.floorMod(nodes.indexOf(it) - i, n) })
            )
            for (b in ranked.take(degree)) edges.add(if (a < b) a to b else b to a)
        }
        while (true) {
            val comp = components(nodes, edges)
            if (comp.values.toSet().size <= 1) break
            var best: Triple<Double, String, String>? = null
            for (i in nodes.indices) for (j in i + 1 until n) {
                val a = nodes[i]; val b = nodes[j]
                if (comp[a] == comp[b]) continue
                val key = Triple(-score(a, b), a, b)
                if (best == null || compareValuesBy(key, best, { it.first }, { it.second }, { it.third }) < 0) best = key
            }
            edges.add(best!!.second to best.third)
        }
        return edges
    }

    private fun components(nodes: List<String>, edges: Set<Pair<String, String>>): Map<String, Int> {
        val comp = HashMap<String, Int>()
        var k = 0
        for (start in nodes) {
            if (start in comp) continue
            val stack = ArrayDeque(listOf(start))
            while (stack.isNotEmpty()) {
                val v = stack.removeLast()
                if (v in comp) continue
                comp[v] = k
                edges.forEach { (a, b) -> if (a == v && b !in comp) stack.add(b) else if (b == v && a !in comp) stack.add(a) }
            }
            k++
        }
        return comp
    }

    /** This node's row of the Metropolis-Hastings weights: w_ij = 1 / (1 + max(deg_i, deg_j)), w_ii = rest. */
    fun metropolisRow(me: String, edges: Set<Pair<String, String>>): Map<String, Double> {
        fun neighbours(v: String) = edges.mapNotNull { (a, b) -> if (a == v) b else if (b == v) a else null }
        val mine = neighbours(me)
        val row = HashMap<String, Double>()
        for (j in mine) row[j] = 1.0 / (1 + maxOf(mine.size, neighbours(j).size))
        row[me] = 1.0 - row.values.sum()
        return row.toSortedMap()
    }

    /** (own weight, peer -> weight) for the peers that arrived: a missing neighbour's weight stays with me. */
    fun presentWeights(row: Map<String, Double>, me: String, present: Set<String>): Pair<Double, Map<String, Double>> {
        val peers = row.filter { (p, _) -> p != me && p in present }.toSortedMap()
        return (1.0 - peers.values.sum()) to peers
    }
}
