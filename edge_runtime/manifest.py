"""The manifest contract: atomic writes, sha256 checks, and reading what a consumer needs.

A manifest (run folder or artifacts folder) carries the labels in order and the preprocessing
spec; an artifacts manifest also lists each model file with its sha256, size, input/output
details and status. Consumers read only this file to know how to feed a model.
"""
from __future__ import annotations

import hashlib
import json
from enum import Enum
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .fields import FieldError, checked, spec
from .labels import LABELS
from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
MANIFEST_NAME = "manifest.json"


class Status(str, Enum):
    """An artifact's status: the one place these words are written (export's gate, the backends and
    the benchmark's peers use these members; in JSON they are the plain words)."""
    USABLE = "usable"      # passed the gate: a device may load it
    REJECTED = "rejected"  # converted and ran, but the gate refused its accuracy
    FAILED = "failed"      # did not convert or did not run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ArtifactKind:
    name: str       # the artifact's key in a manifest
    format: str     # runtime format: tflite | onnx
    precision: str  # fp32 | int8 | dr (int8 weights, float activations) | int16x8


REFERENCE = "keras"  # the trained model an export scores its artifacts against
# Every artifact an export can write, in the export's order; export.formats adds how each is made.
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = (
    ArtifactKind("tflite-fp32", "tflite", "fp32"), ArtifactKind("onnx-fp32", "onnx", "fp32"),
    ArtifactKind("tflite-int8", "tflite", "int8"), ArtifactKind("onnx-int8", "onnx", "int8"),
    ArtifactKind("tflite-dr", "tflite", "dr"), ArtifactKind("tflite-int16x8", "tflite", "int16x8"),
)
ARTIFACT_KIND_BY_NAME = {k.name: k for k in ARTIFACT_KINDS}
# what a device loads first (backend `auto`): int8 TFLite is the smallest and fastest form on ARM CPUs
DEVICE_ORDER = ("tflite-int8", "onnx-int8", "tflite-fp32", "onnx-fp32")


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


# --- the contract, typed ------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _typed(cls, d, where: str) -> dict:
    """``d``'s keys checked against ``cls``'s fields: an unknown key, or a value its field's
    ``spec`` refuses, is a ManifestError."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where} is not a JSON object")
    known = {f.name for f in fields(cls)} - {"dir"}  # where it was read from is not stored
    unknown = sorted(set(d) - known)
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return checked(cls, d, where=lambda key: f"{where}: {key}")
    except FieldError as e:
        raise ManifestError(str(e)) from None


DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64")


@dataclass(frozen=True)
class Tensor:
    """A model input or output as the manifest states it (checked against the file at load)."""
    shape: tuple[int, ...] = spec(kind="shape")
    dtype: str = spec(kind="str", choices=DTYPES)
    scale: float | None = spec(None, kind="float")  # int8 tensors: real = scale * (q - zero_point)
    zero_point: int | None = spec(None, kind="int")

    @classmethod
    def from_dict(cls, d, where: str) -> "Tensor":
        d = _typed(cls, d, where)
        if "shape" not in d or "dtype" not in d:
            raise ManifestError(f"{where} needs shape and dtype")
        return cls(**{**d, "shape": tuple(d["shape"])})

    def to_dict(self) -> dict:
        out = {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Artifact:
    """One model file of an export: what it is, its checksum, and what the export measured."""
    format: str = spec(kind="str")    # tflite | onnx | keras (the reference)
    precision: str = spec(kind="str")  # fp32 | int8 | dr | int16x8 ...
    # usable | rejected (by the gate) | failed (did not convert or run)
    status: Status = spec(kind="str", choices=tuple(s.value for s in Status))
    file: str | None = spec(None, kind="str")  # a plain file name in the manifest's folder; None when it failed
    sha256: str | None = spec(None, kind="sha256")
    size: int | None = spec(None, kind="bytes")
    input: Tensor | None = None
    output: Tensor | None = None
    reason: str | None = spec(None, kind="str")  # why rejected or failed
    notes: str | None = spec(None, kind="str")
    parameters: int | None = spec(None, kind="int")
    accuracy: float | None = spec(None, kind="float")  # on the test split, as exported
    macro_f1: float | None = spec(None, kind="float")
    agreement: float | None = spec(None, kind="float")  # share of test faces where it agrees with the reference
    max_abs_prob_diff: float | None = spec(None, kind="float")
    drop_pp: float | None = spec(None, kind="float")  # reference accuracy - this accuracy, percentage points
    ms_per_face: float | None = spec(None, kind="float")
    convert_seconds: float | None = spec(None, kind="float")
    # the export's outputs on preprocess.reference_faces(size, faces, seed): the device recomputes them
    # at load and refuses a file that differs by more than atol (a tampered weight, a wrong runtime)
    check: dict | None = None

    @classmethod
    def from_dict(cls, d, where: str) -> "Artifact":
        d = _typed(cls, d, where)
        for key in ("format", "precision", "status"):
            if key not in d:
                raise ManifestError(f"{where}: {key} is missing")
        d["status"] = Status(d["status"])
        for key in ("input", "output"):
            if d.get(key) is not None:
                d[key] = Tensor.from_dict(d[key], f"{where}.{key}")
        if d.get("check") is not None:
            _check_reference(d["check"], f"{where}.check")
        return cls(**d)

    def to_dict(self) -> dict:  # "file": null says the conversion failed; other unset fields are left out
        return {f.name: (v.to_dict() if isinstance(v, Tensor) else v)
                for f in fields(self) if (v := getattr(self, f.name)) is not None or f.name == "file"}


def _check_reference(c, where: str) -> None:
    if not isinstance(c, dict) or set(c) != {"seed", "faces", "probs", "atol"}:
        raise ManifestError(f"{where} should hold exactly seed, faces, probs and atol")
    ok = (_is_int(c["seed"]) and 0 <= c["seed"] < 2**32 and _is_int(c["faces"]) and 1 <= c["faces"] <= 64
          and _is_num(c["atol"]) and 0 < c["atol"] <= 0.5 and isinstance(c["probs"], list)
          and len(c["probs"]) == c["faces"]
          and all(isinstance(r, list) and len(r) == len(LABELS) and all(_is_num(v) and 0 <= v <= 1 for v in r)
                  for r in c["probs"]))
    if not ok:
        raise ManifestError(f"{where}: seed (uint32), faces (1..64), atol (0, 0.5] and {len(LABELS)} "
                            "probabilities per face are needed")


KINDS = ("run", "artifacts", "peer")
REQUIRED = {"run": ("model_file", "model_sha256", "params", "recipe", "seed", "data", "metrics"),
            "artifacts": ("artifacts",), "peer": ("artifacts",)}
# The record each kind always writes, null or not ("teacher": null says a run was not distilled).
WRITTEN = {"run": ("model_file", "model_sha256", "params", "recipe", "precision", "seed", "init_seed", "parameters",
                   "data", "metrics", "bn_recalibration", "teacher", "init", "reframe", "holdout", "train_seconds",
                   "versions", "created", "command"),
           "artifacts": ("artifacts", "source", "data", "gate", "reference", "versions", "created", "command",
                         "export_seconds"),
           "peer": ("artifacts", "description")}


@dataclass(frozen=True)
class Manifest:
    """A run folder's or an artifacts folder's manifest.json. The device reads only ``labels``,
    ``preprocessing`` and ``artifacts``; the rest is the record of how the folder was made."""
    kind: str = spec(kind="str", choices=KINDS)  # run (python -m train) | artifacts (python -m export) | peer
    model: str = spec(kind="str")
    labels: tuple[str, ...] = spec(kind="strs")  # the model's output order
    preprocessing: PreprocessSpec = spec(kind="dict")
    schema: int = spec(SCHEMA_VERSION, 1, SCHEMA_VERSION)
    artifacts: dict[str, Artifact] = spec(kind="dict", default_factory=dict)  # artifacts and peer kinds
    dir: str = ""                               # the folder it was read from (not stored)
    # run kind
    model_file: str | None = spec(None, kind="str")
    model_sha256: str | None = spec(None, kind="sha256")
    params: dict | None = spec(None, kind="dict")
    recipe: dict | None = spec(None, kind="dict")
    precision: str | None = spec(None, kind="str")
    seed: int | None = spec(None, kind="int")
    init_seed: int | None = spec(None, kind="int")
    parameters: int | None = spec(None, kind="int")
    metrics: dict | None = spec(None, kind="dict")
    bn_recalibration: dict | None = spec(None, kind="dict")
    recalibrated_from: dict | None = spec(None, kind="dict")
    teacher: dict | None = spec(None, kind="dict")
    init: dict | None = spec(None, kind="dict")
    reframe: dict | None = spec(None, kind="dict")
    holdout: dict | None = spec(None, kind="dict")
    time_budget: dict | None = spec(None, kind="dict")
    train_seconds: float | None = spec(None, kind="float")
    # artifacts kind
    source: dict | None = spec(None, kind="dict")
    gate: dict | None = spec(None, kind="dict")
    reference: dict | None = spec(None, kind="dict")
    export_seconds: float | None = spec(None, kind="float")
    description: str | None = spec(None, kind="str")  # peer kind
    # every kind
    data: dict | None = spec(None, kind="dict")
    versions: dict | None = spec(None, kind="dict")
    created: str | None = spec(None, kind="str")
    command: str | None = spec(None, kind="str")

    @classmethod
    def from_dict(cls, d, where: str = "manifest", folder: str | os.PathLike = "") -> "Manifest":
        schema = d.get("schema") if isinstance(d, dict) else None
        if _is_int(schema) and schema > SCHEMA_VERSION:
            raise ManifestError(f"{where} was written by a newer version (schema {schema}; this one reads "
                                f"{SCHEMA_VERSION}): upgrade fer-edge")
        if _is_int(schema) and schema < 1:
            raise ManifestError(f"{where}: schema {schema} is not a version (1 .. {SCHEMA_VERSION})")
        d = _typed(cls, d, where)
        for key in ("labels", "preprocessing", "kind", "model"):
            if key not in d:
                raise ManifestError(f"{where} lacks '{key}'")
        labels = d["labels"]
        if sorted(labels) != sorted(LABELS):
            raise ManifestError(f"{where}: labels {labels!r:.200} are not the FER2013 emotions")
        try:
            prep = PreprocessSpec.from_dict(d["preprocessing"])
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{where}: bad preprocessing spec: {e}") from e
        arts = d.get("artifacts", {} if d["kind"] == "run" else None)
        if not isinstance(arts, dict) or not all(isinstance(e, dict) for e in arts.values()):
            raise ManifestError(f"{where}: 'artifacts' must map names to objects")
        arts = {n: Artifact.from_dict(e, f"{where}: artifact {n}") for n, e in arts.items()}
        missing = [k for k in REQUIRED[d["kind"]] if d.get(k) is None]
        if missing:
            raise ManifestError(f"{where}: a {d['kind']} manifest needs {', '.join(missing)}")
        return cls(**{**d, "labels": tuple(labels), "preprocessing": prep, "artifacts": arts, "dir": str(folder)})

    def to_dict(self) -> dict:
        written = {"schema", "kind", "model", "labels", "preprocessing", *WRITTEN.get(self.kind, ())}
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "dir" or (f.name not in written and v in (None, {})):
                continue
            out[f.name] = (list(v) if f.name == "labels" else v.to_dict() if f.name == "preprocessing" else
                           {n: a.to_dict() for n, a in v.items()} if f.name == "artifacts" else v)
        return out

    def usable(self) -> dict[str, Artifact]:
        return {n: a for n, a in self.artifacts.items() if a.status == Status.USABLE}


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook: a key given twice is refused (plain JSON keeps the last, silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r:.60} appears twice in one object")
        out[key] = value
    return out


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Load a manifest (a file or a folder holding manifest.json), strictly typed."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    try:
        m = json.loads(path.read_text(), object_pairs_hook=unique_keys)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, huge numbers
        raise ManifestError(f"unreadable manifest {path}: {type(e).__name__}: {str(e)[:200]}") from e
    return Manifest.from_dict(m, f"manifest {path}", path.parent)


def write_manifest(folder: str | os.PathLike, manifest: Manifest | dict) -> Manifest:
    """Check ``manifest`` against the schema the reader applies, then write it atomically."""
    as_dict = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    m = Manifest.from_dict(as_dict, "manifest to write", folder)  # what the reader will accept, or nothing
    atomic_write_json(Path(folder) / MANIFEST_NAME, m.to_dict())
    return replace(m, dir=str(folder))


def artifact_path(manifest: Manifest, name: str) -> Path:
    """The file of artifact ``name``: a plain file name inside the manifest's folder, no symlink.
    A manifest is untrusted input: it may not point the device at files elsewhere."""
    entry = manifest.artifacts[name]
    file, sha = entry.file, entry.sha256
    if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file or "\0" in file:
        raise ManifestError(f"artifact {name}: file {file!r:.100} must be a plain file name inside {manifest.dir}")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"artifact {name}: sha256 {sha!r:.80} is not 64 hex digits")
    size = entry.size
    if size is not None and size < 0:
        raise ManifestError(f"artifact {name}: size {size!r:.40} is not a byte count")
    folder = Path(manifest.dir)
    path = folder / file
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise ManifestError(f"artifact {name}: {path} is a symlink or leaves {folder}; copy the file in instead")
    return path


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
