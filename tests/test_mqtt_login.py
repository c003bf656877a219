"""MQTT as Home Assistant's Mosquitto add-on runs it: a login (password_file, no anonymous clients) and
TLS; two daemons with one client id are told so. A real Mosquitto, certificates made by openssl."""
import getpass
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.config import ConfigError, build
from edge_runtime.daemon import Daemon
from edge_runtime.stats import Stats
from edge_runtime.mqtt import MqttSink
from edge_runtime.synthetic import make_video

from .conftest import SHARED
from .edge_support import free_port, wait_for

USER, PASSWORD = "camera", "s3cr3t-Pw"


def _openssl(*args, cwd):
    exe = shutil.which("openssl")
    assert exe, "openssl is not installed (apt-get install openssl)"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    """Mosquitto with a password file and no anonymous access, on a plain and a TLS listener
    (server certificate signed by a CA made here). Yields (plain port, TLS port, CA file, folder)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    assert Path(exe).exists() and Path(passwd).exists(), "mosquitto is not installed (apt-get install mosquitto)"
    d = tmp_path_factory.mktemp("secured-broker")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)
    subprocess.run([passwd, "-c", "-b", str(d / "passwd"), USER, PASSWORD], check=True, capture_output=True)
    (d / "passwd").chmod(0o600)
    plain, tls = free_port(), free_port()
    (d / "m.conf").write_text(
        # started as root, Mosquitto would switch to its own user, which cannot read pytest's private folders
        f"user {getpass.getuser()}\n"
        f"per_listener_settings false\nallow_anonymous false\npassword_file {d / 'passwd'}\npersistence false\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n")
    proc = subprocess.Popen([exe, "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", tls)) == 0 and s.close() is None

    try:
        wait_for(up, 10)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1].decode()[-2000:]) from None
    yield plain, tls, d / "ca.crt", d
    proc.terminate()
    proc.wait(5)


class Listener:
    """A logged-in subscriber to prefix/# on the plain listener."""

    def __init__(self, port, prefix):
        self.msgs: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.username_pw_set(USER, PASSWORD)
        ready = threading.Event()
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload))
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _daemon_run(tmp_path, mqtt_section: dict, env=None, monkeypatch=None) -> tuple[Daemon, int]:
    video = tmp_path / "v.avi"
    if not video.exists():
        make_video(video, SHARED, n_faces=1, frames=20, face=140, seed=3)
    cfg = build(flags={"source": {"uri": str(video)}, "events": {"path": str(tmp_path / "ev.jsonl")},
                       "mqtt": {"host": "127.0.0.1", "stats_interval_s": 0.5, **mqtt_section}})
    d = Daemon(cfg)
    wait_for(lambda: not d.sinks[1]._down and d.sinks[1]._connected or d.sinks[1]._down, 10)
    return d, d.run()


def test_a_login_from_a_file_or_the_environment_and_never_shown(secured_broker, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    plain, _, _, _ = secured_broker
    cred = tmp_path / "mqtt-login"
    cred.write_text(f"{USER}:{PASSWORD}\n")
    sub = Listener(plain, "login")
    try:
        d, rc = _daemon_run(tmp_path, {"port": plain, "prefix": "login", "device_id": "cam-a",
                                       "credentials_file": str(cred)})
        assert rc == 0
        wait_for(lambda: any(t == "login/cam-a/events" for t, _ in sub.msgs), 10)
        monkeypatch.setenv("FER_EDGE_MQTT_CREDENTIALS", f"{USER}:{PASSWORD}")
        d2, rc = _daemon_run(tmp_path, {"port": plain, "prefix": "login", "device_id": "cam-env"})
        assert rc == 0
        wait_for(lambda: any(t == "login/cam-env/events" for t, _ in sub.msgs), 10)
    finally:
        sub.close()
    shown = caplog.text + json.dumps(d.stats.snapshot()) + d.stats.prometheus()
    assert f"as {USER}" in caplog.text and PASSWORD not in shown

    # a wrong password: refused by the broker, said so in the health, the daemon goes on
    monkeypatch.setenv("FER_EDGE_MQTT_CREDENTIALS", f"{USER}:wrong")
    stats = Stats()
    sink = MqttSink("127.0.0.1", plain, "login", stats, device_id="cam-bad",
                    credentials=(USER, "wrong"))
    try:
        wait_for(lambda: "mqtt" in stats.faults, 10)
        assert "connection refused" in stats.faults["mqtt"] and "wrong" not in stats.faults["mqtt"]
    finally:
        sink.close(timeout=0.2)
    # no login at all against a broker that wants one: the same
    monkeypatch.delenv("FER_EDGE_MQTT_CREDENTIALS")
    stats = Stats()
    sink = MqttSink("127.0.0.1", plain, "login", stats, device_id="cam-anon")
    try:
        wait_for(lambda: "mqtt" in stats.faults, 10)
        assert "connection refused" in stats.faults["mqtt"]
    finally:
        sink.close(timeout=0.2)
    # a credentials file that is not user:password: one clear line before anything starts
    cred.write_text("just-a-password\n")
    with pytest.raises(ConfigError, match="expected user:password"):
        _daemon_run(tmp_path, {"port": plain, "credentials_file": str(cred)})


def test_tls_with_the_brokers_ca_and_refused_without_it(secured_broker, tmp_path, monkeypatch):
    plain, tls, ca, d = secured_broker
    monkeypatch.setenv("FER_EDGE_MQTT_CREDENTIALS", f"{USER}:{PASSWORD}")
    sub = Listener(plain, "tls")
    try:
        daemon, rc = _daemon_run(tmp_path, {"port": tls, "prefix": "tls", "device_id": "cam-tls", "tls": True,
                                            "ca_file": str(ca)})
        assert rc == 0
        wait_for(lambda: any(t == "tls/cam-tls/events" for t, _ in sub.msgs), 10)
        assert any(t == "tls/cam-tls/availability" and p == b"online" for t, p in sub.msgs)
    finally:
        sub.close()
    # the system's CAs do not know this broker's: the connection is refused, not made in the clear
    stats = Stats()
    sink = MqttSink("127.0.0.1", tls, "tls", stats, device_id="cam-untrusted", credentials=(USER, PASSWORD),
                    tls={"ca_file": ""})
    try:
        wait_for(lambda: "mqtt" in stats.faults, 15)
        assert not sink._connected
    finally:
        sink.close(timeout=0.2)
    with pytest.raises(ConfigError, match="need mqtt.tls = true"):
        build(flags={"mqtt": {"host": "127.0.0.1", "ca_file": str(ca)}})
    with pytest.raises(ConfigError, match="go together"):
        build(flags={"mqtt": {"host": "127.0.0.1", "tls": True, "cert_file": str(ca)}})
    with pytest.raises(ConfigError, match="not a readable file"):
        build(flags={"mqtt": {"host": "127.0.0.1", "tls": True, "ca_file": str(d / "missing.crt")}})


def test_two_daemons_with_one_client_id_are_told_which_id_collides(secured_broker, caplog):
    plain, _, _, _ = secured_broker
    a_stats, b_stats = Stats(), Stats()
    a = MqttSink("127.0.0.1", plain, "clash", a_stats, client_id="fer-edge-door", device_id="door",
                 credentials=(USER, PASSWORD))
    try:
        wait_for(lambda: a._connected, 10)
        b = MqttSink("127.0.0.1", plain, "clash", b_stats, client_id="fer-edge-door", device_id="door",
                     credentials=(USER, PASSWORD))
        try:
            def told():
                return any("another client connected with this daemon's client id fer-edge-door" in s.faults.get("mqtt", "")
                           for s in (a_stats, b_stats))
            wait_for(told, 15)
            assert "another client connected with this daemon's client id fer-edge-door" in caplog.text
            assert "--device-id" in caplog.text
            # while the clash goes on, health stays degraded on both (no "ok" between two reconnects)
            time.sleep(3)
            samples = []
            for _ in range(20):
                samples.append(("mqtt" in a_stats.faults, "mqtt" in b_stats.faults))
                time.sleep(0.1)
            assert all(a_down and b_down for a_down, b_down in samples), samples
        finally:
            b.close(timeout=0.2)
        wait_for(lambda: "mqtt" not in a_stats.faults, 30)  # the other daemon gone: a's session lasts, health ok
    finally:
        a.close(timeout=0.2)
    time.sleep(0.1)
