"""End to end: a real video through OpenCV, real model files, a real broker, HTTP, no TensorFlow."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest

from edge_runtime.backends import load_backend
from edge_runtime.labels import LABELS
from edge_runtime.manifest import read_manifest
from edge_runtime.geometry import cut_square
from edge_runtime.preprocess import preprocess_batch
from edge_runtime.synthetic import compose, iou, make_video, pick_faces
from tests.conftest import SHARED
from tests.edge_support import (edge_artifacts, free_port, mosquitto, no_tf_path,  # noqa: F401
                                read_events, run_daemon, start_daemon, wait_for)

BACKENDS = ["tflite-int8", "tflite-fp32", "onnx-fp32", "onnx-int8"]


@pytest.fixture(scope="module")
def four_faces(tmp_path_factory):
    """640x480, four faces of 120 px."""
    path = tmp_path_factory.mktemp("video") / "four.avi"
    return path, make_video(path, SHARED, n_faces=4, frames=12, face=120, seed=3)


def http_get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Subscriber:
    """Collects every message under prefix/# from the test's broker."""

    def __init__(self, host, port, prefix):
        self.msgs: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload))
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
        self.c.connect(host, port)
        self.c.loop_start()
        assert ready.wait(10)

    def topic(self, suffix):
        return [p for t, p in self.msgs if t.endswith("/" + suffix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def decoded_frames(video):
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    return frames


def predictions_on_crops(artifacts, name, video, events):
    """The artifact's own probabilities on the frame regions the daemon reported, one per event.

    Batched per frame as the daemon does (dynamically quantized models scale by the whole batch)."""
    manifest = read_manifest(artifacts)
    backend, spec = load_backend(manifest, name), manifest.preprocessing
    frames = decoded_frames(video)  # the file is looped: event frame i is file frame i % len
    out = {}
    for index in sorted({e["frame"] for e in events}):
        group = [k for k, e in enumerate(events) if e["frame"] == index]
        frame = frames[index % len(frames)]
        crops = [cut_square(frame, x + w / 2, y + h / 2, w) for x, y, w, h in (events[k]["crop"] for k in group)]
        out.update(zip(group, backend.predict(preprocess_batch(crops, spec))))
    return [out[k] for k in range(len(events))]


@pytest.mark.parametrize("artifact", BACKENDS)
def test_video_end_to_end(artifact, edge_artifacts, four_faces, mosquitto, no_tf_path, tmp_path):
    video, truth = four_faces
    host, mport = mosquitto
    prefix = f"test/{artifact}"
    sub = Subscriber(host, mport, prefix)
    port = free_port()
    events_path = tmp_path / "events.jsonl"
    proc = start_daemon(no_tf_path, "--artifacts", edge_artifacts, "--backend", artifact, "--threads", 1,
                        "--source", video, "--loop", "--events", events_path, "--http", f"127.0.0.1:{port}",
                        "--mqtt", f"{host}:{mport}", "--mqtt-prefix", prefix, stderr_path=tmp_path / "err")
    try:
        def tracks():
            try:
                return len(json.loads(http_get(port, "/latest")[1])) >= 3
            except OSError:
                return False
        wait_for(tracks, 60)
        code, health = http_get(port, "/healthz")
        assert code == 200 and json.loads(health)["status"] == "ok"
        metrics = http_get(port, "/metrics")[1].decode()
        sha = read_manifest(edge_artifacts).artifacts[artifact].sha256
        assert f'sha256="{sha}"' in metrics and f'artifact="{artifact}"' in metrics
        assert 'edge_stage_latency_seconds_count{stage="classify"}' in metrics
        processed = int(next(ln.split()[1] for ln in metrics.splitlines()
                             if ln.startswith("edge_frames_processed_total")))
        assert processed > 0
        latest = json.loads(http_get(port, "/latest")[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert b"\xff\xd8" in r.read(4096)  # a JPEG starts in the first part
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        elapsed = time.monotonic() - t0
        time.sleep(0.3)  # let the last MQTT messages reach the subscriber
        sub.close()
    stderr = (tmp_path / "err").read_text()
    assert rc == 0, stderr
    assert elapsed <= 2.0, f"shutdown took {elapsed:.2f} s"

    events = read_events(events_path)
    live = [e for e in events if e["type"] in ("new", "update")]
    boxes = {tuple(e["box"]) for e in live}
    # boxes are where the faces are (IoU >= 0.3, the benchmark's rule): 3+ of the 4 found, nothing elsewhere
    found = [f for f in truth["faces"] if any(iou(f["box"], b) >= 0.3 for b in boxes)]
    assert len(found) >= 3, (boxes, truth["faces"])
    assert all(max(iou(f["box"], b) for f in truth["faces"]) >= 0.3 for b in boxes), boxes
    for e in live:  # YuNet's five landmarks travel with each face, inside its box
        x, y, w, h = e["box"]
        lm = np.array(e["landmarks"])
        assert lm.shape == (5, 2) and e["det_score"] >= 0.4
        assert ((lm >= [x, y]) & (lm <= [x + w, y + h])).all(), (e["box"], e["landmarks"])
    # labels equal the artifact's own predictions on those crops
    probs = predictions_on_crops(edge_artifacts, artifact, video, live)
    for e, p in zip(live, probs):
        assert e["raw_label"] == LABELS[int(np.argmax(p))]
        np.testing.assert_allclose([e["raw"][lab] for lab in LABELS], p, atol=1e-5)
        assert set(e["latency_ms"]) == {"capture_age", "detect", "preprocess", "classify"}
    # every track opened is closed at shutdown
    assert sorted(e["track"] for e in events if e["type"] == "new") == \
        sorted(e["track"] for e in events if e["type"] == "end")
    # HTTP /latest carried the same tracks and labels
    assert {(e["track"], e["raw_label"]) for e in latest} <= {(e["track"], e["raw_label"]) for e in live}
    # MQTT: online then offline, the same events, stats
    avail = sub.topic("availability")
    assert avail[0] == b"online" and avail[-1] == b"offline", avail
    mq = [json.loads(p) for p in sub.topic("events")]
    assert {(e["track"], e["type"], e["raw_label"], e["frame"]) for e in mq} == \
        {(e["track"], e["type"], e["raw_label"], e["frame"]) for e in events}
    stats = [json.loads(p) for p in sub.topic("stats")]
    assert stats and stats[-1]["artifact"] == artifact and stats[-1]["frames_processed"] > 0
    assert "runs on" in stderr or artifact.startswith("tflite")  # ONNX logs the provider that ran


def test_end_of_file_exits_cleanly(edge_artifacts, four_faces, no_tf_path, tmp_path):
    video, truth = four_faces
    r = run_daemon(no_tf_path, "--artifacts", edge_artifacts, "--source", video, "--events", "-")
    assert r.returncode == 0, r.stderr
    events = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert {e["frame"] for e in events if e["type"] != "end"} == set(range(truth["frames"]))
    assert sum(e["type"] == "new" for e in events) == sum(e["type"] == "end" for e in events) >= 3
    assert "end of source after 12 frames" in r.stderr


def test_tensorflow_is_blocked_in_the_daemon_env(no_tf_path):
    r = subprocess.run([sys.executable, "-c", "import tensorflow"], env={"PYTHONPATH": str(no_tf_path)},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "blocked" in r.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_bad_artifact_exits_2_before_the_camera(damage, edge_artifacts, no_tf_path, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(edge_artifacts, art)
    model = art / read_manifest(art).artifacts["tflite-int8"].file
    data = bytearray(model.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    model.write_bytes(bytes(data))
    # a camera that does not exist would put the daemon into its reconnect loop, never exit 2
    r = run_daemon(no_tf_path, "--artifacts", art, "--backend", "tflite-int8", "--source", "/dev/video97",
                   timeout=60)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and ("sha256" in lines[0] or "truncated" in lines[0]), r.stderr
    assert "source lost" not in r.stderr


def test_source_lost_degrades_and_backs_off(edge_artifacts, no_tf_path, tmp_path):
    port = free_port()
    proc = start_daemon(no_tf_path, "--artifacts", edge_artifacts, "--source", "/dev/video97",
                        "--http", f"127.0.0.1:{port}", "--events", tmp_path / "ev.jsonl",
                        stderr_path=tmp_path / "err")
    try:
        def degraded():
            try:
                code, body = http_get(port, "/healthz")
            except OSError:
                return None
            health = json.loads(body) if code == 503 else {}
            # 503 also answers while "starting" (HTTP comes up before the source is first tried)
            return (code, health) if health.get("status") == "degraded" else None
        code, health = wait_for(degraded, 60)
        assert health["status"] == "degraded" and "source lost" in health["reason"]
        time.sleep(3.0)  # backoff 0.5, 1, 2, 4 s ...: a busy loop would show hundreds of attempts
        metrics = http_get(port, "/metrics")[1].decode()
        reconnects = int(next(ln.split()[1] for ln in metrics.splitlines()
                              if ln.startswith("edge_reconnects_total")))
        assert 2 <= reconnects <= 5
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
        elapsed = time.monotonic() - t0
    assert rc == 0 and elapsed <= 2.0, (rc, elapsed, (tmp_path / "err").read_text())


def test_source_appears_later_and_the_daemon_recovers(edge_artifacts, no_tf_path, tmp_path):
    """An empty image folder is an unreadable source: degraded, retried; once frames land, they run."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    port = free_port()
    events = tmp_path / "ev.jsonl"
    proc = start_daemon(no_tf_path, "--artifacts", edge_artifacts, "--source", folder, "--events", events,
                        "--http", f"127.0.0.1:{port}", stderr_path=tmp_path / "err")
    try:
        def degraded():
            try:
                return http_get(port, "/healthz")[0] == 503
            except OSError:
                return False
        wait_for(degraded, 60)
        frame, truth = compose((640, 480), pick_faces(SHARED, 2, seed=4), 120, seed=4)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "tmp.png"), frame)
            (tmp_path / "tmp.png").rename(folder / f"{i:03d}.png")  # appear whole, never half-written
        assert proc.wait(60) == 0  # read the folder after a backoff wait, then end of source
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "err").read_text()
    assert "lost (cannot open" in err and "end of source after 3 frames" in err, err
    got = read_events(events)
    assert {e["frame"] for e in got if e["type"] != "end"} == {0, 1, 2}
    assert any(iou(f["box"], e["box"]) >= 0.4 for f in truth for e in got)


def test_memory_stays_flat_over_5000_frames(edge_artifacts, no_tf_path, tmp_path):
    """Soak: 5,000 small frames (the fast path); RSS after warm-up may grow by < 16 MiB."""
    video = tmp_path / "small.avi"
    make_video(video, SHARED, n_faces=1, frames=50, size=(160, 120), face=64, seed=1)
    port = free_port()
    proc = start_daemon(no_tf_path, "--artifacts", edge_artifacts, "--source", video, "--loop",
                        "--max-frames", 5000, "--events", tmp_path / "ev.jsonl", "--http", f"127.0.0.1:{port}",
                        stderr_path=tmp_path / "err")
    ps = psutil.Process(proc.pid)

    def processed():
        try:
            m = http_get(port, "/metrics")[1].decode()
        except OSError:
            return 0
        return int(next(ln.split()[1] for ln in m.splitlines() if ln.startswith("edge_frames_processed_total")))
    wait_for(lambda: processed() >= 500, 120)
    base = ps.memory_info().rss
    peak = base
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    assert proc.wait(10) == 0, (tmp_path / "err").read_text()
    assert "5000 processed" in (tmp_path / "err").read_text()
    growth = (peak - base) / 2**20
    assert growth < 16, f"RSS grew {growth:.1f} MiB after warm-up"


@pytest.mark.parametrize("flags,model,why", [
    (["--model", "cbilstm-lite"], "cbilstm-lite", "named"),
    ([], None, "auto: this CPU has"),  # this machine's own choice, whichever CPU class it is
])
def test_the_model_in_use_and_why_are_logged_and_in_healthz(flags, model, why, four_faces, no_tf_path, tmp_path):
    from edge_runtime.packaged import choose_model
    model = model or choose_model()[0]
    video, _ = four_faces
    port = free_port()
    proc = start_daemon(no_tf_path, *flags, "--threads", 1, "--source", video, "--loop", "--events",
                        tmp_path / "events.jsonl", "--http", f"127.0.0.1:{port}", stderr_path=tmp_path / "err")
    try:
        def healthy():
            try:
                return json.loads(http_get(port, "/healthz")[1])["frames_processed"] > 0
            except (OSError, KeyError, ValueError):
                return False
        wait_for(healthy, 60)
        health = json.loads(http_get(port, "/healthz")[1])
        assert health["model"] == model and health["model_choice"].startswith(why)
        metrics = http_get(port, "/metrics")[1].decode()
        assert f'model="{model}"' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    log = (tmp_path / "err").read_text()
    assert f"model {model} ({why}" in log
