"""The MQTT sink: events, periodic stats and the Home Assistant state of one daemon under
``<prefix>/<device id>/``, its availability (last will), and Home Assistant discovery."""
from __future__ import annotations

import json
import logging
import threading
import time

from .sinks import Sink, node_id
from .stats import RecentEvents

log = logging.getLogger(__name__)


# the topics a daemon publishes under <prefix>/<device id>/ (and, before device ids, under <prefix>/)
TOPICS = ("events", "stats", "state", "availability")
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 reason code: a newer connection with the same client id replaced ours
SHORT_SESSION_S = 5.0  # closed sooner than this after the broker accepted us: a client-id clash, if it repeats


class MqttSink(Sink):
    """``<prefix>/events`` (each event), ``<prefix>/stats`` and ``<prefix>/state`` (every
    stats_interval_s; state is what Home Assistant shows: faces, dominant emotion, each emotion's
    share over the last minute), ``<prefix>/availability`` = online (retained), with a last will of
    ``offline``. With ``discovery``, Home Assistant MQTT discovery configs (retained) make one device
    with those sensors, re-published whenever Home Assistant announces itself on ``<discovery>/status``.
    Events the broker cannot take (down, reconnecting) wait in a queue of ``queue`` events and are
    published, in order, once it is back; beyond that the oldest are dropped and counted
    (``events_dropped``), as are those still queued at exit."""

    def __init__(self, host: str, port: int, prefix: str, stats, client_id: str = "",
                 stats_interval_s: float = 10.0, discovery: bool = False, discovery_prefix: str = "homeassistant",
                 queue: int = 1000, device_id: str = "", credentials: tuple[str, str] | None = None,
                 tls: dict | None = None):
        import collections

        import paho.mqtt.client as mqtt
        self._ok = mqtt.MQTT_ERR_SUCCESS
        self._backlog: collections.deque = collections.deque()
        self._queue_max = queue
        self._qlock = threading.Lock()
        self._connected = False
        # every topic of this daemon lives under <prefix>/<device id>: several daemons share a broker
        self.node_id = device_id or node_id(client_id)
        self.prefix, self.stats, self.interval = f"{prefix.rstrip('/')}/{self.node_id}", stats, stats_interval_s
        self.recent = RecentEvents()  # what <prefix>/state reports: faces now, the last minute's mood
        self.discovery_prefix = discovery_prefix.rstrip("/") if discovery else ""
        self.client_id = client_id or f"fer-edge-{self.node_id}"
        # MQTT 5: the broker says why it drops us (e.g. "session taken over": another client with our id)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        if credentials is not None:
            self.client.username_pw_set(*credentials)
        if tls is not None:
            # keyfile_password "": an encrypted key fails at once instead of prompting on a terminal
            self.client.tls_set(ca_certs=tls.get("ca_file") or None, certfile=tls.get("cert_file") or None,
                                keyfile=tls.get("key_file") or None, keyfile_password="")
        self.client.will_set(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 30)  # paho's own capped backoff when the broker drops
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.where = f"{host}:{port}"
        self._down = False
        self._said = ("", 0.0)  # the last warning and when it was logged
        self._connected_at, self._short_sessions = 0.0, 0  # connections the broker closed within seconds
        self._last_stats = time.monotonic()
        self._ever_connected = False
        self._stop = threading.Event()
        self.client.connect_async(host, port, keepalive=30, clean_start=True)
        self.client.loop_start()
        self._ticker = threading.Thread(target=self._tick, name="mqtt-stats", daemon=True)
        self._ticker.start()
        log.info("MQTT to %s:%d%s%s, topics %s/#%s", host, port, " over TLS" if tls is not None else "",
                 f" as {credentials[0]}" if credentials else "", self.prefix,
                 f", Home Assistant discovery under {self.discovery_prefix}/" if discovery else "")


    @classmethod
    def from_config(cls, q, stats, device_id: str) -> "MqttSink":
        """From the config's ``[mqtt]`` section (``config.MqttConfig``): the login from its credentials
        file or $FER_EDGE_MQTT_CREDENTIALS, TLS when asked. A login or certificate that cannot be used
        is a ConfigError, said before anything connects."""
        from .config import ConfigError
        from .credentials import MQTT_ENV, CredentialsError, read_credentials
        try:
            login = read_credentials(q.credentials_file, MQTT_ENV, "mqtt.credentials_file")
        except CredentialsError as e:
            raise ConfigError(str(e)) from None
        tls = {"ca_file": q.ca_file, "cert_file": q.cert_file, "key_file": q.key_file} if q.tls else None
        try:
            return cls(q.host, q.port, q.prefix, stats, q.client_id, q.stats_interval_s, q.discovery,
                       q.discovery_prefix, q.queue, device_id, login, tls)
        except (OSError, ValueError) as e:  # a CA or client certificate that does not load
            hint = " (a key file protected by a passphrase cannot be used: store it decrypted, readable " \
                "only by the daemon's user)" if q.key_file else ""
            raise ConfigError(f"mqtt TLS: {e}{hint}") from None
    def _broker_down(self, reason: str):
        """Health degraded until the broker is back (paho keeps reconnecting with its backoff)."""
        self.stats.fault("mqtt", f"MQTT broker {self.where}: {reason}")
        now = time.monotonic()
        if reason != self._said[0] or now - self._said[1] > 60:  # a flapping connection: once a minute
            log.warning("MQTT broker %s: %s; events are not published until it is back", self.where, reason)
            self._said = (reason, now)
        self._down = True

    def _on_connect_fail(self, client, userdata):
        self._broker_down("unreachable")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        was, self._connected = self._connected, False
        if self._stop.is_set() or (not was and self._down):  # a refused connect already said why
            return
        # MQTT 5 brokers may say "session taken over"; others (Mosquitto 2.0) just close the older of two
        # connections with one client id, which then reconnects and closes the other: short sessions
        short = time.monotonic() - self._connected_at < SHORT_SESSION_S
        self._short_sessions = self._short_sessions + 1 if short else 0
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER or self._short_sessions >= 2:
            self._broker_down(f"another client connected with this daemon's client id {self.client_id} (the broker "
                              "keeps closing one of the two): give each daemon its own mqtt.device_id "
                              "(--device-id), or its own mqtt.client_id")
        else:
            self._broker_down(f"disconnected ({reason_code})")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._broker_down(f"connection refused ({reason_code})")
            return
        if self._short_sessions < 2:  # during a client-id clash the fault stays until a session lasts
            if self._down:
                log.info("MQTT broker %s connected again", self.where)
            self._down = False
            self.stats.fault("mqtt", None)
        client.publish(f"{self.prefix}/availability", "online", qos=1, retain=True)
        self._connected, self._connected_at, self._ever_connected = True, time.monotonic(), True
        # not here, under paho's callback lock: the queue's lock may be held by emit() inside publish()
        threading.Thread(target=self._flush_queued, name="mqtt-flush", daemon=True).start()
        if self.discovery_prefix:
            client.subscribe(f"{self.discovery_prefix}/status", qos=1)
            self.publish_discovery()

    def _on_message(self, client, userdata, msg):
        if msg.topic == f"{self.discovery_prefix}/status" and msg.payload == b"online":
            self.publish_discovery()  # Home Assistant restarted: it forgets non-retained state
            self.publish_stats()

    def publish_discovery(self):
        for topic, payload in discovery_configs(self.prefix, self.discovery_prefix, self.node_id,
                                                self.stats.info).items():
            self.client.publish(topic, json.dumps(payload), qos=1, retain=True)

    def _tick(self):
        while not self._stop.wait(min(self.interval, SHORT_SESSION_S)):
            if self._connected and self._short_sessions and time.monotonic() - self._connected_at > SHORT_SESSION_S:
                self._short_sessions, self._down = 0, False  # the clash is over: this session lasted
                self.stats.fault("mqtt", None)
                log.info("MQTT broker %s: the connection holds again", self.where)
            if time.monotonic() - self._last_stats >= self.interval:
                self.publish_stats()

    def publish_stats(self):
        self._last_stats = time.monotonic()
        self.client.publish(f"{self.prefix}/stats", json.dumps(self.stats.snapshot()), qos=0)
        self.client.publish(f"{self.prefix}/state", json.dumps(self.recent.mood(self.stats.tracks_active)), qos=0,
                            retain=True)

    def observe(self, event: dict) -> None:
        self.recent.record(event)

    def emit(self, event: dict):
        payload = json.dumps(event, separators=(",", ":"))
        with self._qlock:
            self._backlog.append(payload)
            while len(self._backlog) > self._queue_max:
                self._backlog.popleft()
                self.stats.inc("events_dropped")
            if self._connected:
                self._flush()

    def _flush_queued(self):
        with self._qlock:
            self._flush()

    def _flush(self):
        """Publish the queue in order (caller holds _qlock); stop at the first refusal, keeping the rest."""
        while self._backlog:
            if self.client.publish(f"{self.prefix}/events", self._backlog[0], qos=0).rc != self._ok:
                return
            self._backlog.popleft()

    def close(self, timeout: float = 0.8):
        """Final stats, then `offline` (retained), then disconnect — bounded by timeout."""
        self._stop.set()
        self.publish_stats()
        info = self.client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:  # not connected: the broker's last will says offline
            if self._ever_connected:
                log.warning("MQTT offline not delivered (%s); the last will covers it", e)
            else:
                log.warning("MQTT: never connected to %s, so nothing was published", self.where)
        self.client.disconnect()
        self.client.loop_stop()
        with self._qlock:
            if self._backlog:
                self.stats.inc("events_dropped", len(self._backlog))
                log.warning("MQTT: %d queued event(s) not delivered before exit", len(self._backlog))
                self._backlog.clear()
        dropped = self.stats.counters.get("events_dropped", 0)
        if dropped:
            log.warning("events dropped in all (a full queue, a failed write, exit): %d", dropped)


def discovery_configs(prefix: str, discovery_prefix: str, node: str, info: dict) -> dict[str, dict]:
    """Home Assistant MQTT discovery: topic -> config, one sensor each for the dominant emotion,
    the number of faces and each emotion's share, all reading the one JSON ``<prefix>/state``."""
    from importlib import metadata

    from .labels import LABELS
    try:
        version = metadata.version("fer-edge")
    except metadata.PackageNotFoundError:
        version = "dev"
    device = {"identifiers": [f"fer_edge_{node}"], "name": f"fer-edge {node}", "manufacturer": "fer-edge",
              "model": f"facial emotion ({info.get('artifact', 'model')}, {info.get('detector', 'detector')})",
              "sw_version": version}
    common = {"state_topic": f"{prefix}/state", "availability_topic": f"{prefix}/availability",
              "payload_available": "online", "payload_not_available": "offline", "device": device}
    sensors = {"emotion": {"name": "Emotion", "value_template": "{{ value_json.dominant }}",
                           "icon": "mdi:emoticon-outline"},
               "faces": {"name": "Faces", "value_template": "{{ value_json.faces }}", "state_class": "measurement",
                         "icon": "mdi:account-group"}}
    for lab in LABELS:
        sensors[f"share_{lab}"] = {"name": f"{lab.capitalize()} share", "unit_of_measurement": "%",
                                   "value_template": "{{ value_json.shares_pct.%s }}" % lab, "state_class": "measurement"}
    return {f"{discovery_prefix}/sensor/{node}/{obj}/config": {**common, **cfg, "unique_id": f"fer_edge_{node}_{obj}"}
            for obj, cfg in sensors.items()}
