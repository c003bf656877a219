"""python -m benchmarks.calibrate: fits the crop on validation faces (never test/) and writes the
entry the daemon reads, with its provenance."""
import json
import subprocess
import sys

from edge_runtime.packaged import packaged_dir

PACKAGED_ARTIFACTS = packaged_dir("cbilstm")
from edge_runtime.detectors import CROPS_FILE
from edge_runtime.geometry import CropSpec
from edge_runtime.manifest import read_manifest

from .conftest import REPO


def test_calibrate_fits_a_crop_on_validation_faces_and_writes_it_with_its_provenance(tiny_tree, tmp_path):
    root = tiny_tree(per_class=60)
    before = CROPS_FILE.read_bytes()
    out = tmp_path / "crops.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.calibrate", "--artifacts", str(PACKAGED_ARTIFACTS),
                        "--data", str(root), "--detector", "yunet", "--faces", "40", "--write", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "validation faces; accuracy exact crop" in r.stdout and f"wrote {out}" in r.stdout
    table = json.loads(out.read_text())
    entry, fit = table["yunet"]["cbilstm"], table["yunet"]["cbilstm"]["fit"]  # keyed (detector, model)
    crop = CropSpec.from_dict(entry["crop"])
    assert 0.8 <= crop.scale <= 1.5 and abs(crop.dy) <= 0.2  # YuNet's box is a little tighter than FER's framing
    assert fit["data"]["split"].startswith("validation") and fit["found"] >= 20
    assert fit["classifier_sha256"] == read_manifest(PACKAGED_ARTIFACTS).artifacts[fit["classifier"]].sha256
    assert 0 <= fit["val_accuracy"] <= 1 and fit["val_accuracy"] >= fit["geometric_accuracy"]  # the search keeps the best
    assert table["haar"] == json.loads(before)["haar"]  # the other detectors' entries are kept
    assert CROPS_FILE.read_bytes() == before  # --write FILE leaves the packaged table alone

    r = subprocess.run([sys.executable, "-m", "benchmarks.calibrate", "--artifacts", str(REPO / "models" / "cbilstm"),
                        "--data", str(root)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "export it first" in r.stderr and r.stderr.count("\n") == 1
