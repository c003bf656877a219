"""The Python API and the default model packaged inside edge_runtime, on real test-split faces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import EmotionRecognizer
from edge_runtime.packaged import PACKAGED_MODELS, PackagedModelError, choose_model, packaged_dir
from edge_runtime.backends import SCORING_BATCH, BackendError, load_backend
from edge_runtime.config import max_threads
from edge_runtime.labels import LABELS
from edge_runtime.manifest import read_manifest, sha256_file, verify_file
from edge_runtime.preprocess import scale_pixels
from edge_runtime.synthetic import compose, pick_faces
from tests.conftest import REPO, SHARED, read_gray

PACKAGED_NAMES = {"tflite-int8", "onnx-int8", "onnx-fp32"}
PACKAGED_ARTIFACTS = packaged_dir("cbilstm")
# what each shipped model must at least score on test/ (int8), so a placeholder cannot pass
FLOOR = {"cbilstm": 0.66, "cbilstm-lite": 0.60}


@pytest.fixture(scope="module")
def er():
    return EmotionRecognizer()


@pytest.mark.parametrize("model", sorted(PACKAGED_MODELS))
def test_each_packaged_model_is_its_run_folder_exported_and_verified(model):
    d = packaged_dir(model)
    m = read_manifest(d).to_dict()
    assert m["model"] == model
    source = json.loads((REPO / "models" / model / "manifest.json").read_text())
    assert m["source"]["sha256"] == source["model_sha256"] == sha256_file(REPO / "models" / model / "model.keras")
    usable = {n for n, e in m["artifacts"].items() if e["status"] == "usable" and e["format"] != "keras"}
    assert usable == PACKAGED_NAMES
    for name in PACKAGED_NAMES:
        e = m["artifacts"][name]
        verify_file(d / e["file"], e["sha256"], e.get("size"))
    assert not list(d.glob("*.keras"))  # the device package carries no Keras file


def test_the_model_is_chosen_by_the_cpu_and_can_be_named(tmp_path):
    cpus = {"x86 VNNI": ("flags\t: fpu sse2 avx2 fma avx512f avx512_vnni\n", "cbilstm"),
            "x86 AVX2 only": ("flags\t: fpu sse2 avx2 fma\n", "cbilstm-lite"),
            # /proc/cpuinfo of a Raspberry Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76)
            "Pi 4": ("Features\t: fp asimd evtstrm crc32 cpuid\n", "cbilstm-lite"),
            "Pi 5": ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                     "asimdrdm lrcpc dcpop asimddp\n", "cbilstm")}
    for i, (cpu, (text, expected)) in enumerate(cpus.items()):
        f = tmp_path / f"cpuinfo{i}"
        f.write_text(text)
        name, why = choose_model("auto", str(f))
        assert name == expected, cpu
        assert why.startswith("auto: this CPU has " + ("no " if expected == "cbilstm-lite" else ""))
    assert choose_model("cbilstm-lite") == ("cbilstm-lite", "named")
    with pytest.raises(PackagedModelError, match="choose from auto, cbilstm, cbilstm-lite"):
        choose_model("cbilstm-tiny")
    er = EmotionRecognizer(model="cbilstm-lite")
    assert er.manifest.model == "cbilstm-lite" and er.model_choice == "named"
    assert Path(er.manifest.dir) == packaged_dir("cbilstm-lite")
    with pytest.raises(PackagedModelError, match="both name a model"):
        EmotionRecognizer(packaged_dir("cbilstm"), model="cbilstm-lite")
    # no /proc/cpuinfo to read (macOS, a sandbox): the light model, and the reason says the CPU is unknown
    assert choose_model("auto", str(tmp_path / "absent")) == (
        "cbilstm-lite", f"auto: this CPU's features are unknown (nothing read from {tmp_path / 'absent'})")
    # the daemon's command line: both flags name a model, one clear line, exit 2
    from edge_runtime.__main__ import main
    assert main(["--model", "cbilstm-lite", "--artifacts", str(packaged_dir("cbilstm")), "--source", "x.avi"]) == 2


def test_the_light_model_fits_the_budget_of_a_cpu_without_int8_dot_products():
    """At most the fer peer's 10.2 M multiply-accumulates per face, counted from the shipped graphs."""
    from benchmarks.macs import count
    macs = {}
    for name in ("cbilstm-lite", "cbilstm"):
        m = read_manifest(packaged_dir(name))
        macs[name] = {a: count(Path(m.dir) / m.artifacts[a].file)["macs"] for a in ("tflite-int8", "onnx-int8")}
    assert max(macs["cbilstm-lite"].values()) <= 10_000_000 < min(macs["cbilstm"].values())


@pytest.mark.parametrize("model,name", [(m, n) for m in sorted(PACKAGED_MODELS) for n in ("tflite-int8", "onnx-int8")])
def test_packaged_int8_scores_on_test_what_its_manifest_says(model, name):
    from train.data import load_test_split
    m = read_manifest(packaged_dir(model))
    spec = m.preprocessing
    split, _ = load_test_split(SHARED, spec)
    assert len(split) == m.data["test_size"] and split.files_hash() == m.data["test_files_hash"]
    backend = load_backend(m, name)
    b = SCORING_BATCH  # export's scoring batch (dynamically quantized ONNX layers scale per batch)
    probs = np.concatenate([backend.predict(scale_pixels(split.images[i:i + b], spec)) for i in range(0, len(split), b)])
    acc = float((probs.argmax(1) == split.labels).mean())
    assert acc == pytest.approx(m.artifacts[name].accuracy, abs=1e-9)
    assert acc > FLOOR[model]  # the shipped model, not a placeholder


def test_predict_and_predict_proba_on_faces_of_any_size_and_layout(er):
    files = pick_faces(SHARED, 14, seed=9)
    gray = [read_gray(f) for f, _ in files]
    p = er.predict_proba(gray)
    assert p.shape == (14, 7) and np.allclose(p.sum(1), 1, atol=0.02)
    assert er.classes_ == LABELS and er.predict(gray) == [LABELS[i] for i in p.argmax(1)]
    import cv2
    bgr = [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in gray]
    np.testing.assert_array_equal(er.predict_proba(bgr), p)  # colour copies of grey faces: the same input
    big = er.predict([cv2.resize(g, (150, 150), interpolation=cv2.INTER_CUBIC) for g in gray])
    assert sum(a == b for a, b in zip(big, er.predict(gray))) >= 12  # 3x larger copies: nearly all the same
    assert er.predict_proba([]).shape == (0, 7)


def test_detect_emotions_has_fers_keys_and_finds_the_faces(er):
    frame, truth = compose((640, 480), pick_faces(SHARED, 4, seed=3), 120, seed=3)
    faces = er.detect_emotions(frame)
    assert len(faces) == 4
    for f in faces:
        assert set(f) == {"box", "emotions", "landmarks", "score"} and list(f["emotions"]) == list(LABELS)
        assert all(isinstance(v, int) for v in f["box"]) and len(f["landmarks"]) == 5
    label, p = er.top_emotion(frame)
    assert label in LABELS and 0 < p <= 1
    assert er.detect_emotions(np.full((240, 320, 3), 90, np.uint8)) == []
    assert er.top_emotion(np.full((240, 320, 3), 90, np.uint8)) == (None, None)


def test_faces_from_the_callers_own_detector_get_that_detectors_calibrated_crop(er):
    """fer's face_rectangles: boxes from the caller's detector are classified without detecting, framed
    by the crop calibrated for the detector they name. Haar's boxes through the default (YuNet)
    recognizer give exactly what a Haar recognizer gives."""
    frame, _ = compose((640, 480), pick_faces(SHARED, 4, seed=3), 120, seed=3)
    haar = EmotionRecognizer(detector="haar")
    own = haar.analyze(frame)
    assert len(own.detections) >= 3
    given = er.analyze(frame, boxes=own.detections.boxes, box_convention="haar")
    assert np.array_equal(given.regions, own.regions) and np.array_equal(given.probs, own.probs)
    assert given.ms["detect"] < own.ms["detect"]
    # the framing matters: the same boxes read as YuNet's get YuNet's crop, so other regions
    assert not np.array_equal(er.analyze(frame, boxes=own.detections.boxes, box_convention="yunet").regions,
                              own.regions)
    faces = er.detect_emotions(frame, face_rectangles=[list(b) for b in own.detections.boxes.astype(int)],
                               box_convention="haar")
    assert [f["box"] for f in faces] == [[int(v) for v in b] for b in own.detections.boxes.astype(int)]
    assert all(f["score"] == 1.0 and f["landmarks"] is None for f in faces)
    assert er.detect_emotions(frame, face_rectangles=[], box_convention="haar") == []
    for bad, words in ((dict(boxes=[[1, 2, 3]], box_convention="haar"), "rows"),
                       (dict(boxes=[[1, 2, 0, 5]], box_convention="haar"), "positive"),
                       (dict(boxes=[[1, 2, 30, 30]]), "box_convention must name"),
                       (dict(boxes=[[1, 2, 30, 30]], box_convention="mtcnn"), "one of yunet, haar"),
                       (dict(box_convention="haar"), "give boxes too"),
                       (dict(boxes=[[1, 2, 30, 30]], regions=[[0, 0, 9, 9]], box_convention="haar"), "not both")):
        with pytest.raises(ValueError, match=words):
            er.analyze(frame, **bad)


def test_threads_are_bounded_by_the_cpus():
    for bad in (0, -1, max_threads() + 1, 99999):
        with pytest.raises(ValueError, match="threads"):
            EmotionRecognizer(threads=bad)


def test_daemon_refuses_too_many_threads_in_one_line(capsys):
    from edge_runtime.__main__ import main
    assert main(["--threads", "99999", "--source", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.threads" in err[0], err


def test_bad_inputs_are_clear_errors_not_wrong_answers(er):
    face = read_gray(pick_faces(SHARED, 1, seed=4)[0][0])
    assert er.predict([face / 255.0]) == er.predict([face])  # floats in [0, 1] are scaled, not clipped
    with pytest.raises(ValueError, match="pass a list"):
        er.predict(face)
    for bad, err in ((None, TypeError), ((f for f in [face]), TypeError), ([np.zeros((0, 0), np.uint8)], ValueError)):
        with pytest.raises(err):
            er.predict(bad)
    for bad, err in ((None, TypeError), (np.zeros((0, 0)), ValueError), (np.zeros((9, 9, 2), np.uint8), ValueError),
                     (np.full((9, 9), np.nan), ValueError)):
        with pytest.raises(err):
            er.detect_emotions(bad)
    for kw in ({"score": 2.0}, {"score": float("nan")}, {"detector_size": 10}, {"max_faces": 0}):
        with pytest.raises(ValueError):
            EmotionRecognizer(**kw)
    with pytest.raises(TypeError, match="CropSpec"):
        EmotionRecognizer(crop={"scale": 1.2})
    with pytest.raises(BackendError, match="onnx-fp32 is fp32, not int8"):  # a name and a precision that disagree
        EmotionRecognizer(backend="onnx-fp32", precision="int8")


def test_a_training_run_or_a_wrong_detector_model_is_one_line(tmp_path, capsys):
    from edge_runtime.__main__ import main
    assert main(["--artifacts", str(REPO / "models" / "cbilstm"), "--source", "0"]) == 2
    assert "export it first: python -m export --model" in capsys.readouterr().err
    shared = REPO.parent / "shared" / "models" / "yunet" / "yunet_n_320_320.onnx"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    for model, words in ((shared, "python -m export.yunet"), (junk, "cannot load detector model"),
                         (PACKAGED_ARTIFACTS / read_manifest(PACKAGED_ARTIFACTS).artifacts["onnx-int8"].file,
                          "not a YuNet face detector")):
        conf = tmp_path / "c.toml"
        conf.write_text(f'[detector.yunet]\nmodel = "{model}"\n')
        assert main(["--config", str(conf), "--source", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
