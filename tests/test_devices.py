"""Cameras a PyPI OpenCV cannot open: the Raspberry Pi camera module through Picamera2 (tested
against tests/standins/picamera2, a STAND-IN implementing the documented calls, as no camera module
exists here) and GStreamer pipelines (Jetson CSI cameras), whose absence is one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from edge_runtime.labels import LABELS
from edge_runtime.synthetic import make_video
from tests.conftest import REPO, SHARED
from tests.edge_support import daemon_cmd, daemon_env, free_port, no_tf_path, read_events, wait_for  # noqa: F401

STANDINS = REPO / "tests" / "standins"


def standin_env(no_tf, tmp_path, video, cameras=1) -> dict:
    env = daemon_env(no_tf)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDINS), env["PYTHONPATH"]])
    env.update(PICAMERA2_STANDIN_VIDEO=str(video), PICAMERA2_STANDIN_LOG=str(tmp_path / "calls.jsonl"),
               PICAMERA2_STANDIN_CAMERAS=str(cameras))
    return env


def calls(tmp_path) -> list[dict]:
    p = tmp_path / "calls.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def test_picamera2_source_runs_the_pipeline_with_the_profiles_resolution(no_tf_path, tmp_path):
    video = tmp_path / "cam.avi"
    make_video(video, SHARED, n_faces=2, frames=10, face=150, seed=4)
    r = subprocess.run(daemon_cmd("--profile", REPO / "devices" / "raspberry-pi-4.toml", "--threads", "1", "--source", "picamera2",
                                  "--events", tmp_path / "ev.jsonl", "--max-frames", "12"),
                       env=standin_env(no_tf_path, tmp_path, video), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "model cbilstm-lite (named)" in r.stderr  # the Pi 4 has no int8 dot products: its profile says so
    log = calls(tmp_path)
    assert [c["call"] for c in log] == ["init", "configure", "start", "stop", "close"]
    assert log[1]["main"] == {"format": "RGB888", "size": [640, 480]}  # raspberry-pi-4.toml: 640x480 at 15 fps
    assert log[1]["controls"] == {"FrameRate": 15.0}
    events = read_events(tmp_path / "ev.jsonl")
    assert len({e["track"] for e in events}) == 2 and all(e["label"] in LABELS for e in events)
    assert max(e["frame"] for e in events) == 11


def test_a_missing_second_camera_is_retried_like_a_lost_camera(no_tf_path, tmp_path):
    video = tmp_path / "cam.avi"
    make_video(video, SHARED, n_faces=1, frames=5, seed=4)
    port = free_port()
    proc = subprocess.Popen(daemon_cmd("--source", "picamera2:1", "--http", f"127.0.0.1:{port}",
                                       "--events", tmp_path / "ev.jsonl"),
                            env=standin_env(no_tf_path, tmp_path, video, cameras=1), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum(c["call"] == "init-failed" for c in calls(tmp_path)) >= 2, 30)  # backoff, retried
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "picamera2:1 cannot start" in err and "lost (cannot open picamera2:1)" in err, err[-3000:]
    assert "Traceback" not in err


def test_without_picamera2_or_gstreamer_the_daemon_says_how_to_fix_it(no_tf_path):
    for source, words in (("picamera2", "apt install python3-picamera2"), ("picamera2:x", "a camera number"),
                          ("gst:nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink", "GStreamer")):
        r = subprocess.run(daemon_cmd("--source", source), env=daemon_env(no_tf_path), cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr


def test_the_arm_check_gives_an_int8_tflite_the_tolerance_of_its_own_quantization_error():
    """The packaged models ship no tflite-fp32: tflite-int8's fp32 twin is then the ONNX fp32 export of
    the same model, so the cross-arch tolerance is the int8 model's own error, not two output steps."""
    import sys
    from pathlib import Path

    import numpy as np
    sys.path.insert(0, str(REPO / "devices"))
    try:
        import aarch64_check as ac
        import aarch64_compare
    finally:
        sys.path.pop(0)
    from edge_runtime.manifest import read_manifest
    man = read_manifest(REPO / "edge_runtime" / "models" / "cbilstm-lite")
    assert "tflite-fp32" not in man.artifacts and "onnx-fp32" in man.artifacts
    c = ac.Check(args=None, work=Path("."), emu=[], art=Path(man.dir), manifest=man, report={"probe": {}})
    fp32 = np.full((4, 7), 1 / 7)
    int8 = fp32.copy()
    int8[:, 0] += 0.05
    names = ["tflite-int8", "onnx-fp32"]
    tols = ac.probe_tolerances(c, names, {"tflite-int8": {"probs": int8.tolist()}, "onnx-fp32": {"probs": fp32.tolist()}})
    assert tols["tflite-int8"] == pytest.approx(0.05) and tols["onnx-fp32"] == aarch64_compare.FP32_TOL
    assert c.report["probe"]["int8_error_vs_fp32_x86_64"]["tflite-int8"]["vs"] == "onnx-fp32"


def test_the_arm_check_judges_int8_tflite_against_tflites_reference_kernels():
    """Optimized int8 kernels round differently on Arm and x86; TFLite's reference kernels compute the
    same integers everywhere. The check passes when both arches' optimized outputs stay within the
    tolerance of those (identical) reference outputs, whatever the two differ by, and fails when the
    references differ or one arch strays from its reference."""
    import sys
    from pathlib import Path

    import cv2
    import numpy as np
    sys.path.insert(0, str(REPO / "devices"))
    try:
        import aarch64_check as ac
    finally:
        sys.path.pop(0)
    from edge_runtime.backends import TFLiteBackend, load_backend
    from edge_runtime.manifest import artifact_path, read_manifest
    from edge_runtime.preprocess import preprocess_batch
    from edge_runtime.synthetic import pick_faces
    man = read_manifest(REPO / "edge_runtime" / "models" / "cbilstm-lite")
    faces = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p, _ in pick_faces(SHARED, 32, seed=1)])
    batch = preprocess_batch(faces, man.preprocessing)
    fast = load_backend(man, "tflite-int8").predict(batch)
    ref_be = TFLiteBackend(artifact_path(man, "tflite-int8"), "tflite-int8", man.artifacts["tflite-int8"], man.labels,
                           reference_kernels=True)
    ref = ref_be.predict(batch)
    fp32 = load_backend(man, "onnx-fp32").predict(batch)
    # on this x86 the optimized kernels move a few output steps from the reference, within the int8 error
    assert "reference kernels" in ref_be.runtime and (fast.argmax(1) == ref.argmax(1)).all()
    assert 0 < np.abs(fast - ref).max() <= np.abs(fast - fp32).max() + 2 / 256

    c = ac.Check(args=None, work=Path("."), emu=[], art=Path(man.dir), manifest=man, report={"probe": {}})
    base = np.tile(np.linspace(0.05, 0.25, 7), (4, 1))

    def side(p, r):
        return {"probs": p.tolist(), "reference_kernel_probs": r.tolist(), "ms_per_face_median": 1.0, "runtime": "x"}

    def verdict(x86, arm):
        c.report["probe"] = {}
        ok = ac.compare_probes(c, ["tflite-int8"], {"x86_64": {"artifacts": {"tflite-int8": x86}},
                                                    "aarch64": {"artifacts": {"tflite-int8": arm}}},
                               {"tflite-int8": 0.035})
        return ok, c.report["probe"]["tflite-int8"]
    up, down = base.copy(), base.copy()
    up[:, 0] += 0.02
    down[:, 0] -= 0.02  # the arches differ by 0.04, more than the tolerance; each is 0.02 from the reference
    ok, row = verdict(side(up, base), side(down, base))
    assert ok and row["max_abs_diff"] == pytest.approx(0.04) and row["reference_kernels"]["identical_across_arches"]
    assert not verdict(side(up, base), side(down, base + 1e-3))[0]  # the references themselves differ
    far = base.copy()
    far[:, 0] += 0.05
    assert not verdict(side(up, base), side(far, base))[0]  # Arm strays from its reference
    # x86's own kernels stray 0.05 (beyond the int8 error): Arm as far is no less right, further is
    near = base.copy()
    near[:, 1] += 0.045
    assert verdict(side(far, base), side(near, base))[0]
    further = base.copy()
    further[:, 1] += 0.06
    assert not verdict(side(far, base), side(further, base))[0]
