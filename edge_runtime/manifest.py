"""The manifest contract: atomic writes, sha256 checks, and reading what a consumer needs.

A manifest (run folder or artifacts folder) carries the labels in order and the preprocessing
spec; an artifacts manifest also lists each model file with its sha256, size, input/output
details and status. Consumers read only this file to know how to feed a model.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .labels import LABELS
from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
MANIFEST_NAME = "manifest.json"


class ManifestError(Exception):
    """A manifest or the file it describes cannot be trusted."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    try:  # numpy scalars and arrays
        return o.item() if getattr(o, "ndim", 1) == 0 else o.tolist()
    except AttributeError:
        return str(o)


def read_manifest(path: str | os.PathLike) -> dict:
    """Load a manifest (a file or a folder holding manifest.json) and check its shared fields."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"unreadable manifest {path}: {e}") from e
    if not isinstance(m, dict):
        raise ManifestError(f"manifest {path} is not a JSON object")
    for key in ("labels", "preprocessing"):
        if key not in m:
            raise ManifestError(f"manifest {path} lacks '{key}'")
    try:
        PreprocessSpec.from_dict(m["preprocessing"])
    except (TypeError, ValueError) as e:
        raise ManifestError(f"manifest {path}: bad preprocessing spec: {e}") from e
    labels = m["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or sorted(labels) != sorted(LABELS):
        raise ManifestError(f"manifest {path}: labels {labels!r:.200} are not the FER2013 emotions")
    arts = m.get("artifacts", {})
    if not isinstance(arts, dict) or not all(isinstance(e, dict) for e in arts.values()):
        raise ManifestError(f"manifest {path}: 'artifacts' must map names to objects")
    m["_dir"] = str(path.parent)
    return m


def artifact_path(manifest: dict, name: str) -> Path:
    """The file of artifact ``name``: a plain file name inside the manifest's folder, no symlink.
    A manifest is untrusted input: it may not point the device at files elsewhere."""
    entry = manifest["artifacts"][name]
    file, sha = entry.get("file"), entry.get("sha256")
    if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file or "\0" in file:
        raise ManifestError(f"artifact {name}: file {file!r:.100} must be a plain file name inside {manifest['_dir']}")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"artifact {name}: sha256 {sha!r:.80} is not 64 hex digits")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"artifact {name}: size {size!r:.40} is not a byte count")
    folder = Path(manifest["_dir"])
    path = folder / file
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise ManifestError(f"artifact {name}: {path} is a symlink or leaves {folder}; copy the file in instead")
    return path


def preprocess_spec(manifest: dict) -> PreprocessSpec:
    return PreprocessSpec.from_dict(manifest["preprocessing"])


def verify_file(path: str | os.PathLike, sha256: str, size: int | None = None) -> None:
    """Raise ManifestError unless the file exists with the expected size and sha256."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} is missing")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ManifestError(f"{path} is {actual_size} bytes, manifest says {size} (truncated or replaced)")
    digest = sha256_file(path)
    if digest != sha256:
        raise ManifestError(f"{path} sha256 {digest[:12]}… does not match the manifest's {sha256[:12]}…")
