"""Event sinks: JSON Lines (file or stdout) and MQTT (events, periodic stats, availability)."""
from __future__ import annotations

import json
import logging
import sys
import threading

log = logging.getLogger(__name__)


class JsonlSink:
    def __init__(self, path: str = "-"):
        self._own = path != "-"
        self._f = open(path, "a", buffering=1) if self._own else sys.stdout  # line-buffered: tail -f works
        self._lock = threading.Lock()

    def emit(self, event: dict):
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._f.write(line + "\n")

    def close(self):
        with self._lock:
            self._f.flush()
            if self._own:
                self._f.close()


class MqttSink:
    """``<prefix>/events`` (each event), ``<prefix>/stats`` (every stats_interval_s),
    ``<prefix>/availability`` = online (retained), with a last will of ``offline``."""

    def __init__(self, host: str, port: int, prefix: str, stats, client_id: str = "",
                 stats_interval_s: float = 10.0):
        import paho.mqtt.client as mqtt
        self.prefix, self.stats, self.interval = prefix.rstrip("/"), stats, stats_interval_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        self.client.will_set(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 30)  # paho's own capped backoff when the broker drops
        self.client.on_connect = self._on_connect
        self._stop = threading.Event()
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        self._ticker = threading.Thread(target=self._tick, name="mqtt-stats", daemon=True)
        self._ticker.start()
        log.info("MQTT to %s:%d, topics %s/#", host, port, self.prefix)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        client.publish(f"{self.prefix}/availability", "online", qos=1, retain=True)

    def _tick(self):
        while not self._stop.wait(self.interval):
            self.publish_stats()

    def publish_stats(self):
        self.client.publish(f"{self.prefix}/stats", json.dumps(self.stats.snapshot()), qos=0)

    def emit(self, event: dict):
        self.client.publish(f"{self.prefix}/events", json.dumps(event, separators=(",", ":")), qos=0)

    def close(self, timeout: float = 0.8):
        """Final stats, then `offline` (retained), then disconnect — bounded by timeout."""
        self._stop.set()
        self.publish_stats()
        info = self.client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:  # not connected: the broker's last will says offline
            log.warning("MQTT offline not delivered (%s); the last will covers it", e)
        self.client.disconnect()
        self.client.loop_stop()
