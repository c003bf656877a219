"""What real clients see (issue 34): a stream's credentials on no surface (logs, /healthz, /metrics, /latest,
MQTT stats), credentials from a file instead of the command line, and /metrics that Prometheus' own
promtool accepts. A real Mosquitto, the real promtool (Debian's prometheus package), no TensorFlow."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from edge_runtime.sources import redact
from tests.conftest import REPO
from tests.edge_support import daemon_cmd, daemon_env, free_port, mosquitto, no_tf_path, wait_for  # noqa: F401

SECRET = "hunter2"


@pytest.mark.parametrize("uri, shown", [
    ("rtsp://alice:hunter2@cam.lan:554/live", "rtsp://***@cam.lan:554/live"),
    ("http://cam.lan/video.mjpg?user=alice&password=hunter2&fps=5", "http://cam.lan/video.mjpg?user=alice&password=***&fps=5"),
    ("gst:rtspsrc location=rtsp://alice:hunter2@cam.lan/live user-pw=hunter2 ! decodebin ! appsink",
     "gst:rtspsrc location=rtsp://***@cam.lan/live user-pw=*** ! decodebin ! appsink"),
    ("rtsp://cam.lan/live?token=hunter2", "rtsp://cam.lan/live?token=***"),
    ("0", "0"), ("/videos/clip.mp4", "/videos/clip.mp4"),
])
def test_redact_hides_userinfo_and_secret_parameters(uri, shown):
    assert redact(uri) == shown and SECRET not in redact(uri)


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
    except OSError:  # not listening yet
        return ""


def test_a_stream_password_shows_on_no_surface_and_metrics_pass_promtool(no_tf_path, mosquitto, tmp_path):  # noqa: F811
    import paho.mqtt.client as mqtt
    host, mport = mosquitto
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe("fer-edge/#")
    sub.on_message = lambda c, u, m: got.append(m.payload.decode(errors="replace"))
    sub.connect(host, mport)
    sub.loop_start()
    port = free_port()
    dead = free_port()  # nothing listens: the stream is lost and retried, each retry logged
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mqtt]\nstats_interval_s = 0.5\n")
    proc = subprocess.Popen(daemon_cmd("--source", f"rtsp://alice:{SECRET}@127.0.0.1:{dead}/cam", "--http",
                                       f"127.0.0.1:{port}", "--mqtt", f"{host}:{mport}", "--config", cfg,
                                       "--log-level", "debug"),
                            cwd=REPO, env=daemon_env(no_tf_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: "source lost" in _get(port, "/healthz"), 60)
        wait_for(lambda: any('"source"' in g for g in got), 30)
        surfaces = {p: _get(port, p) for p in ("/healthz", "/metrics", "/latest", "/")}
        metrics = surfaces["/metrics"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        sub.loop_stop()
    assert "rtsp://***@127.0.0.1" in metrics and "rtsp://***@127.0.0.1" in err
    for name, text in {**surfaces, "stderr": err, "stdout": out, "mqtt": "\n".join(got)}.items():
        assert SECRET not in text, name
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus; .ci/run does it)"
    r = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stream_credentials_come_from_a_file_not_the_command_line(tmp_path, monkeypatch):
    from edge_runtime.config import build
    from edge_runtime.daemon import Daemon
    cred = tmp_path / "camera.cred"
    cred.write_text(f"alice:{SECRET}\n")
    cfg = build(None, None, {"source": {"uri": "rtsp://127.0.0.1:9/cam", "credentials_file": str(cred)}})
    d = Daemon(cfg)
    try:
        assert d.capture.uri == f"rtsp://alice:{SECRET}@127.0.0.1:9/cam"  # what OpenCV opens
        assert d.capture.shown == "rtsp://***@127.0.0.1:9/cam" and SECRET not in json.dumps(d.stats.snapshot())
    finally:
        d.capture.stop()
    monkeypatch.setenv("FER_EDGE_SOURCE_CREDENTIALS", f"bob:{SECRET}")
    d = Daemon(build(None, None, {"source": {"uri": "rtsp://127.0.0.1:9/cam"}}))
    assert d.capture.uri == f"rtsp://bob:{SECRET}@127.0.0.1:9/cam"
