"""Load FER2013 in the layouts people have, cache decoded arrays, carve a validation split.

Layouts: ``train/`` + ``test/`` (shared FER2013, Kaggle "msambare"), ``train/`` + ``validation/``
(Kaggle "Oheix"), or the original ``fer2013.csv``. Images go through the runtime's own
``to_uint8`` so the arrays the model trains on are exactly what the device computes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from edge_runtime.labels import CSV_ORDER, LABELS, NUM_CLASSES, canonical_label
from edge_runtime.manifest import atomic_write_bytes
from edge_runtime.paths import cache_dir, shared_dir
from edge_runtime.preprocess import PreprocessSpec, to_uint8

SHARED_ROOT = shared_dir("data", "fer2013")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp", ".tif", ".tiff"}
EVAL_DIRS = ("test", "validation", "val", "publictest")
FOLD_SEED = 0  # k-fold membership (train.kfold); the validation split keeps python -m train's own seed
CACHE_VERSION = 2  # 2: truncated JPEG/PNG files are skipped
GET_DATA_HINT = ("get FER2013 (e.g. Kaggle 'msambare/fer2013' image folders or the original fer2013.csv) "
                 "and pass --data DIR or set FER_DATA")


class DataError(Exception):
    """A user-fixable problem with the data: one line, exit code 2 at the CLI."""


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, size, size)
    labels: np.ndarray  # int64 (N,) canonical indices
    files: list[str]  # relative to the data root
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self):
        return len(self.labels)

    def take(self, idx) -> "Split":
        idx = np.asarray(idx)
        return Split(self.images[idx], self.labels[idx], [self.files[i] for i in idx], list(self.skipped))

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(LABELS))
        return {lab: int(n) for lab, n in zip(LABELS, c)}

    def files_hash(self) -> str:
        """Identity of the file list (names and labels, not timestamps): stable across clones."""
        h = hashlib.sha256()
        for f, y in zip(self.files, self.labels):
            h.update(f"{f}\t{int(y)}\n".encode())
        return h.hexdigest()


@dataclass
class Dataset:
    root: Path
    layout: str
    train: Split
    val: Split
    test: Split
    test_name: str
    val_fraction: float
    seed: int

    def summary(self) -> dict:
        return {
            "root": str(self.root), "layout": self.layout, "test_split": self.test_name,
            "val_fraction": self.val_fraction, "seed": self.seed,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "class_counts": {s: getattr(self, s).counts() for s in ("train", "val", "test")},
            "files_hash": {s: getattr(self, s).files_hash() for s in ("train", "val", "test")},
            "skipped": {s: [list(x) for x in getattr(self, s).skipped] for s in ("train", "test")},
        }


def skipped_note(**splits: Split) -> str | None:
    """One line counting the unreadable or truncated images each split skipped, or None."""
    counts = {name: len(s.skipped) for name, s in splits.items() if s.skipped}
    if not counts:
        return None
    return (f"skipped {sum(counts.values())} unreadable or truncated image(s) ("
            + ", ".join(f"{n} in {name}" for name, n in counts.items()) + ")")


def resolve_root(arg: str | os.PathLike | None = None) -> Path:
    """--data, else $FER_DATA, else ../shared/data/fer2013 beside the repo."""
    for given, source in ((arg, "--data"), (os.environ.get("FER_DATA"), "FER_DATA")):
        if given:
            p = Path(given).expanduser()
            if not p.exists():
                raise DataError(f"{source} path {p} does not exist; {GET_DATA_HINT}")
            return p.resolve()
    if SHARED_ROOT.exists():
        return SHARED_ROOT.resolve()
    raise DataError(f"no data found at {SHARED_ROOT}; {GET_DATA_HINT}")


def data_root_or_none(arg=None) -> Path | None:
    """The data root --data (or its default) names, or None where there is none: for the output checks
    of commands that only may read data (a default data set is protected like a given one)."""
    try:
        return resolve_root(arg)
    except DataError:
        return None


def find_layout(root: Path) -> tuple[str, Path, Path | None, str]:
    """-> (layout, train path or csv, eval dir or None, eval split name)."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv", root, None, "PublicTest"
        raise DataError(f"{root} is a file but not a .csv")
    for csv_path in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv"):
        if csv_path.is_file() and not (root / "train").is_dir():
            return "csv", csv_path, None, "PublicTest"
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" not in sub:
        raise DataError(f"{root} has no train/ folder and no fer2013.csv; {GET_DATA_HINT}")
    for name in EVAL_DIRS:
        if name in sub:
            return "folders", sub["train"], sub[name], sub[name].name
    raise DataError(f"{root} has train/ but no test/ or validation/ folder")


def list_class_folders(split_dir: Path) -> list[tuple[str, int]]:
    """-> sorted (relative file path, label index); errors name the missing/empty/unknown class."""
    by_label: dict[str, Path] = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        lab = canonical_label(d.name)
        if lab is None:
            raise DataError(f"{d}: unknown class folder '{d.name}' (expected {', '.join(LABELS)})")
        if lab in by_label:
            raise DataError(f"{split_dir}: class '{lab}' appears twice ({by_label[lab].name}, {d.name})")
        by_label[lab] = d
    missing = [lab for lab in LABELS if lab not in by_label]
    if missing:
        raise DataError(f"{split_dir}: missing class folder(s): {', '.join(missing)}")
    items = []
    for lab in LABELS:
        files = sorted(p for p in by_label[lab].iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"{by_label[lab]}: class folder '{lab}' holds no images")
        items += [(str(p.relative_to(split_dir.parent)), LABELS.index(lab)) for p in files]
    return items


def _cache_dir() -> Path:
    return cache_dir("data")


def _cache_key(parts: list[str], spec: PreprocessSpec) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} {spec.size} {spec.interpolation}\n".encode())
    for p in parts:
        h.update(p.encode() + b"\n")
    return h.hexdigest()[:24]


def _load_cached(key: str) -> Split | None:
    path = _cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return Split(z["images"], z["labels"], meta["files"], [tuple(s) for s in meta["skipped"]])
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None


def _save_cached(key: str, split: Split) -> None:
    buf = io.BytesIO()
    meta = json.dumps({"files": split.files, "skipped": [list(s) for s in split.skipped]})
    np.savez(buf, images=split.images, labels=split.labels, meta=np.array(meta))
    atomic_write_bytes(_cache_dir() / f"{key}.npz", buf.getvalue())


def truncated(data: bytes, suffix: str) -> bool:
    """A JPEG without its end marker or a PNG without IEND: cut off in a copy. OpenCV would decode
    the part that arrived and fill the rest with grey, silently."""
    tail = data[-4096:]  # FF D9 cannot occur inside JPEG scan data (0xFF is stuffed), so a wide tail is safe
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" not in tail
    if suffix == ".png":
        return b"IEND" not in tail
    return False


def _decode(path: Path, spec: PreprocessSpec) -> tuple[np.ndarray | None, str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if truncated(data, path.suffix.lower()):
        return None, "truncated image (no end marker)"
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        return None, f"opencv: {e.msg if hasattr(e, 'msg') else e}"
    if img is None or img.size == 0:
        return None, "unreadable or corrupt image"
    try:
        return to_uint8(img, spec), ""
    except (ValueError, cv2.error) as e:
        return None, str(e)


def load_folder_split(split_dir: Path, spec: PreprocessSpec, progress: bool = True) -> Split:
    items = list_class_folders(split_dir)
    base = split_dir.parent
    stats = []
    for rel, _ in items:
        st = (base / rel).stat()
        stats.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
    key = _cache_key(stats, spec)
    cached = _load_cached(key)
    if cached is not None:
        return cached
    with ThreadPoolExecutor(max_workers=4) as pool:  # cv2 releases the GIL while decoding
        decoded = list(tqdm(pool.map(lambda it: _decode(base / it[0], spec), items), total=len(items),
                            desc=f"decoding {split_dir.name}/", unit="img", disable=not progress,
                            mininterval=0.5))
    keep = [i for i, (img, _) in enumerate(decoded) if img is not None]
    skipped = [(items[i][0], reason) for i, (img, reason) in enumerate(decoded) if img is None]
    if not keep:
        raise DataError(f"{split_dir}: no readable images")
    images = np.stack([decoded[i][0] for i in keep])
    labels = np.array([items[i][1] for i in keep], np.int64)
    present = set(labels.tolist())
    for k, lab in enumerate(LABELS):
        if k not in present:
            raise DataError(f"{split_dir}: every image of class '{lab}' is unreadable")
    split = Split(images, labels, [items[i][0] for i in keep], skipped)
    _save_cached(key, split)
    return split


def load_csv(csv_path: Path, spec: PreprocessSpec, progress: bool = True) -> dict[str, Split]:
    """fer2013.csv -> {'Training': Split, 'PublicTest': Split, 'PrivateTest': Split}."""
    st = csv_path.stat()
    key = _cache_key([f"csv {csv_path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}"], spec)
    cached = _load_cached(key)
    if cached is not None:
        return _split_by_usage(cached)
    rows, skipped = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"emotion", "pixels", "Usage"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: expected columns emotion,pixels,Usage; got {reader.fieldnames}")
        for n, row in enumerate(tqdm(reader, desc="parsing csv", unit="row", disable=not progress,
                                     mininterval=0.5)):
            name = f"{row['Usage']}/row{n:05d}"
            try:
                px = np.array(row["pixels"].split(), dtype=np.int64)
                emotion = int(row["emotion"])
                if px.size != 48 * 48 or px.min() < 0 or px.max() > 255 or not 0 <= emotion < 7:
                    raise ValueError("bad pixel count, pixel range or emotion index")
            except (ValueError, AttributeError) as e:
                skipped.append((name, str(e)))
                continue
            img = to_uint8(px.astype(np.uint8).reshape(48, 48), spec)
            rows.append((name, LABELS.index(CSV_ORDER[emotion]), img))
    if not rows:
        raise DataError(f"{csv_path}: no usable rows")
    allsplit = Split(np.stack([r[2] for r in rows]), np.array([r[1] for r in rows], np.int64),
                     [r[0] for r in rows], skipped)
    _save_cached(key, allsplit)
    return _split_by_usage(allsplit)


def _split_by_usage(allsplit: Split) -> dict[str, Split]:
    out = {}
    for usage in ("Training", "PublicTest", "PrivateTest"):
        idx = [i for i, f in enumerate(allsplit.files) if f.startswith(usage + "/")]
        if idx:
            part = allsplit.take(idx)
            part.skipped = [s for s in allsplit.skipped if s[0].startswith(usage + "/")]
            out[usage] = part
    if "Training" not in out:
        raise DataError("fer2013.csv has no Training rows")
    return out


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class: -> (picked ~fraction, rest); at least one of each class picked."""
    rng = np.random.default_rng(seed)
    picked, rest = [], []
    for k in range(len(LABELS)):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(len(idx))]
        n = min(len(idx), max(1, int(round(len(idx) * fraction))))
        picked.append(idx[:n])
        rest.append(idx[n:])
    return np.sort(np.concatenate(picked)), np.sort(np.concatenate(rest))


def test_subset(test: Split, fraction: float, seed: int) -> Split:
    """The stratified share of a test split that a ``fraction`` run evaluates on (reproducible)."""
    return test if fraction >= 1.0 else test.take(stratified_indices(test.labels, fraction, seed + 1)[0])


def load_dataset(root=None, spec: PreprocessSpec = PreprocessSpec(), val_fraction: float = 0.1,
                 seed: int = 1337, fraction: float = 1.0, progress: bool = True) -> Dataset:
    """Train / carved validation / test. ``fraction`` subsamples train and test (quick runs).
    ``val_fraction`` 0 carves nothing: a refit on all of train/ (the validation split is empty)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError("--val-fraction must be in [0, 1)")
    if not 0.0 < fraction <= 1.0:
        raise DataError("--fraction must be in (0, 1]")
    root = resolve_root(root)
    layout, train_src, eval_dir, eval_name = find_layout(root)
    if layout == "csv":
        parts = load_csv(train_src, spec, progress)
        train, test = parts["Training"], parts.get(eval_name)
        if test is None:
            raise DataError(f"{train_src} has no {eval_name} rows")
    else:
        train = load_folder_split(train_src, spec, progress)
        test = load_folder_split(eval_dir, spec, progress)
    if fraction < 1.0:
        train = train.take(stratified_indices(train.labels, fraction, seed)[0])
        test = test_subset(test, fraction, seed)
    if val_fraction > 0:
        val_idx, train_idx = stratified_indices(train.labels, val_fraction, seed)
    else:
        val_idx, train_idx = np.array([], np.int64), np.arange(len(train))
    val = train.take(val_idx)
    val.skipped = []
    train = train.take(train_idx)
    return Dataset(root, layout, train, val, test, eval_name, val_fraction, seed)


def load_train_split(root=None, spec: PreprocessSpec = PreprocessSpec(), fraction: float = 1.0, seed: int = 1337,
                     progress: bool = True) -> tuple[Path, Split]:
    """Only the training split (stratified ``fraction`` as load_dataset takes it), for work that carves
    its own folds (the grid search) and never needs test/: -> (resolved root, split)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError("--fraction must be in (0, 1]")
    root = resolve_root(root)
    layout, train_src, _, _ = find_layout(root)
    train = load_csv(train_src, spec, progress)["Training"] if layout == "csv" else \
        load_folder_split(train_src, spec, progress)
    if fraction < 1.0:
        train = train.take(stratified_indices(train.labels, fraction, seed)[0])
    return root, train


def load_test_split(root, spec: PreprocessSpec, progress: bool = False) -> tuple[Split, str]:
    """Only the evaluation split of a data root (or any image-folder split with class sub-folders)."""
    root = resolve_root(root)
    if root.is_dir() and not (root / "train").is_dir() and not (root / "fer2013.csv").is_file():
        return load_folder_split(root, spec, progress), root.name  # a bare split: <dir>/<class>/*.jpg
    layout, train_src, eval_dir, eval_name = find_layout(root)
    if layout == "csv":
        parts = load_csv(train_src, spec, progress)
        if eval_name not in parts:
            raise DataError(f"{train_src} has no {eval_name} rows")
        return parts[eval_name], eval_name
    return load_folder_split(eval_dir, spec, progress), eval_name


def fold_of(labels: np.ndarray, k: int, seed: int = FOLD_SEED) -> np.ndarray:
    """A fold number in [0, k) per face, stratified: each class is spread evenly over the folds."""
    if not 2 <= k <= 20:
        raise ValueError(f"k must be in [2, 20], not {k!r}")
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % k
    return out
