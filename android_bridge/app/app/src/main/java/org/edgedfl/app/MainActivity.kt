package org.edgedfl.app

import android.Manifest
import android.content.Intent
import android.os.Build
import android.os.Bundle as AndroidBundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import androidx.lifecycle.lifecycleScope
import java.io.File
import kotlinx.coroutines.launch

/**
 * Settings and status: node id, broker URL, where the bundle and the local data are, Start/Stop.
 * The bundle folder is what `edgedfl android export` wrote, copied to the app's files directory
 * (README.md: `adb push` + `run-as`).
 */
class MainActivity : AppCompatActivity() {
    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        if (Build.VERSION.SDK_INT >= 33) requestPermissions(arrayOf(Manifest.permission.POST_NOTIFICATIONS), 0)
        val prefs = getSharedPreferences("edgedfl", MODE_PRIVATE)
        val defaultBundle = File(filesDir, "bundle")
        fun field(hint: String, key: String, default: String) = EditText(this).apply {
            this.hint = hint
            setText(prefs.getString(key, default))
        }
        val node = field("node id ([A-Za-z0-9._-])", "node", "phone0")
        val broker = field("broker URL", "broker", Bundle.runCatching { load(defaultBundle).brokerUrl }.getOrNull() ?: "mqtt://192.168.1.10:1883")
        val bundleDir = field("bundle folder", "bundle", defaultBundle.path)
        val data = field("training data (JSONL)", "data", File(defaultBundle, "train.jsonl").path)
        val status = TextView(this).apply { textSize = 16f }
        val start = Button(this).apply {
            text = "Join swarm"
            setOnClickListener {
                prefs.edit().putString("node", node.text.toString()).putString("broker", broker.text.toString())
                    .putString("bundle", bundleDir.text.toString()).putString("data", data.text.toString()).apply()
                val intent = Intent(this@MainActivity, SwarmService::class.java)
                    .putExtra(SwarmService.EXTRA_NODE, node.text.toString())
                    .putExtra(SwarmService.EXTRA_BROKER, broker.text.toString())
                    .putExtra(SwarmService.EXTRA_BUNDLE, bundleDir.text.toString())
                    .putExtra(SwarmService.EXTRA_DATA, data.text.toString())
                ContextCompat.startForegroundService(this@MainActivity, intent)
            }
        }
        val stop = Button(this).apply {
            text = "Leave"
            setOnClickListener {
                startService(Intent(this@MainActivity, SwarmService::class.java).setAction(SwarmService.ACTION_STOP))
            }
        }
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
            listOf(node, broker, bundleDir, data, start, stop, status).forEach { addView(it) }
        })
        lifecycleScope.launch { SwarmService.status.collect { status.text = it } }
    }
}
