"""python -m export on a tiny trained cbilstm: every format, reload + agreement, gate, sha256,
interrupted export, failing format, user errors. Real data (shared FER2013 subsets), real LiteRT
and onnxruntime through edge_runtime.backends."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import load_backend
from edge_runtime.labels import LABELS
from edge_runtime.manifest import Artifact, Manifest, ManifestError, read_manifest, sha256_file
from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from export.pipeline import exit_code
from train.data import load_dataset

from .conftest import REPO, TINY_EXPORT_FRACTION

FIVE = ["keras", "tflite-fp32", "onnx-fp32", "tflite-int8", "onnx-int8"]
# How close each artifact's probabilities are to Keras' on 50 test faces. fp32 conversions are exact
# (unrolled LSTMs, ONNX LSTM ops): same labels. int8 ones are held to an error bound, not to labels:
# the 1-epoch tiny model is nearly uniform (median top-2 margin ~0.01), so its int8 label flips are
# near ties. Measured on two such models (float32; bf16 with another init): tflite-int8 max <= 0.0087,
# mean <= 0.0025, yet label agreement 0.92 on one; onnx-int8 <= 0.0017 / 0.0004.
# Label agreement of a trained model is the export gate's job, on the whole test split (98.6 % /
# 98.3 % for the shipped model's tflite-int8 / onnx-int8); onnxruntime's int8 overflow on x86
# without VNNI has its own test (test_edge_units.py).
EXACT = {"tflite-fp32", "onnx-fp32"}
MAX_PROB_DIFF = {"tflite-fp32": 1e-4, "onnx-fp32": 1e-4, "tflite-int8": 0.05, "onnx-int8": 0.05}
MEAN_PROB_DIFF = {"tflite-fp32": 1e-5, "onnx-fp32": 1e-5, "tflite-int8": 0.01, "onnx-int8": 0.01}


def export(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "export", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict:
    """Every file's hash, but the ownership ledger's (bookkeeping: it lists what an export wrote)."""
    from edge_runtime.outputs import MARKER
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}


@pytest.fixture(scope="module")
def test50(tiny_artifacts, shared_root):
    spec = read_manifest(tiny_artifacts).preprocessing
    data = load_dataset(shared_root, spec, fraction=TINY_EXPORT_FRACTION, progress=False)
    idx = np.random.default_rng(0).choice(len(data.test), 50, replace=False)
    return scale_pixels(data.test.images[idx], spec), data


def test_tiny_model_exports_to_every_format_with_a_complete_manifest(tiny_artifacts, tiny_run, test50):
    m = read_manifest(tiny_artifacts).to_dict()
    _, data = test50
    assert list(m["artifacts"]) == FIVE
    assert m["labels"] == list(LABELS) and m["preprocessing"]["size"] == 48
    assert m["source"]["sha256"] == sha256_file(tiny_run / "model.keras")
    assert m["data"]["test_files_hash"] == data.test.files_hash()
    assert m["data"]["test_size"] == len(data.test) and m["data"]["root"]
    assert {"tensorflow", "onnxruntime", "ai-edge-litert", "numpy"} <= set(m["versions"]) and m["created"]
    for name, a in m["artifacts"].items():
        assert a["status"] == "usable", (name, a)
        f = tiny_artifacts / a["file"]
        assert f.stat().st_size == a["size"] and sha256_file(f) == a["sha256"]
        assert 0 <= a["accuracy"] <= 1 and 0 <= a["macro_f1"] <= 1 and 0 <= a["agreement"] <= 1
        assert a["drop_pp"] == pytest.approx(100 * (m["reference"]["accuracy"] - a["accuracy"]), abs=1e-3)
    t8 = m["artifacts"]["tflite-int8"]
    assert t8["input"]["dtype"] == "int8" and t8["output"]["dtype"] == "int8"
    assert t8["input"]["shape"] == [1, 48, 48, 1]
    # pixels in [0, 1] map onto the full int8 range
    assert t8["input"]["scale"] == pytest.approx(1 / 255, rel=0.02) and t8["input"]["zero_point"] == -128
    assert m["artifacts"]["onnx-fp32"]["input"]["shape"][0] == -1  # dynamic batch
    assert m["artifacts"]["tflite-int8"]["size"] < 0.5 * m["artifacts"]["tflite-fp32"]["size"]
    report = json.loads((tiny_artifacts / "export_report.json").read_text())
    assert report["rejected"] == [] and report["failed"] == [] and set(report["artifacts"]) == set(FIVE)
    md = (tiny_artifacts / "export_report.md").read_text()
    assert all(f"| {n} |" in md for n in FIVE)


@pytest.mark.parametrize("name", ["tflite-fp32", "onnx-fp32", "tflite-int8", "onnx-int8"])
def test_each_artifact_reloads_and_agrees_with_keras(tiny_artifacts, test50, name):
    import keras
    x, _ = test50
    m = read_manifest(tiny_artifacts)
    ref = keras.models.load_model(tiny_artifacts / m.artifacts["keras"].file).predict(x, verbose=0)
    probs = load_backend(m, name, threads=1).predict(x)
    assert probs.shape == (50, 7) and np.allclose(probs.sum(1), 1, atol=0.05)
    if name in EXACT:
        assert np.array_equal(probs.argmax(1), ref.argmax(1))
    diff = np.abs(probs - ref)
    assert diff.max() <= MAX_PROB_DIFF[name] and diff.mean() <= MEAN_PROB_DIFF[name], (diff.max(), diff.mean())


def test_corrupted_artifact_fails_its_sha256_check(tiny_artifacts, tmp_path):
    out = shutil.copytree(tiny_artifacts, tmp_path / "a")
    m = read_manifest(out)
    f = out / m.artifacts["tflite-int8"].file
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    f.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        load_backend(m, "tflite-int8")
    g = out / m.artifacts["onnx-int8"].file
    g.write_bytes(g.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="truncated"):
        load_backend(m, "onnx-int8")
    load_backend(m, "tflite-fp32").predict(np.zeros((1, 48, 48, 1), np.float32))  # the others still load


def test_gate_is_two_sided():
    from export.gate import REJECTED, USABLE, gate
    assert gate(0.5, 1.0) == (USABLE, "") and gate(-1.0, 1.0) == (USABLE, "")
    assert gate(1.2, 1.0) == (REJECTED, "accuracy drops 1.20 pp, over the 1 pp limit")
    assert gate(-1.2, 1.0) == (REJECTED, "accuracy gains 1.20 pp, over the 1 pp limit")


def _export_manifest(**artifacts) -> Manifest:
    arts = {n: Artifact(format="tflite", precision="int8", **e) for n, e in artifacts.items()}
    return Manifest(kind="artifacts", model="m", labels=LABELS, preprocessing=PreprocessSpec(), artifacts=arts,
                    reference={"accuracy": 0.5})


def test_exit_code_rules():
    usable = {"keras": {"status": "usable"}, "tflite-int8": {"status": "usable"}}
    ok = _export_manifest(**usable)
    failed = _export_manifest(**usable, **{"onnx-int8": {"status": "failed", "reason": "x"}})
    rejected = _export_manifest(**usable, **{"onnx-int8": {"status": "rejected", "reason": "x", "accuracy": 0.4,
                                                          "file": "f"}})
    assert exit_code(ok, False) == 0
    assert exit_code(failed, False) == 1 and exit_code(failed, True) == 0
    assert exit_code(rejected, False) == 1 and exit_code(rejected, True) == 1


def test_user_errors_are_one_line_and_exit_2(tmp_path, tiny_run, tiny_tree, shared_root):
    r = export("--model", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no trained model" in r.stderr
    r = export("--model", tiny_run, "--data", tmp_path / "missing", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    root = tiny_tree(per_class=2)
    shutil.rmtree(root / "test" / "disgust")
    r = export("--model", tiny_run, "--data", root, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "disgust" in r.stderr
    r = export("--formats", "tflite-int4", "--model", tiny_run, "--out", tmp_path / "o")
    assert r.returncode == 2 and "unknown format" in r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    from export import pipeline
    monkeypatch.setattr(pipeline, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(pipeline.ExportError, match=r"no trained model at .*models/cbilstm/model.keras"):
        pipeline.resolve_source(None)


def test_help_explains_the_command():
    r = export("--help", timeout=60)
    assert r.returncode == 0
    for word in ("--int8", "--max-drop", "--calibration", "--allow-partial", "tflite-int8", "onnx-int8",
                 "exit codes", "manifest.json"):
        assert word in r.stdout, word


def test_every_format_is_named_once_in_edge_runtime_and_export_only_adds_how_to_make_it():
    """The artifact names, runtime formats and precisions live in edge_runtime.manifest.ARTIFACT_KINDS;
    export's table, the device's auto order and the benchmark's row order derive from it."""
    from benchmarks.__main__ import ORDER
    from edge_runtime.backends import AUTO_ORDER
    from edge_runtime.manifest import ARTIFACT_KINDS, DEVICE_ORDER, REFERENCE
    from export.formats import FORMATS
    assert [(f.name, f.format, f.precision) for f in FORMATS] == [(k.name, k.format, k.precision) for k in ARTIFACT_KINDS]
    assert AUTO_ORDER is DEVICE_ORDER and set(DEVICE_ORDER) <= {k.name for k in ARTIFACT_KINDS}
    assert ORDER == (REFERENCE, *(k.name for k in ARTIFACT_KINDS))


def test_the_load_check_tolerance_of_an_int8_artifact_is_twice_its_own_int8_error():
    from edge_runtime.backends import REFERENCE_ATOL
    from export.scoring import check_tolerance
    keras = np.full((4, 7), 1 / 7)
    int8 = keras.copy()
    int8[0, 0] += 0.054
    assert check_tolerance("fp32", int8, keras) == REFERENCE_ATOL  # float kernels: summation order only
    assert check_tolerance("int8", int8, keras) == pytest.approx(0.108)  # the Pi 4's kernels: 0.047 off x86's
    assert check_tolerance("int8", keras + 0.001, keras) == REFERENCE_ATOL  # never below the float one
    assert check_tolerance("int8", keras + 0.4, keras) == 0.25  # a wrong preprocessing still shows
