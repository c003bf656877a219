"""Config layering and validation, the tracker, capture backoff/recovery, awkward frames."""
from __future__ import annotations

import dataclasses
import json
import threading

import cv2
import numpy as np
import pytest

from edge_runtime import capture
from edge_runtime.__main__ import main
from edge_runtime.config import ConfigError, build, load_toml
from edge_runtime.daemon import Daemon
from edge_runtime.geometry import Detections
from edge_runtime.capture import Capture, Frame
from edge_runtime.stats import Stats
from edge_runtime.synthetic import compose, iou, pick_faces
from edge_runtime.tracker import Tracker
from tests.conftest import REPO, SHARED
from tests.edge_support import edge_artifacts, read_events, wait_for  # noqa: F401


def write(path, text):
    path.write_text(text)
    return path


def test_flags_override_config_override_profile(tmp_path):
    prof = write(tmp_path / "p.toml", '[model]\nthreads = 3\nbackend = "tflite"\n[detector]\nsize = 320\n')
    conf = write(tmp_path / "c.toml", '[model]\nthreads = 2\nartifacts = "x"\n')
    cfg = build(str(prof), str(conf), {"model": {"threads": 1}})
    assert cfg.model.threads == 1 and cfg.model.backend == "tflite"
    assert cfg.detector.size == 320 and cfg.model.artifacts == "x"


@pytest.mark.parametrize("text, words", [
    ('[model]\nartifacts = "x"\nthread = 2\n', "unknown key model.thread"),
    ('[modle]\nartifacts = "x"\n', "unknown section [modle]"),
    ('[model]\nartifacts = "x"\nthreads = "two"\n', "model.threads = 'two' should be int"),
    ('[model]\nartifacts = "x"\n[http]\nbind = "0.0.0.0:8080"\n', "set --token"),
    ('[model\n', "c.toml"),
    ('[tracker]\niou = nan\n', "tracker.iou = nan must be in [0.01, 1.0]"),
    ('[source]\nreconnect_max_s = inf\n', "source.reconnect_max_s = inf must be in"),
    ('[run]\nlog_level = "verbose"\n', "run.log_level = 'verbose' must be one of"),
    ('[run]\nmax_frames = -5\n', "run.max_frames = -5 must be in"),
    ('[http]\nbind = "127.0.0.1:99999"\n', "port in [0, 65535]"),
    ('[mqtt]\nstats_interval_s = 0\n', "mqtt.stats_interval_s = 0.0 must be in"),
    ('[detector]\nscore = 0.5\n', "detector.score is now detector.yunet.score"),
    ('[detector.yunet]\nscore = 1.5\n', "detector.yunet.score = 1.5 must be in (0.0, 1.0)"),
    ('[detector.haar]\nsize = 320\n', "unknown key detector.haar"),
    ('[detector]\nsize = 32\n', "detector.size = 32 must be 0 (the default) or in [64, 4096]"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, text, words):
    conf = write(tmp_path / "c.toml", text)
    assert main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_config_is_typed_and_round_trips(tmp_path):
    from edge_runtime.config import Config, DetectorConfig
    conf = write(tmp_path / "c.toml", '[detector]\nsize = 448\n[detector.yunet]\nscore = 0.5\n'
                                      '[source]\nuri = 2\n[model]\nproviders = ["CPUExecutionProvider"]\n')
    cfg = build(config=str(conf))
    assert isinstance(cfg.detector, DetectorConfig) and cfg.detector.yunet.score == 0.5
    assert cfg.detector.size == 448 and cfg.detector.min_size == 24  # the rest keeps its defaults
    assert cfg.source.uri == "2" and cfg.model.providers == ("CPUExecutionProvider",)
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):  # frozen: a running daemon's settings cannot drift
        cfg.detector.size = 320
    from edge_runtime.config import YuNetConfig
    for build_it, words in ((lambda: DetectorConfig(type="foo"), "detector.type = 'foo' must be one of"),
                            (lambda: DetectorConfig(size=5), "detector.size = 5 must be 0 (the default) or in"),
                            (lambda: YuNetConfig(score=7.0), "detector.yunet.score = 7.0 must be in (0.0, 1.0)"),
                            (lambda: DetectorConfig(yunet={"score": 0.5}), "[detector.yunet] must be a table")):
        with pytest.raises(ConfigError) as e:  # built in code, not from a file: the same checks
            build_it()
        assert words in str(e.value)
    for profile in sorted((REPO / "devices").glob("*.toml")):  # (built without the thread check: a Jetson has 6)
        layer = load_toml(profile)
        assert Config().merged(layer, str(profile)).to_dict().keys() == Config().to_dict().keys(), profile


def test_non_loopback_http_with_token_is_accepted():
    cfg = build(flags={"model": {"artifacts": "x"}, "http": {"bind": "0.0.0.0:8080", "token": "s3cret"}})
    assert cfg.http.token == "s3cret"
    with pytest.raises(ConfigError):
        build(flags={"model": {"artifacts": "x"}, "http": {"bind": "[::1]"}})


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--artifacts", "--backend", "--threads", "--source", "--config", "--profile", "--events",
                 "--http", "--mqtt", "--max-frames", "--loop", "--token", "--annotate", "--ha-discovery", "picamera2",
                 "gst:", "exit codes:"):
        assert flag in out


def test_tracker_smooths_and_ends_tracks():
    t = Tracker(iou=0.3, smoothing=0.5, max_missed=1)
    a, b = np.eye(7)[3], np.eye(7)[5]
    def faces(box, p):
        d = Detections.from_boxes([box])
        return d.with_fields(regions=d.boxes, probs=p[None])
    box, moved, far = faces([10, 10, 50, 50], a), faces([12, 12, 50, 50], b), faces([200, 200, 50, 50], a)
    assert [k for k, _ in t.update(0, box)] == ["new"]
    ch = t.update(1, moved)
    assert [k for k, _ in ch] == ["update"] and ch[0][1].id == 1
    np.testing.assert_allclose(ch[0][1].smooth, 0.5 * a + 0.5 * b)
    kinds = [(k, tr.id) for k, tr in t.update(2, far)]
    assert kinds == [("new", 2)]  # track 1 missed once: still open
    kinds = [(k, tr.id) for k, tr in t.update(3, far)]
    assert ("end", 1) in kinds and ("update", 2) in kinds
    # the frame's record now carries each face's track id and its track's smoothed probabilities
    assert t.last.track_ids.tolist() == [2] and t.last.smoothed.shape == (1, 7)
    np.testing.assert_allclose(t.last.smoothed[0], t.tracks[2].smooth)
    two = Detections.from_boxes([[10, 10, 50, 50], [200, 200, 50, 50]])
    t.update(4, two.with_fields(regions=two.boxes, probs=np.stack([b, a])))
    assert t.last.track_ids.tolist() == [3, 2] and t.last.take([1]).track_ids.tolist() == [2]
    t.update(5, Detections.empty().with_fields(regions=np.zeros((0, 4)), probs=np.zeros((0, 7))))
    assert len(t.last) == 0 and t.last.smoothed.shape == (0, 7)
    assert [(k, tr.id) for k, tr in t.end_all()] == [("end", 2), ("end", 3)]
    assert t.last is None  # no frame's record outlives the tracks it names
    with pytest.raises(ValueError, match="smoothed has shape"):
        two.with_fields(probs=np.stack([a, b]), smoothed=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="track_ids must be integers"):
        two.with_fields(track_ids=np.array([1.0, 2.0]))


class FlakyCamera:
    """Fails to open `fails` times, then yields `frames` frames, then fails to read."""

    def __init__(self, fails, frames):
        self.fails, self.frames, self.opened = fails, frames, 0

    def __call__(self, uri, *size):
        self.opened += 1
        ok = self.opened > self.fails
        n = self.frames if ok else 0

        class Cap:
            left = n

            def isOpened(self):  # noqa: N802
                return ok

            def read(self):
                if self.left <= 0:
                    return False, None
                self.left -= 1
                return True, np.zeros((48, 64, 3), np.uint8)

            def get(self, prop):
                return 0.0

            def release(self):
                pass
        return Cap()


def test_capture_backs_off_exponentially_capped_then_recovers(monkeypatch):
    monkeypatch.setattr(capture, "BACKOFF_START_S", 0.01)
    stats = Stats()
    cam = FlakyCamera(fails=4, frames=3)
    cap = Capture("0", stats, reconnect_max_s=0.04, opener=cam)
    assert cap.realtime  # a camera keeps only the newest frame
    cap.start()
    got = []
    while len(got) < 1:
        f = cap.get(1.0)
        if f is not None:
            got.append(f)
    assert cam.opened == 5 and cap.delays[:4] == [0.01, 0.02, 0.04, 0.04]  # doubled, then capped
    assert capture.backoff_delay(5000, 30.0) == 30.0  # a camera lost for days: no float overflow
    # after its 3 frames the camera stops delivering: degraded again, with the reason
    wait_for(lambda: stats.counters["reconnects"] >= 5, 5)
    assert stats.status == "degraded" and stats.reason.startswith("source lost")
    cap.stop()
    cap.join(2)
    assert not cap.is_alive()


def test_live_source_drops_stale_frames():
    stats = Stats()
    cap = Capture("0", stats, opener=FlakyCamera(fails=0, frames=50), reconnect_max_s=5)
    cap.start()
    threading.Event().wait(0.3)  # nobody consumes: only the newest frame is kept
    f = cap.get(1.0)
    cap.stop()
    cap.join(2)
    assert isinstance(f, Frame) and f.index == 49
    assert stats.counters["frames_dropped"] == 49 and stats.counters["frames_read"] == 50


@pytest.fixture
def awkward_frames(tmp_path):
    """An image folder: odd sizes, gray, BGRA, 16-bit, tiny, no faces, 20 faces."""
    d = tmp_path / "frames"
    d.mkdir()
    one, truth1 = compose((641, 479), pick_faces(SHARED, 1, seed=5), 150, seed=5)
    twenty, truth20 = compose((1280, 960), pick_faces(SHARED, 20, seed=7), 150, seed=7)
    cv2.imwrite(str(d / "01_odd_bgr.png"), one)
    cv2.imwrite(str(d / "02_gray.png"), cv2.cvtColor(one, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "03_bgra.png"), cv2.cvtColor(one, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(d / "04_gray16.png"), cv2.cvtColor(one, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(d / "05_tiny.png"), np.full((3, 5, 3), 128, np.uint8))
    cv2.imwrite(str(d / "05b_one_pixel.png"), np.full((1, 1), 7, np.uint8))
    cv2.imwrite(str(d / "06_no_faces.png"), np.full((240, 320, 3), 90, np.uint8))
    cv2.imwrite(str(d / "07_twenty.png"), twenty)
    (d / "08_corrupt.png").write_bytes(b"not a png")
    return d, truth1, truth20


def test_awkward_frames_are_handled(edge_artifacts, awkward_frames, tmp_path):
    d, truth1, truth20 = awkward_frames
    cfg = build(flags={"model": {"artifacts": str(edge_artifacts)}, "source": {"uri": str(d)},
                       "events": {"path": str(tmp_path / "ev.jsonl")}, "tracker": {"max_missed": 0}})
    daemon = Daemon(cfg)
    assert daemon.run() == 0
    snap = daemon.stats.snapshot()
    assert snap["frames_processed"] == 8  # the corrupt file is skipped with a warning
    events = read_events(tmp_path / "ev.jsonl")
    by_frame = {}
    for e in events:
        if e["type"] != "end":
            by_frame.setdefault(e["frame"], []).append(e)
    for i in range(4):  # the same face in four pixel layouts is found in each
        assert any(iou(truth1[0]["box"], e["box"]) >= 0.4 for e in by_frame.get(i, [])), i
    assert not {4, 5, 6} & set(by_frame)  # tiny, 1x1 and empty frames: no faces, no crash
    hits = [f for f in truth20 if any(iou(f["box"], e["box"]) >= 0.4 for e in by_frame.get(7, []))]
    assert len(hits) >= 12, len(hits)
    assert len(by_frame[7]) <= 20
    assert all(len(e["probs"]) == 7 and abs(sum(e["raw"].values()) - 1) < 0.05 for e in events)


def test_every_profile_runs_the_daemon(edge_artifacts, tmp_path, caplog):
    """Each devices/*.toml loads and runs on a video; hardware-only providers fall back with a reason."""
    from edge_runtime.synthetic import make_video
    video = tmp_path / "v.avi"
    make_video(video, SHARED, n_faces=1, frames=4, seed=1)
    profiles = sorted((REPO / "devices").glob("*.toml"))
    assert {p.stem for p in profiles} >= {"raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "generic-x86"}
    for prof in profiles:
        ev = tmp_path / f"{prof.stem}.jsonl"
        rc = main(["--profile", str(prof), "--artifacts", str(edge_artifacts), "--source", str(video),
                   "--events", str(ev), "--http", "", "--threads", "1"])  # profiles ask for 3-4 CPUs; CI has 2
        assert rc == 0, prof
        events = read_events(ev)
        assert any(e["type"] == "new" for e in events), prof
        assert all(json.dumps(e) for e in events)
    # no GPU here: the Jetson profile's TensorRT/CUDA providers fall back to CPU, and say so
    assert "providers ['TensorrtExecutionProvider', 'CUDAExecutionProvider'] are not available" in caplog.text
    assert "runs on CPUExecutionProvider" in caplog.text


def test_http_token_is_required_when_set():
    import urllib.error
    import urllib.request

    from edge_runtime.http import HttpServer
    from tests.edge_support import free_port
    stats = Stats()
    stats.set_health("ok")
    srv = HttpServer(f"127.0.0.1:{free_port()}", stats, token="s3cret")
    try:
        url = f"http://{srv.address}/healthz"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=5)
        assert e.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        srv.close()


def test_damaged_or_missing_detector_model_is_one_line_exit_2(edge_artifacts, capsys, monkeypatch, tmp_path):
    from edge_runtime import detectors
    packaged = detectors.MODELS / detectors.PACKAGED["yunet_n"][0]
    (tmp_path / packaged.name).write_bytes(packaged.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    monkeypatch.setattr(detectors, "MODELS", tmp_path)
    assert main(["--artifacts", str(edge_artifacts), "--source", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "reinstall" in err[0], err
    conf = write(tmp_path / "c.toml", '[detector.yunet]\nmodel = "/nonexistent/yunet.onnx"\n')
    assert main(["--artifacts", str(edge_artifacts), "--config", str(conf), "--source", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent/yunet.onnx" in err[0], err


def test_onnx_int8_products_do_not_saturate(tmp_path):
    """x86 without VNNI sums u8 x s8 products in pairs into saturating int16 (255 * 127 * 2 > 32767):
    onnx_session_options must make onnxruntime take the exact path. Measured on AVX2 without it:
    129.5 instead of 255. (On VNNI and Arm the products are exact either way.)"""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edge_runtime.backends import onnx_session_options
    k, n = 256, 8
    w = np.ones((k, n), np.float32)
    w[:, 1::2] = -1.0  # int8 +-127: far outside the [-64, 63] that pairs of u8 x s8 can hold
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8)
    x = np.ones((1, k), np.float32)
    x[0, 0] = 0.0  # activations quantize to u8 0 and 255
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), onnx_session_options(1), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w, rtol=0.01)


@pytest.mark.parametrize("content", [b"this is not a video\n", b""])
def test_a_file_that_never_gives_a_frame_exits_2(edge_artifacts, tmp_path, capsys, content):
    """Not retried for ever like a lost camera: one error line and exit 2 (systemd does not restart).
    A folder is different: images may still arrive (test_source_appears_later_and_the_daemon_recovers)."""
    src = tmp_path / "bad.avi"
    src.write_bytes(content)
    assert main(["--artifacts", str(edge_artifacts), "--source", str(src), "--events", str(tmp_path / "e.jsonl")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and str(src) in err[0], err


def test_a_track_end_carries_its_summary_in_jsonl_and_latest(tmp_path):
    """Per person, not per frame: the end event says how long, how many frames, the dominant emotion
    and each emotion's share of the track's frames; /latest keeps it for a minute."""
    from edge_runtime.labels import LABELS
    from edge_runtime.synthetic import make_video
    video = tmp_path / "v.avi"
    make_video(video, SHARED, n_faces=2, frames=9, face=140, seed=2)
    cfg = build(flags={"source": {"uri": str(video)}, "events": {"path": str(tmp_path / "ev.jsonl")},
                       "http": {"bind": "127.0.0.1:0"}})
    d = Daemon(cfg)
    assert d.run() == 0
    events = read_events(tmp_path / "ev.jsonl")
    ends = [e for e in events if e["type"] == "end"]
    assert len(ends) == 2
    for end in ends:
        s = end["summary"]
        own = [e for e in events if e["track"] == end["track"] and e["type"] != "end"]
        assert s["frames_seen"] == len(own) == 9 and s["frames_spanned"] == 9
        assert set(s["shares_pct"]) == set(LABELS)
        assert abs(sum(s["shares_pct"].values()) - 100) < 0.1  # percent, as the key says
        counts = {lab: sum(e["label"] == lab for e in own) for lab in LABELS}
        assert s["dominant"] == max(counts, key=counts.get)
        assert all(abs(s["shares_pct"][lab] - 100 * counts[lab] / 9) < 0.01 for lab in LABELS)
        # the end row agrees with its summary: label, score and probs describe the whole track
        assert end["label"] == s["dominant"] and abs(end["score"] - s["dominant_pct"] / 100) < 1e-4
        assert all(abs(end["probs"][lab] - s["shares_pct"][lab] / 100) < 1e-4 for lab in LABELS)
        # media time: the video's own clock (frame k at k / fps), not how fast this machine ran
        fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
        assert s["first_media_s"] == 0.0 and s["last_media_s"] == pytest.approx(8 / fps, abs=1e-3)
        assert s["duration_s"] == pytest.approx(8 / fps, abs=1e-3) and s["wall_s"] >= 0
        assert [e["media_s"] for e in own] == pytest.approx([k / fps for k in range(9)], abs=1e-3)
    from edge_runtime.http import HttpServer
    http = next(s for s in d.sinks if isinstance(s, HttpServer))  # closed now; its view of the last minute stays
    latest = http.recent.latest_events()
    assert sorted(e["track"] for e in latest if e["type"] == "end") == sorted(e["track"] for e in ends)
    mood = http.recent.mood(d.stats.tracks_active)
    assert mood["faces"] == 0 and abs(sum(mood["shares_pct"].values()) - 100) < 0.5


def test_a_track_missed_in_a_frame_is_drawn_where_it_is_predicted(tmp_path):
    """The live view and the annotated video show a briefly missed face at its predicted box, not
    frames behind where it last was."""
    import numpy as np

    from edge_runtime.geometry import Detections
    from edge_runtime.synthetic import make_video
    video = tmp_path / "v.avi"
    make_video(video, SHARED, n_faces=1, frames=3, face=140, seed=2)
    d = Daemon(build(flags={"source": {"uri": str(video)}, "events": {"path": str(tmp_path / "e.jsonl")}}))
    t = d.tracker
    probs = np.full((1, 7), 1 / 7, np.float32)
    frame = np.zeros((480, 640, 3), np.uint8)
    for i, x in enumerate((100, 110, 120)):  # a face moving 10 px per frame
        face = Detections.from_boxes([[x, 50, 80, 80]], [0.9])
        t.update(i, face.with_fields(regions=face.boxes, probs=probs))
    class F:  # noqa: E306 - one frame in which the detector finds nothing
        index, image, media_s, t_capture = 3, frame, 0.2, 0.0
    d.recognizer.detector.detect = lambda image: Detections.empty()
    d.recognizer.detector.detect_regions = lambda image, regions: Detections.empty()
    d.process(F)
    (shown,) = d._last_view[2]
    assert shown.missed == 1 and abs(float(shown.box[0]) - 130) < 6  # predicted, not the last box at 120
    assert float(t.tracks[shown.id].box[0]) == 120  # the track itself keeps its last detection


def test_inline_decoding_gives_the_threaded_frames_and_events(tmp_path):
    """[source] decode_thread = false (the batch workers' mode) decodes in the main loop: the same
    frames, indexes, media times and events as the capture thread, and no second thread runs."""
    from edge_runtime.synthetic import make_video
    video = tmp_path / "v.avi"
    make_video(video, SHARED, n_faces=2, frames=20, face=120, seed=3)
    runs = {}
    for threaded in (True, False):
        ev = tmp_path / f"ev-{threaded}.jsonl"
        d = Daemon(build(flags={"source": {"uri": str(video), "every": 2, "decode_thread": threaded},
                                "events": {"path": str(ev)}}))
        seen = []
        process = d.process
        d.process = lambda frame: (seen.append((frame.index, frame.media_s, threading.current_thread().name,
                                                threading.active_count())), process(frame))
        assert d.run() == 0
        assert d.capture._gen is None and not d.capture.is_alive()  # the source is released either way
        runs[threaded] = seen, [{k: v for k, v in e.items() if k not in ("ts", "latency_ms", "summary")}
                                for e in read_events(ev)]
    (frames_t, events_t), (frames_i, events_i) = runs[True], runs[False]
    assert [f[:2] for f in frames_t] == [f[:2] for f in frames_i] and [f[0] for f in frames_i] == list(range(0, 20, 2))
    assert events_t == events_i and len(events_i) >= 20
    assert not any(t.name == "capture" for t in threading.enumerate())
    assert len({f[3] for f in frames_i}) == 1 and frames_i[0][3] < frames_t[0][3]  # one thread fewer


def test_a_files_media_time_never_runs_back(tmp_path):
    """MPEG-PS demuxers report 0 for the frame after their flush: it gets the previous time + one frame."""
    class FlushingFile:  # the calls Capture makes of cv2.VideoCapture, with the times such a file reports
        times = iter([0.0, 40.0, 80.0, 0.0])

        def isOpened(self):  # noqa: N802 - mirrors cv2.VideoCapture
            return True

        def read(self):
            self.ms = next(self.times, None)
            return (self.ms is not None), (np.zeros((8, 8, 3), np.uint8) if self.ms is not None else None)

        def get(self, prop):
            return 25.0 if prop == cv2.CAP_PROP_FPS else self.ms

        def release(self):
            pass

    video = tmp_path / "x.mpg"
    video.write_bytes(b"stand-in")
    cap = Capture(str(video), Stats(), opener=lambda *a: FlushingFile(), threaded=False)
    cap.start()
    got = [f.media_s for f in iter(lambda: cap.get(0), None)]
    assert got == pytest.approx([0.0, 0.04, 0.08, 0.12])


def test_each_component_is_built_from_its_own_config_section(tmp_path):
    """Tracker, capture, HTTP server, MQTT sink and recognizer each read their own section: a value set in
    the config arrives in the component, and a section's problem is a ConfigError before anything starts."""
    from edge_runtime.api import EmotionRecognizer
    from edge_runtime.config import build
    from edge_runtime.http import HttpServer
    from edge_runtime.mqtt import MqttSink
    from edge_runtime.capture import Capture
    from edge_runtime.sources import source_uri
    from edge_runtime.stats import Stats
    from edge_runtime.tracker import Tracker
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    (tmp_path / "login").write_text("no colon here\n")  # a file, but no user:password in it
    cfg = build(flags={"tracker": {"iou": 0.45, "smoothing": 0.2, "max_missed": 9, "appearance": -1.0},
                       "source": {"uri": str(video), "loop": True, "every": 3, "stall_s": 7.0, "decode_thread": False},
                       "http": {"bind": "127.0.0.1:0", "max_clients": 5, "stream": False},
                       "mqtt": {"host": "127.0.0.1", "credentials_file": str(tmp_path / "login")},
                       "detector": {"full_every": 4}, "crop": {"mode": "manual", "scale": 1.3}})
    t = Tracker.from_config(cfg.tracker)
    assert (t.iou, t.alpha, t.max_missed, t.appearance) == (0.45, 0.2, 9, -1.0)
    cap = Capture.from_config(source_uri(cfg.source), cfg.source, Stats())
    assert (cap.uri, cap.loop, cap.every, cap.stall_s, cap.threaded) == (str(video), True, 3, 7.0, False)
    http = HttpServer.from_config(cfg.http, Stats(), jpeg=lambda: b"")
    try:
        assert http.jpeg is None  # stream = false: no /stream.mjpg
    finally:
        http.close()
    with pytest.raises(ConfigError, match="user:password"):
        MqttSink.from_config(cfg.mqtt, Stats(), "door")
    er = EmotionRecognizer.from_config(cfg)
    assert er.crop.scale == 1.3 and er.detector.name == "yunet"
    with pytest.raises(ConfigError, match="does not exist"):
        source_uri(build(flags={"source": {"uri": str(tmp_path / "gone.avi")}}).source)
    # a section checks its own rules, also when built in code
    from edge_runtime.config import HttpConfig, MqttConfig
    with pytest.raises(ConfigError, match="not loopback"):
        HttpConfig(bind="0.0.0.0:8080").check()
    with pytest.raises(ConfigError, match="mqtt.cert_file and mqtt.key_file"):
        MqttConfig(tls=True, cert_file="c.pem").check()


def test_every_setting_is_reachable_from_the_command_line_by_its_config_name():
    """The short flags and --set SECTION.KEY=VALUE build one config layer; the config's own types and
    bounds judge it, and a key given twice or not in the schema is a one-line error."""
    import subprocess
    import sys

    from edge_runtime.__main__ import FLAGS, flags_to_layer, parse_args
    from edge_runtime.config import DEFAULTS

    def cfg_of(*argv):
        return build(flags=flags_to_layer(parse_args(list(argv))))
    c = cfg_of("--source", "a.avi", "--set", "detector.full_every=3", "--set", "tracker.max_missed=9",
               "--set", "detector.yunet.score=0.5", "--set", "events.every=2", "--set", "mqtt.tls=false",
               "--mqtt", "[::1]:1884")
    assert (c.source.uri, c.detector.full_every, c.tracker.max_missed, c.detector.yunet.score, c.events.every) == \
        ("a.avi", 3, 9, 0.5, 2)
    assert (c.mqtt.host, c.mqtt.port, c.mqtt.tls) == ("::1", 1884, False)
    assert cfg_of("--set", "source.uri=rtsp://cam.local/stream1").source.uri == "rtsp://cam.local/stream1"
    assert cfg_of("--set", "source.uri=0").source.uri == "0"  # a camera index, as in a TOML file
    for argv, words in ((["--set", "nosuch.key=1"], "nosuch"), (["--set", "detector.full_every=0"], "full_every"),
                        (["--set", "detector.bogus=1"], "bogus"), (["--set", "detector=3"], "SECTION.KEY"),
                        (["--source", "a.avi", "--set", "source.uri=b.avi"], "given twice")):
        with pytest.raises(ConfigError, match=words):
            cfg_of(*argv)
    # each short flag names a key the schema has
    for flag, (dotted, _) in FLAGS.items():
        section, *rest = dotted.split(".")
        assert rest[-1] in DEFAULTS[section], flag
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "--set", "tracker.iou=2"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "tracker.iou" in r.stderr


def test_one_detections_record_carries_regions_and_probs_and_slices_them_together():
    d = Detections.from_boxes([[0, 0, 10, 10], [20, 20, 10, 10], [40, 40, 10, 10]], scores=[0.9, 0.8, 0.7])
    regions = d.boxes + 1
    probs = np.eye(7, dtype=np.float32)[[1, 2, 3]]
    faces = d.with_fields(regions=regions, probs=probs)
    two = faces.take([2, 0])
    np.testing.assert_array_equal(two.boxes, d.boxes[[2, 0]])
    np.testing.assert_array_equal(two.regions, regions[[2, 0]])
    np.testing.assert_array_equal(two.probs, probs[[2, 0]])
    assert d.take([1]).probs is None  # not classified yet: nothing to slice
    with pytest.raises(ValueError, match="probs has shape"):
        d.with_fields(probs=probs[:2])  # a row short: caught where it is made, not frames later
    with pytest.raises(ValueError, match="regions has shape"):
        d.with_fields(regions=regions[:, :3])
    with pytest.raises(ValueError, match="the tracker needs classified faces"):
        Tracker().update(0, d)
