package org.edgedfl.app

import android.net.Uri
import android.util.Log
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import org.eclipse.paho.client.mqttv3.IMqttDeliveryToken
import org.eclipse.paho.client.mqttv3.MqttCallbackExtended
import org.eclipse.paho.client.mqttv3.MqttClient
import org.eclipse.paho.client.mqttv3.MqttConnectOptions
import org.eclipse.paho.client.mqttv3.MqttMessage
import org.eclipse.paho.client.mqttv3.persist.MemoryPersistence

/** One received MQTT message, as the network thread enqueued it. */
class Incoming(val topic: String, val payload: ByteArray, val retained: Boolean)

/**
 * The phone's MQTT connection (Eclipse Paho, MQTT 3.1.1), used the way edgedfl's Python transport
 * uses paho (edgedfl/transport/mqtt.py): a persistent session (clean session off, client id = node
 * id), a retained "offline" last will on the presence topic, subscriptions made again after every
 * reconnect, QoS 1 publishes that wait for the PUBACK, and a callback that only enqueues.
 *
 * URL: `mqtt://host:port[?max_payload=N&keepalive=S]` (or `mqtts://`), the form `edgedfl broker`
 * prints. A payload over `max_payload` (the broker's message_size_limit) is refused before sending:
 * Mosquitto drops an oversize MQTT 3.1.1 publish silently.
 */
class MqttLink(url: String, clientId: String, willTopic: String, willPayload: ByteArray) : MqttCallbackExtended {
    private val uri = Uri.parse(url)
    val maxPayload: Int = uri.getQueryParameter("max_payload")?.toInt() ?: MQTT_MAX_PACKET
    private val keepalive: Int = uri.getQueryParameter("keepalive")?.toInt() ?: 60
    private val client: MqttClient
    private val subscriptions = LinkedHashSet<String>()
    val inbox = LinkedBlockingQueue<Incoming>(10_000)
    @Volatile var dropped = 0
        private set

    init {
        val scheme = when (uri.scheme) {
            "mqtt" -> "tcp"
            "mqtts" -> "ssl"
            else -> throw IllegalArgumentException("broker URL must be mqtt:// or mqtts://, got $url")
        }
        val port = if (uri.port > 0) uri.port else if (scheme == "ssl") 8883 else 1883
        client = MqttClient("$scheme://${uri.host}:$port", clientId, MemoryPersistence())
        client.setCallback(this)
        client.timeToWait = 30_000 // PUBACK / SUBACK wait, ms
        val opts = MqttConnectOptions().apply {
            isCleanSession = false
            keepAliveInterval = keepalive
            connectionTimeout = 10
            isAutomaticReconnect = true
            maxReconnectDelay = 30_000
            mqttVersion = MqttConnectOptions.MQTT_VERSION_3_1_1
            maxInflight = 64
            uri.userInfo?.split(":", limit = 2)?.let { parts ->
                userName = Uri.decode(parts[0])
                if (parts.size > 1) password = Uri.decode(parts[1]).toCharArray()
            }
            setWill(willTopic, willPayload, 1, true)
        }
        client.connect(opts) // throws MqttException: the first connect is never retried silently
    }

    val connected: Boolean get() = client.isConnected

    fun subscribe(filter: String) {
        synchronized(subscriptions) { subscriptions.add(filter) }
        if (client.isConnected) client.subscribe(filter, 1)
    }

    fun unsubscribe(filter: String) {
        synchronized(subscriptions) { subscriptions.remove(filter) }
        if (client.isConnected) client.unsubscribe(filter)
    }

    /** QoS 1 publish; returns once the broker acknowledged it. Throws on an oversize payload or a dead link. */
    fun publish(topic: String, payload: ByteArray, retain: Boolean = false) {
        require(payload.size <= maxPayload) { "payload of ${payload.size} bytes on $topic is over the broker limit $maxPayload" }
        client.publish(topic, payload, 1, retain)
    }

    fun receive(timeoutMs: Long): Incoming? = inbox.poll(timeoutMs, TimeUnit.MILLISECONDS)

    fun close() {
        try {
            if (client.isConnected) client.disconnect(2_000)
        } finally {
            client.close()
        }
    }

    // -- callbacks (Paho's thread): decode nothing, never block ------------------------------

    override fun connectComplete(reconnect: Boolean, serverURI: String) {
        Log.i(TAG, "connected to $serverURI (reconnect=$reconnect)")
        if (reconnect) {
            val filters = synchronized(subscriptions) { subscriptions.toList() }
            Thread { filters.forEach { runCatching { client.subscribe(it, 1) } } }.start()
        }
    }

    override fun connectionLost(cause: Throwable?) {
        Log.w(TAG, "connection lost: ${cause?.message}; Paho reconnects")
    }

    override fun messageArrived(topic: String, message: MqttMessage) {
        if (!inbox.offer(Incoming(topic, message.payload, message.isRetained))) dropped++
    }

    override fun deliveryComplete(token: IMqttDeliveryToken?) {}

    companion object {
        private const val TAG = "edgedfl.mqtt"
        const val MQTT_MAX_PACKET = 268_435_455
    }
}
