package org.edgedfl.app

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.os.PowerManager
import android.util.Log
import androidx.core.app.NotificationCompat
import androidx.core.app.ServiceCompat
import java.io.File
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow

/**
 * The foreground service that keeps a phone in the swarm while the screen is off: it holds a
 * partial wake lock, runs [PhoneNode] on one worker thread (training, MQTT handling and the round
 * logic all happen there, as in the Python node) and shows the node's state in its notification.
 */
class SwarmService : Service() {
    private var worker: Thread? = null
    private var node: PhoneNode? = null
    private var wakeLock: PowerManager.WakeLock? = null

    override fun onBind(intent: Intent?): IBinder? = null

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        if (intent?.action == ACTION_STOP) {
            node?.stopRequested = true
            stopSelf()
            return START_NOT_STICKY
        }
        if (worker?.isAlive == true) return START_NOT_STICKY
        val extras = requireNotNull(intent?.extras) { "SwarmService needs node, broker and bundle extras" }
        val cfg = PhoneConfig(
            nodeId = extras.getString(EXTRA_NODE)!!,
            brokerUrl = extras.getString(EXTRA_BROKER)!!,
            bundleDir = File(extras.getString(EXTRA_BUNDLE)!!),
            dataFile = File(extras.getString(EXTRA_DATA)!!),
            stateDir = File(filesDir, "state/${extras.getString(EXTRA_NODE)}"),
        )
        ServiceCompat.startForeground(
            this, NOTIFICATION_ID, notification("starting"),
            if (Build.VERSION.SDK_INT >= 29) ServiceInfo.FOREGROUND_SERVICE_TYPE_DATA_SYNC else 0,
        )
        wakeLock = (getSystemService(Context.POWER_SERVICE) as PowerManager)
            .newWakeLock(PowerManager.PARTIAL_WAKE_LOCK, "edgedfl:swarm").apply { acquire(6 * 60 * 60 * 1000L) }
        worker = Thread({
            try {
                PhoneNode(cfg, ::report).also { node = it }.run()
            } catch (e: Exception) {
                Log.e(TAG, "node failed", e)
                report("failed: ${e.javaClass.simpleName}: ${e.message}")
            } finally {
                stopSelf()
            }
        }, "edgedfl-node").apply { start() }
        return START_NOT_STICKY
    }

    private fun report(text: String) {
        Log.i(TAG, text)
        state.value = text
        getSystemService(NotificationManager::class.java).notify(NOTIFICATION_ID, notification(text))
    }

    private fun notification(text: String): Notification {
        val nm = getSystemService(NotificationManager::class.java)
        if (Build.VERSION.SDK_INT >= 26 && nm.getNotificationChannel(CHANNEL) == null) {
            nm.createNotificationChannel(NotificationChannel(CHANNEL, "Swarm", NotificationManager.IMPORTANCE_LOW))
        }
        return NotificationCompat.Builder(this, CHANNEL)
            .setContentTitle("edgedfl swarm")
            .setContentText(text)
            .setSmallIcon(android.R.drawable.stat_notify_sync)
            .setOngoing(true)
            .build()
    }

    override fun onDestroy() {
        node?.stopRequested = true
        wakeLock?.takeIf { it.isHeld }?.release()
        super.onDestroy()
    }

    companion object {
        private const val TAG = "edgedfl.service"
        private const val CHANNEL = "edgedfl"
        private const val NOTIFICATION_ID = 1
        const val ACTION_STOP = "org.edgedfl.app.STOP"
        const val EXTRA_NODE = "node"
        const val EXTRA_BROKER = "broker"
        const val EXTRA_BUNDLE = "bundle"
        const val EXTRA_DATA = "data"

        private val state = MutableStateFlow("idle")
        /** The node's latest status line, for the activity. */
        val status: StateFlow<String> get() = state
    }
}
