"""python -m train.grid: the thesis's GridSearchCV, resumable, on one machine or a Dask cluster.

Every cell of the grid is a scikit-learn ``GridSearchCV`` candidate: a scikeras ``KerasClassifier``
over ``train.models.build`` fitted with the thesis's plain recipe (Adam, categorical
cross-entropy, no augmentation, no early stopping) and scored by accuracy on the held-out fold
of a stratified k-fold split of the *train* split (the test split is never read).

Cells are evaluated in small batches (``GridSearchCV._run_search``, scikit-learn's extension
point) so each finished cell is written to ``cv_results.csv`` at once and ``--resume`` skips it.
Fits go through joblib: in-process by default, ``--jobs N`` local processes, or a Dask cluster
(``--dask ADDRESS`` / ``--dask local``). Every fit is seeded the same way and runs with TF op
determinism, so a cell's scores do not depend on where it ran (at equal ``--threads``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.labels import NUM_CLASSES
from edge_runtime.manifest import atomic_write_json
from edge_runtime.preprocess import PreprocessSpec

from .data import DataError
from .grid_estimator import ROUTES, limit_tf_threads, make_estimator, route
from .grid_results import read_results, write_outputs
from edge_runtime.cli import command

THESIS_GRID = {"row_hidden": [32, 64, 128], "col_hidden": [16, 32, 64]}
THESIS_BEST = "thesis (2023): best 0.264 at col_hidden=64, row_hidden=32 (3-fold CV, full train split)"
SETTINGS_FILE = "search.json"
GRID_FILES = (SETTINGS_FILE, "cv_results.csv", "results.txt", "best_params.json", "heatmap.png")  # what --out holds


# ---------------------------------------------------------------- grids

def parse_grid_flag(text: str) -> tuple[str, list]:
    """'row_hidden=32,64,128' -> ('row_hidden', [32, 64, 128]); values are JSON where they parse."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    key, vals = text.split("=", 1)
    out = []
    for v in vals.split(","):
        try:
            out.append(json.loads(v))
        except json.JSONDecodeError:
            out.append(v.strip())
    return key.strip(), out


def read_grid_file(path: Path) -> list[dict]:
    """A JSON or TOML grid: {key: [values]} or a list of such grids (JSON) / [[grid]] tables (TOML)."""
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            raw = tomllib.loads(path.read_text())
            raw = raw.get("grid", raw)
        else:
            raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read grid file {path}: {e}") from e
    grids = raw if isinstance(raw, list) else [raw]
    for g in grids:
        if not isinstance(g, dict) or not all(isinstance(v, list) and v for v in g.values()):
            raise DataError(f"{path}: a grid maps each key to a non-empty list of values")
    return grids


def expand(grids: list[dict]) -> list[dict]:
    """All cells of the grids, in a stable order, duplicates removed."""
    cells, seen = [], set()
    for g in grids:
        keys = sorted(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            cell = dict(zip(keys, combo))
            if cell_key(cell) not in seen:
                seen.add(cell_key(cell))
                cells.append(cell)
    return cells


def cell_key(cell: dict) -> str:
    return json.dumps(cell, sort_keys=True)


def check_cells(cells: list[dict], base_model: str):
    """-> the PreprocessSpec all cells share; one clear error for unknown models or parameters."""
    from dataclasses import replace

    from .models import REGISTRY
    specs = set()
    for cell in cells:
        name = cell.get("model", base_model)
        if name not in REGISTRY:
            raise DataError(f"unknown model {name!r} in the grid (choose from {', '.join(REGISTRY)})")
        entry = REGISTRY[name]
        arch = {k: v for k, v in cell.items() if k not in ROUTES}
        unknown = set(arch) - set(entry.params)
        if unknown:
            raise DataError(f"model {name!r} has no parameter(s) {sorted(unknown)}; grid keys are "
                            f"{sorted(ROUTES)} or one of {sorted(entry.params)}")
        size = int(arch.get("size", entry.params.get("size", entry.preprocessing.size)))
        specs.add(replace(entry.preprocessing, size=size))
    if len(specs) != 1:
        raise DataError("the grid mixes input sizes/preprocessing; run one search per input size")
    return specs.pop()


# ---------------------------------------------------------------- data

def load_train_split(root, spec, fraction: float, seed: int, progress: bool = True):
    """The train split only (train.data.load_train_split), scaled for the network -> root, X, y."""
    from edge_runtime.preprocess import scale_pixels

    from .data import load_train_split as load, skipped_note
    root, train = load(root, spec, fraction, seed, progress)
    if note := skipped_note(train=train):
        print(f"warning: {note}", file=sys.stderr)
    return root, scale_pixels(train.images, spec), train.labels


# ---------------------------------------------------------------- results

def _row(cell: dict, res: dict, i: int, n_splits: int) -> dict:
    row = {"params": cell_key(cell), **{f"param_{k}": v for k, v in sorted(cell.items())}}
    row["mean_test_score"] = float(res["mean_test_accuracy"][i])  # accuracy, the thesis's score
    row["std_test_score"] = float(res["std_test_accuracy"][i])
    for s in range(n_splits):
        row[f"split{s}_test_score"] = float(res[f"split{s}_test_accuracy"][i])
    # held-out log loss: tells cells apart when every model predicts the majority class
    row["mean_test_log_loss"] = -float(res["mean_test_neg_log_loss"][i])
    row["std_test_log_loss"] = float(res["std_test_neg_log_loss"][i])
    for name in ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time"):
        row[name] = float(res[name][i])
    return row


def heatmap_axes(grids: list[dict]) -> tuple[str, str] | None:
    keys = list(dict.fromkeys(k for g in grids for k in g if len(g[k]) > 1)) or \
        list(dict.fromkeys(k for g in grids for k in g))
    if "row_hidden" in keys and "col_hidden" in keys:
        return "row_hidden", "col_hidden"
    if not keys:
        return None
    return (keys[0], keys[1]) if len(keys) > 1 else (None, keys[0])


# ---------------------------------------------------------------- the search

def run_search(X, y, cells: list[dict], fixed: dict, cv: int, seed: int, threads: int | None,
               batch_cells: int, on_cell, backend: str | None = None, n_jobs: int = 1) -> None:
    """GridSearchCV over ``cells``; ``on_cell(cell, row)`` is called as each cell finishes."""
    import joblib
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    total = len(cells)

    class ResumableGridSearchCV(GridSearchCV):
        def _run_search(self, evaluate_candidates):
            done = 0
            for start in range(0, total, batch_cells):
                batch = cells[start:start + batch_cells]
                t0 = time.perf_counter()
                res = evaluate_candidates([route(c) for c in batch])
                n = len(res["params"])
                for k, cell in enumerate(batch):
                    done += 1
                    row = _row(cell, res, n - len(batch) + k, cv)
                    on_cell(cell, row, done, total, time.perf_counter() - t0)

    from sklearn.metrics import log_loss, make_scorer
    # both scores from one predict_proba pass per fold (sklearn caches it across the two scorers)
    scoring = {"accuracy": make_scorer(_proba_accuracy, response_method="predict_proba"),
               "neg_log_loss": make_scorer(log_loss, greater_is_better=False, response_method="predict_proba",
                                           labels=list(range(NUM_CLASSES)))}
    est = make_estimator(seed=seed, threads=threads, **route(fixed))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    search = ResumableGridSearchCV(est, {}, scoring=scoring, cv=folds, refit=False, error_score="raise", verbose=0,
                                   n_jobs=n_jobs)
    if backend:
        with joblib.parallel_config(backend=backend):
            search.fit(X, y)
    else:
        search.fit(X, y)


def _proba_accuracy(y_true, proba) -> float:
    """Accuracy from class probabilities; columns are the canonical label indices 0..6."""
    return float(np.mean(np.asarray(proba).argmax(1) == np.asarray(y_true)))


def start_dask(address: str, workers: int, threads: int | None):
    """-> (client, cluster or None). 'local' starts a LocalCluster on loopback."""
    from dask.distributed import Client, LocalCluster
    if address == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        return Client(cluster), cluster
    return Client(address, timeout="30s"), None


def build_parser() -> argparse.ArgumentParser:
    from .models import REGISTRY
    p = argparse.ArgumentParser(
        prog="python -m train.grid",
        description="Grid search with k-fold cross-validation (scikit-learn GridSearchCV over a "
                    "scikeras Keras classifier) on the train split of FER2013. By default: the "
                    "2023 thesis's search, model 'thesis', row_hidden {32,64,128} x col_hidden "
                    "{16,32,64}, 3-fold CV. Each finished cell is written at once; --resume "
                    "continues an interrupted search.",
        epilog="outputs in --out: cv_results.csv (per cell: mean/std test score, per-fold scores, fit time, "
               "rank), results.txt ('mean (std) with: {params}' + best line), heatmap.png, best_params.json, "
               "search.json (settings)\n\n"
               "exit codes: 0 done; 2 bad arguments, grid or data (one line on stderr); after Ctrl-C, --resume continues\n\n"
               "examples:\n"
               "  python -m train.grid --fraction 0.2 --epochs 5                 # the thesis grid, quick\n"
               "  python -m train.grid --grid lr=1e-3,3e-4 --grid batch_size=32,64\n"
               "  python -m train.grid --grid-file train/grids/thesis.json --cv 5\n"
               "  python -m train.grid --out runs/grid --resume                 # continue after Ctrl-C\n"
               "  python -m train.grid --dask local --workers 2 --threads 1     # a LocalCluster\n"
               "  python -m train.grid --dask tcp://scheduler:8786              # an existing Dask cluster\n"
               "  python -m train --params runs/grid-thesis/best_params.json    # train the winner\n\n"
               f"grid keys: model, lr, batch_size, epochs, or a model parameter ({', '.join(REGISTRY)}: "
               + "; ".join(f"{n}: {', '.join(e.params)}" for n, e in REGISTRY.items()) + ")",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR",
                   help="data root (default: $FER_DATA, else ../shared/data/fer2013); only its train split is used")
    p.add_argument("--model", default="thesis", choices=sorted(REGISTRY),
                   help="model searched unless the grid has a 'model' key (default: thesis)")
    p.add_argument("--grid", action="append", type=parse_grid_flag, default=[], metavar="KEY=V1,V2,...",
                   help="a searched key and its values, e.g. --grid row_hidden=32,64 (repeatable; replaces "
                        "the default grid, overrides the same key of --grid-file)")
    p.add_argument("--grid-file", type=Path, help="JSON or TOML grid: {\"key\": [values], ...} "
                                                  "(JSON may be a list of such grids)")
    p.add_argument("--cv", type=int, default=3, help="folds of stratified cross-validation (default 3)")
    p.add_argument("--fraction", metavar="SHARE", type=float, default=1.0,
                   help="thin train/ (what the search cross-validates on) to this stratified share (default 1.0)")
    p.add_argument("--epochs", type=int, help="epochs per fit unless searched (default: the model's recipe, 30)")
    p.add_argument("--batch-size", type=int, help="batch size unless searched (default: the recipe's, 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate unless searched (default: the recipe's, 1e-3)")
    p.add_argument("--seed", type=int, default=1337, help="seed for the subset, the folds and every fit")
    p.add_argument("--out", type=Path, help="output folder (default: runs/grid-<model>)")
    p.add_argument("--resume", action="store_true", help="keep the finished cells in --out, run the rest")
    p.add_argument("--jobs", type=int, default=1, help="parallel fits on this machine (joblib processes; default 1)")
    p.add_argument("--dask", metavar="ADDRESS", help="run the fits on a Dask cluster: a scheduler address "
                                                     "(tcp://host:8786) or 'local' for a LocalCluster")
    p.add_argument("--workers", type=int, default=2, help="workers of --dask local (default 2)")
    p.add_argument("--threads", metavar="N", type=int,
                   help="TensorFlow CPU threads per fit process (default: all; --dask local: cores / workers)")
    p.add_argument("--batch-cells", type=int, help="cells dispatched together (default: enough to keep all "
                                                   "parallel slots busy; results are written per batch)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


@command("python -m train.grid", bad_input=(DataError, ValueError, TypeError, OSError), tf_log="2")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return _main(args)


def _search_cells(args) -> tuple[list[dict], list[dict], PreprocessSpec, dict]:
    """-> (grids, cells, preprocessing, the fixed fit settings) from the flags and grid file."""
    from .models import get_entry
    if args.cv < 2:
        raise DataError("--cv must be at least 2")
    grids = read_grid_file(args.grid_file) if args.grid_file else [dict(THESIS_GRID)]
    if args.grid:
        flags = dict(args.grid)
        grids = [{**g, **flags} for g in grids] if args.grid_file else [flags]
    cells = expand(grids)
    spec = check_cells(cells, args.model)
    recipe = get_entry(args.model).recipe
    fixed = {"model": args.model, "lr": args.lr or recipe.lr, "batch_size": args.batch_size or recipe.batch_size,
             "epochs": args.epochs or recipe.epochs}
    return grids, cells, spec, fixed


def _resume(out: Path, settings: dict, resume: bool) -> list[dict]:
    """The rows an earlier search in ``out`` finished (none for a new folder); refuses to mix searches."""
    if not ((out / "cv_results.csv").exists() or (out / SETTINGS_FILE).exists()):
        return []
    if not resume:
        raise DataError(f"{out} already holds a search; pass --resume to continue it or choose another --out")
    old = json.loads((out / SETTINGS_FILE).read_text())
    diff = [k for k in settings if k != "grids" and old.get(k) != settings[k]]
    if diff:
        raise DataError(f"--resume: settings differ from the search in {out}: {', '.join(diff)}")
    return read_results(out)


def _workers(args):
    """-> (Dask client, our own cluster or None, joblib backend, TF threads per fit, parallel slots)."""
    client = cluster = backend = None
    threads, slots = args.threads, args.jobs
    if args.dask:
        client, cluster = start_dask(args.dask, args.workers, threads)
        if args.dask == "local" and threads is None:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
        slots = max(1, sum(client.nthreads().values()))
        backend = "dask"
    elif args.jobs != 1:
        backend = "loky"
        slots = os.cpu_count() if args.jobs < 0 else args.jobs
    if not backend:
        limit_tf_threads(threads)
    return client, cluster, backend, threads, slots


def _main(args) -> int:
    grids, cells, spec, fixed = _search_cells(args)
    out = args.out or Path(f"runs/grid-{args.model}")
    settings = {"model": args.model, "fixed": fixed, "cv": args.cv, "fraction": args.fraction, "seed": args.seed,
                "data": None, "preprocessing": spec.to_dict()}
    from edge_runtime.outputs import OwnedDir

    from .data import resolve_root
    legacy = GRID_FILES if (out / SETTINGS_FILE).is_file() else None  # a search an earlier version wrote
    owned = OwnedDir.claim(out, "grid", data=[resolve_root(args.data)], legacy=legacy)
    root, X, y = load_train_split(args.data, spec, args.fraction, args.seed, not args.quiet)
    settings["data"] = str(root)
    settings["n_images"] = int(len(y))
    rows = _resume(out, settings, args.resume)
    owned.record(*GRID_FILES)
    atomic_write_json(out / SETTINGS_FILE, {**settings, "grids": grids})
    done = {r["params"] for r in rows}
    todo = [c for c in cells if cell_key(c) not in done]
    axes = heatmap_axes(grids)
    write_outputs(out, rows, args.model, axes)

    client, cluster, backend, threads, slots = _workers(args)
    batch_cells = args.batch_cells or max(1, math.ceil(slots / args.cv))
    where = f"Dask cluster {client.scheduler_info()['address']} ({slots} threads)" if client else \
        f"{slots} local process(es)"
    print(f"grid search: {len(cells)} cells ({len(cells) - len(todo)} already done) x {args.cv} folds on "
          f"{len(y):,} train images ({args.fraction:g} of train), {fixed['epochs']} epochs per fit, "
          f"on {where}; writing {out}", flush=True)

    t0 = time.perf_counter()

    def on_cell(cell, row, k, n, secs):
        rows.append(row)
        write_outputs(out, rows, args.model, axes)
        if not args.quiet:
            print(f"[cell {k}/{n}] {float(row['mean_test_score']):.4f} ({float(row['std_test_score']):.4f}) "
                  f"with: {cell}   mean fit {float(row['mean_fit_time']):.1f} s, "
                  f"elapsed {(time.perf_counter() - t0) / 60:.1f} min", flush=True)

    try:
        if todo:
            run_search(X, y, todo, fixed, args.cv, args.seed, threads, batch_cells, on_cell, backend,
                       n_jobs=-1 if args.dask else args.jobs)
    finally:
        if cluster is not None:  # our LocalCluster: stop its workers, then the scheduler
            client.retire_workers(close_workers=True)
            client.close()
            cluster.close()
        elif client is not None:  # someone else's cluster: only disconnect
            client.close()
    wall = time.perf_counter() - t0
    best = write_outputs(out, rows, args.model, axes)
    meta = json.loads((out / SETTINGS_FILE).read_text())
    meta["wall_seconds"] = round(meta.get("wall_seconds", 0) + wall, 1)
    atomic_write_json(out / SETTINGS_FILE, meta)
    print("\n" + (out / "results.txt").read_text(), end="")
    print(f"\n{THESIS_BEST}")
    print(f"searched in {wall / 60:.1f} min ({meta['wall_seconds'] / 60:.1f} min over all sessions); "
          f"outputs: {out.resolve()}")
    print(f"train the winner: python -m train --params {out / 'best_params.json'}")
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
