"""Event sinks: JSON Lines (file or stdout) and MQTT (events, periodic stats, availability)."""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)


class JsonlSink:
    """JSON Lines to a file (appended, one write per event) or stdout (flushed per event).

    A failed write (a full disk) drops that event whole, counts it and degrades health until a write
    succeeds again. A closed stdout pipe cannot come back: ``on_closed`` is called once and output
    stops. ``reopen()`` (SIGHUP) reopens the file after log rotation."""

    WARN_EVERY_S = 60.0  # a full disk logs once a minute, not once per event

    def __init__(self, path: str = "-", stats=None, on_closed=None):
        self.path, self.stats, self.on_closed = path, stats, on_closed
        self._own = path != "-"
        self._lock = threading.Lock()
        self._f = self._open() if self._own else None
        self._failing, self._warned, self.closed = False, 0.0, False

    def _open(self):
        return open(self.path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing queued

    def emit(self, event: dict):
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.closed:
                return
            try:
                self._write(data)
            except BrokenPipeError:
                self._pipe_closed()
            except (OSError, ValueError) as e:  # ValueError: a file closed under us
                self._failed(e)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("events %s writable again", self._name())
                    if self.stats:
                        self.stats.fault("events", None)

    def _write(self, data: bytes):
        if not self._own:
            sys.stdout.write(data.decode())
            sys.stdout.flush()  # a pipe is block-buffered: without this, readers wait for 8 KB
            return
        if self._f is None:  # reopening failed earlier: try again with each event
            self._f = self._open()
        start = self._f.tell()
        try:
            self._f.write(data)
        except OSError:
            try:
                self._f.truncate(start)  # no half line: the file stays valid JSON Lines
            except OSError:
                pass
            raise

    def _name(self) -> str:
        return "stdout" if not self._own else self.path

    def _failed(self, e: Exception):
        if self.stats:
            self.stats.inc("sink_errors")
            self.stats.fault("events", f"events {self._name()}: {getattr(e, 'strerror', None) or e}")
        now = time.monotonic()
        if not self._failing or now - self._warned > self.WARN_EVERY_S:
            log.warning("events %s: write failed (%s); events are dropped until it works again", self._name(), e)
            self._warned = now
        self._failing = True

    def _pipe_closed(self):
        self.closed = True
        try:  # later writes by the interpreter (its exit flush) must not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        if self.on_closed:
            self.on_closed(f"events output {self._name()} closed (broken pipe)")

    def reopen(self):
        """Close and reopen the events file (log rotation moved it); stdout needs nothing."""
        if not self._own:
            return
        with self._lock:
            try:
                if self._f is not None:
                    self._f.close()
            except OSError:
                pass
            self._f = None
            try:
                self._f = self._open()
            except OSError as e:
                self._failed(e)
                return
        log.info("events file %s reopened", self.path)

    def close(self):
        with self._lock:
            if self._own:
                if self._f is not None:
                    self._f.close()
            elif not self.closed:
                try:
                    sys.stdout.flush()
                except (OSError, ValueError):
                    pass


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
