"""Nothing already deployed is lost: a failed or interrupted export leaves the live manifest and its
files in place (its results go to OUT/rejected/), an export never writes into a run folder nor
exports a model.keras its manifest does not describe, and an interrupted training leaves the
previous run folder whole (the untrusted-input issue, item 2). Real training, LiteRT, onnxruntime."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from edge_runtime.backends import load_backend
from edge_runtime.manifest import read_manifest, sha256_file

from .conftest import REPO, TINY_EXPORT_FRACTION
from .test_export import FIVE, export, snapshot


def test_a_failed_export_commits_nothing_and_keeps_its_results_aside(tiny_artifacts, tiny_run, shared_root,
                                                                      tmp_path, monkeypatch, capsys):
    """A gate that rejects everything plus a converter failure: exit 1, each named, the rest went on;
    the live deployment in --out is untouched and still loads; the results sit in OUT/rejected/.
    (The tiny model's int8 files often score exactly as Keras on 3 % of test/, so the gate is made
    to reject here; its rule has its own test below.)"""
    from export import gate as G
    from export.pipeline import ExportConfig, run_export
    monkeypatch.setattr(G, "gate", lambda drop, limit: (G.REJECTED, f"accuracy drops 0.50 pp, over the {limit:g} pp limit"))
    monkeypatch.setenv("FER_EXPORT_FAIL", "tflite-fp32")
    out = shutil.copytree(tiny_artifacts, tmp_path / "live")
    before = snapshot(out)
    _, code = run_export(ExportConfig(model=str(tiny_run), data=str(shared_root), out=str(out),
                                      formats=["tflite-fp32", "onnx-int8"], max_drop=0.0, allow_partial=True,
                                      fraction=TINY_EXPORT_FRACTION, progress=False))
    r = capsys.readouterr()
    assert code == 1
    assert "gate failed for onnx-int8" in r.err and "0 pp limit" in r.err
    assert "nothing committed (the live manifest is" in r.err and "rejected/" in r.err
    assert snapshot(out) == before and not list(out.glob(".staging-*")) and not list(out.glob(".rejected-*"))
    m = read_manifest(out)
    x = np.zeros((2, 48, 48, 1), np.float32)
    for name in FIVE[1:]:
        assert load_backend(m, name).predict(x).shape == (2, 7)  # the previous deployment still serves
    aside = read_manifest(out / "rejected")
    a = aside.artifacts["onnx-int8"]
    assert a.status == "rejected" and "limit" in a.reason
    assert sha256_file(out / "rejected" / a.file) == a.sha256  # kept for inspection
    f = aside.artifacts["tflite-fp32"]
    assert f.status == "failed" and "forced failure" in f.reason and f.file is None
    assert "tflite-fp32" in r.out and "FAILED" in r.out  # its row, then the others went on
    assert "warning: tflite-fp32 failed" in r.out
    report = json.loads((out / "rejected" / "export_report.json").read_text())
    assert report["rejected"] == ["onnx-int8"] and report["failed"] == ["tflite-fp32"]


def test_export_refuses_to_write_into_a_run_or_from_a_mismatched_model(tiny_run, shared_root, tmp_path):
    r = export("--model", tiny_run, "--out", tiny_run, "--quiet")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "is the run folder being exported" in r.stderr
    other = shutil.copytree(tiny_run, tmp_path / "other-run")
    r = export("--model", tiny_run, "--out", other, "--quiet")
    assert r.returncode == 2 and "holds a training run" in r.stderr
    assert read_manifest(other).kind == "run"
    (other / "model.keras").write_bytes((other / "model.keras").read_bytes() + b"x")
    r = export("--model", other, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not match the sha256" in r.stderr
    for bad in ("-1", "nan", "1000"):
        r = export("--model", tiny_run, "--max-drop", bad, "--out", tmp_path / "o")
        assert r.returncode == 2 and "--max-drop must be" in r.stderr, bad
    assert not (tmp_path / "o").exists()


def test_sigterm_during_conversion_leaves_previous_artifacts_intact(tiny_artifacts, tiny_run, shared_root,
                                                                   tmp_path):
    out = shutil.copytree(tiny_artifacts, tmp_path / "prev")
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, "-m", "export", "--model", str(tiny_run), "--data", str(shared_root),
                             "--out", str(out), "--formats", "tflite-int8", "--max-drop", "100",
                             "--fraction", str(TINY_EXPORT_FRACTION), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until the converter is running
        if "converting tflite-int8" in line:
            break
        assert time.time() < deadline
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "nothing half-written: the live manifest is" in err
    assert snapshot(out) == before  # nothing added, removed or changed; no staging left
    assert not list(out.glob(".staging-*"))
    m = read_manifest(out)
    x = np.zeros((2, 48, 48, 1), np.float32)
    for name in FIVE[1:]:
        assert load_backend(m, name).predict(x).shape == (2, 7)


def test_an_interrupted_training_leaves_the_previous_run_as_it_was(tiny_run, shared_root, tmp_path):
    import shutil
    out = shutil.copytree(tiny_run, tmp_path / "prev")
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, "-m", "train", "--data", str(shared_root), "--epochs", "30",
                             "--fraction", str(TINY_EXPORT_FRACTION), "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until epochs are being written into the staging folder
        if line.startswith("training cbilstm"):
            break
        assert time.time() < deadline
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert snapshot(out) == before
    m = json.loads((out / "manifest.json").read_text())
    assert m["model_sha256"] == sha256_file(out / "model.keras")


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path):
    """The old run moved aside, the new one not yet in place, the process killed: the next training
    promotes the finished (sealed) new run, or restores the old one if the new one is not whole. A
    folder that merely has a staging folder's name, without our marker, is never touched."""
    from edge_runtime.outputs import recover_swap, seal, staging_dir
    dead = 2 ** 22 + 12345  # no such process
    out = tmp_path / "run"
    new, old = tmp_path / f".run.training-{dead}", tmp_path / f".run.replaced-{dead}"
    for d, tag in ((new, "new"), (old, "old")):
        staging_dir(tmp_path, d.name)
        (d / "manifest.json").write_text(json.dumps({"tag": tag}))
    seal(new, "train")
    seal(old, "train")
    recover_swap(out, "training")
    assert json.loads((out / "manifest.json").read_text())["tag"] == "new" and not new.exists() and not old.exists()

    shutil.rmtree(out)
    staging_dir(tmp_path, new.name)  # a new run that died mid-training: not sealed
    staging_dir(tmp_path, old.name)
    (old / "manifest.json").write_text(json.dumps({"tag": "old"}))
    seal(old, "train")
    recover_swap(out, "training")
    assert json.loads((out / "manifest.json").read_text())["tag"] == "old" and not new.exists()

    shutil.rmtree(out)
    lookalike = tmp_path / f".run.training-{dead}"  # the user's own folder with that name
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    recover_swap(out, "training")
    assert (lookalike / "notes.txt").read_text() == "mine" and not out.exists()


def test_whole_number_floats_become_integers_before_training():
    from train.recipe import TrainConfig
    _, recipe, _ = TrainConfig(model="cbilstm", recipe={"epochs": 10.0, "batch_size": 32.0}).resolved()
    assert (recipe.epochs, recipe.batch_size) == (10, 32) and isinstance(recipe.epochs, int)


def test_a_packaged_export_holds_what_a_device_needs_and_no_keras_file(tiny_run, shared_root, tmp_path, monkeypatch):
    """--packaged (make artifacts) writes the model the package ships: no Keras file, no manifest entry
    for it (its score stays in "reference"), no worker log; the device's artifacts load and serve."""
    from export import pipeline as P
    monkeypatch.setattr(P, "PACKAGED_DIR", tmp_path / "models")
    man, code = P.run_export(P.ExportConfig(model=str(tiny_run), data=str(shared_root), packaged=True,
                                            formats=["tflite-int8"], max_drop=100.0,
                                            fraction=TINY_EXPORT_FRACTION, progress=False, log=lambda *a, **k: None))
    out = tmp_path / "models" / man.model
    assert code == 0 and read_manifest(out).artifacts.keys() == {"tflite-int8"}
    assert not list(out.glob("*.keras")) and not (out / "export_worker.log").exists()
    assert man.reference["accuracy"] > 0 and "| keras |" in (out / "export_report.md").read_text()
    assert "export_worker.log" not in (out / ".fer-edge-owner.json").read_text()  # the ledger lists what is there
    assert load_backend(read_manifest(out), "tflite-int8").predict(np.zeros((2, 48, 48, 1), np.float32)).shape == (2, 7)
