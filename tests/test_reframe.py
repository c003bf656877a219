"""Training in the device's framing (train/reframe.py), fine-tuning from a run (--init) that
replaces a run folder whole: real FER faces, the packaged YuNet, real TensorFlow training."""
import json
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.manifest import read_manifest, sha256_file
from edge_runtime.preprocess import PreprocessSpec
from train.data import load_dataset

from .conftest import REPO, TINY_EXPORT_FRACTION


def test_reframed_faces_are_the_daemons_crop_of_the_same_face(shared_root):
    from train.reframe import reframe_split
    spec = PreprocessSpec()
    train = load_dataset(shared_root, spec, val_fraction=0, fraction=0.005, progress=False).train.take(range(60))
    images, found = reframe_split(train, spec, seed=3, progress=False)
    assert images.shape == train.images.shape and images.dtype == np.uint8
    assert found.mean() >= 0.85  # YuNet finds most 64-200 px FER faces (the pipeline benchmark: ~95 %)
    assert (images[~found] == train.images[~found]).all()  # a missed face keeps its FER framing
    def corr(a, b):
        return np.median([np.corrcoef(x.ravel().astype(float), y.ravel().astype(float))[0, 1] for x, y in zip(a, b)])
    same, other = corr(images[found], train.images[found]), corr(images[found], np.roll(train.images[found], 1, 0))
    assert same > 0.4 and same - other > 0.3  # the same face, framed a little differently (here 0.56 vs 0.04)
    assert not all((a == b).all() for a, b in zip(images[found], train.images[found]))
    again, _ = reframe_split(train, spec, seed=3, progress=False)  # from the cache, identical
    assert (again == images).all()


@pytest.mark.slow
def test_fine_tune_in_device_framing_replaces_an_existing_run_whole(tiny_run, shared_root, tmp_path):
    import shutil
    out = shutil.copytree(tiny_run, tmp_path / "ft")
    (out / "stray.txt").write_text("someone's notes")
    cmd = [sys.executable, "-m", "train", "--data", str(shared_root), "--init", str(tiny_run),
           "--epochs", "1", "--lr", "3e-4", "--set", "reframe=0.5", "--val-fraction", "0",
           "--fraction", str(TINY_EXPORT_FRACTION), "--quiet", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 2 and "holds files 'train' did not write (stray.txt)" in r.stderr  # never deleted
    assert (out / "stray.txt").read_text() == "someone's notes"
    (out / "stray.txt").unlink()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "device framing: the detector found" in r.stdout
    m = read_manifest(out)
    assert m.init["model_sha256"] == read_manifest(tiny_run).model_sha256
    assert m.reframe["share"] == 0.5 and m.reframe["found"] >= 0.85 * m.reframe["faces"]
    assert m.model_sha256 == sha256_file(out / "model.keras")
    assert not list(tmp_path.glob(".ft.*"))  # no staging or replaced folder left


def test_init_must_be_a_run_of_the_same_model_and_params(tiny_run, tmp_path):
    from train.recipe import TrainConfig
    with pytest.raises(ValueError, match="is not a cbilstm run with these parameters"):
        TrainConfig(model="cbilstm", params={"lstm_units": 32}, init=str(tiny_run)).resolved()
    with pytest.raises(ValueError, match="--init"):
        TrainConfig(model="cbilstm", init=str(tmp_path)).resolved()
    with pytest.raises(ValueError, match=r"reframe = 1.5 must be in \[0.0, 1.0\]"):
        TrainConfig(model="cbilstm", recipe={"reframe": 1.5}).resolved()


def test_a_run_written_before_a_parameter_was_added_can_be_fine_tuned(tmp_path):
    """A run folder written before `pool_dropout` existed lacks the key in its manifest: it trained with
    the builder's default (0.1), which stands in for it, so it can be fine-tuned with those parameters."""
    import shutil

    from train.recipe import TrainConfig, builder_defaults
    old = tmp_path / "old-run"
    shutil.copytree(REPO / "models" / "cbilstm-lite", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["params"].pop("pool_dropout", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert builder_defaults("cbilstm-lite")["pool_dropout"] == 0.1
    ran = {**manifest["params"], "pool_dropout": 0.1}
    params, _, _ = TrainConfig(model="cbilstm-lite", params=ran, init=str(old)).resolved()
    assert params["pool_dropout"] == 0.1
    with pytest.raises(ValueError, match="--init"):
        TrainConfig(model="cbilstm-lite", params={**ran, "pool_dropout": 0.0}, init=str(old)).resolved()
