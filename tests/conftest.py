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
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))

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
