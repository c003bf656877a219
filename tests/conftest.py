import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from edge_runtime.labels import LABELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_DATA", REPO.parent / "shared" / "data" / "fer2013"))


@pytest.fixture(scope="session")
def shared_root() -> Path:
    assert (SHARED / "train").is_dir() and (SHARED / "test").is_dir(), f"shared FER2013 not found at {SHARED}"
    return SHARED


def pick_files(root: Path, split: str, per_class: int) -> dict[str, list[Path]]:
    return {lab: sorted((root / split / lab).glob("*.jpg"))[:per_class] for lab in LABELS}


@pytest.fixture
def tiny_tree(tmp_path, shared_root, monkeypatch):
    """A small train/ + test/ copy of the shared data in a temp folder (never in the repo)."""
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path / "cache"))

    def make(name="tiny", per_class=6, test_name="test", rename=None):
        root = tmp_path / name
        for split, src_split in (("train", "train"), (test_name, "test")):
            for lab, files in pick_files(shared_root, src_split, per_class).items():
                d = root / split / (rename(lab) if rename else lab)
                d.mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copy(f, d / f.name)
        return root

    return make


def read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------- export (shared by export, edge-runtime
# and benchmark tests): a tiny trained model exported once per session to every format.
TINY_EXPORT_FRACTION = 0.03


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_root) -> Path:
    """A cbilstm trained for 1 epoch on 3 % of the shared data: a real run folder (model.keras + manifest)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("tiny_run") / "cbilstm"
    r = subprocess.run([sys.executable, "-m", "train", "--data", str(shared_root), "--model", "cbilstm",
                        "--epochs", "1", "--fraction", str(TINY_EXPORT_FRACTION), "--quiet", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_run, shared_root) -> Path:
    """`python -m export --int8` of ``tiny_run`` with a permissive gate: a folder holding manifest.json
    and all five artifacts (keras, tflite-fp32, tflite-int8, onnx-fp32, onnx-int8), scored on 3 % of
    the test split. Treat it as read-only (copy it before modifying)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("tiny_artifacts") / "cbilstm"
    r = subprocess.run([sys.executable, "-m", "export", "--int8", "--model", str(tiny_run),
                        "--data", str(shared_root), "--out", str(out), "--max-drop", "100",
                        "--calibration", "64", "--fraction", str(TINY_EXPORT_FRACTION), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert (out / "manifest.json").is_file()
    return out
