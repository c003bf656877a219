import cv2
import numpy as np
import pytest

from edge_runtime.labels import LABELS, canonical_label, remap_indices
from edge_runtime.preprocess import PreprocessSpec, preprocess, preprocess_batch, scale_pixels, to_gray
from train.data import load_folder_split


@pytest.mark.parametrize("size", [48, 32, 64])
def test_edge_path_equals_training_path_bit_for_bit(tiny_tree, size):
    """The device reads BGR frames; training reads files through the data layer. Same bits."""
    spec = PreprocessSpec(size=size)
    root = tiny_tree(per_class=3)
    split = load_folder_split(root / "test", spec, progress=False)
    train_x = scale_pixels(split.images, spec)
    for i, rel in enumerate(split.files):
        frame = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)  # what a camera hands the daemon
        assert frame.ndim == 3 and frame.shape[2] == 3
        edge_x = preprocess(frame, spec)
        assert edge_x.dtype == np.float32 and edge_x.shape == (size, size, 1)
        assert np.array_equal(edge_x, train_x[i]), rel
    assert np.array_equal(preprocess_batch([cv2.imread(str(root / f)) for f in split.files], spec), train_x)


def test_channel_layouts_agree():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    spec = PreprocessSpec(size=48)
    ref = preprocess(gray, spec)
    for img in (gray[..., None], bgr, bgra):
        assert np.array_equal(preprocess(img, spec), ref)
    assert np.array_equal(to_gray((gray.astype(np.uint16) << 8)), gray)
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 4, 2), np.uint8))


def test_scale_and_offset_follow_the_spec():
    img = np.array([[0, 255], [128, 64]], np.uint8)
    fer_peer = PreprocessSpec(size=8, scale=2 / 255, offset=-1.0)  # (x/255 - 0.5) * 2
    x = preprocess(img, fer_peer)
    assert x.shape == (8, 8, 1) and x.min() >= -1.0 and x.max() <= 1.0
    assert PreprocessSpec.from_dict(fer_peer.to_dict()) == fer_peer
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({"size": 48, "mean": 0.5})


def test_label_names():
    assert LABELS == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert canonical_label("Happy") == "happy" and canonical_label("SURPRISED") == "surprise"
    assert canonical_label("contempt") is None
    # the fer package's order -> our indices
    assert remap_indices(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]) == [0, 1, 2, 3, 5, 6, 4]
