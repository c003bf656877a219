"""Orchestrate one export: source -> data -> conversions (worker) -> scoring -> gate -> atomic commit.

The orchestrator never imports TensorFlow: conversions and the Keras reference run in
``export.worker``; every artifact is scored through ``edge_runtime.backends.load_backend``,
the very code the device runs.

Atomicity: everything is built in ``OUT/.staging-<pid>/``. File names carry the first 8 hex digits
of their sha256 (``cbilstm_int8.1a2b3c4d.tflite``), so new files never overwrite files the
current manifest points to; ``manifest.json`` is replaced last, in one rename, and only then are
files no manifest refers to removed - only those an export wrote (OUT's ownership ledger,
edge_runtime/outputs.py); OUT must be new, empty, or an export's folder. An export killed at any moment leaves either the old or the
new manifest, each with all its files. An export that fails (a rejected or failed artifact) commits
nothing: its manifest, reports and files go to ``OUT/rejected/`` for inspection, and the live
deployment in ``OUT`` stays as it was.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.cli import results
from edge_runtime.labels import LABELS
from edge_runtime.manifest import (Manifest, ManifestError, atomic_write_json,
                                   atomic_write_text, read_manifest, sha256_file, write_manifest)
from edge_runtime.outputs import (OutputError, OwnedDir, check_target, dead_staging, exclusive, held_folders,
                                  model_files, remove_staging, staging_dir)
from edge_runtime.paths import SOURCE_ROOT, work_root
from edge_runtime.preprocess import PreprocessSpec
from edge_runtime.versions import package_versions

from . import formats as F
from . import gate as G
from .scoring import Conversions, ExportError, time_all

MODELS_DIR = work_root() / "models"
PACKAGED_DIR = Path(__import__("edge_runtime").__file__).resolve().parent / "models"  # what the package ships
WORKER_LOG = "export_worker.log"
REPORTS = ("manifest.json", "export_report.json", "export_report.md", WORKER_LOG)
DEFAULT_MODEL = "cbilstm"
GENERATED = re.compile(r"^.+\.[0-9a-f]{8}\.(tflite|onnx|keras)$")


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class ExportConfig:
    model: str | None = None
    data: str | None = None
    out: str | None = None
    int8: bool = False
    max_drop: float = G.MAX_DROP_PP
    calibration: int = 500
    formats: list[str] | None = None
    extras: bool = False
    allow_partial: bool = False
    packaged: bool = False  # write the model the package ships (make artifacts), not --out
    fraction: float = 1.0
    threads: int = 1
    timing_runs: int = 100
    seed: int = 1337
    progress: bool = True
    log: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.log is None:
            self.log = say


def say(msg: str = "", err: bool = False) -> None:
    print(msg, file=sys.stderr if err else sys.stdout, flush=True)


# ---------------------------------------------------------------- source and data
def resolve_source(arg: str | None) -> tuple[Path, Manifest]:
    """A run folder, a model.keras inside one, or a shipped model's name (models/<name>/)."""
    if arg is None:
        run_dir = MODELS_DIR / DEFAULT_MODEL
    else:
        p = Path(arg).expanduser()
        if p.is_file() and p.suffix == ".keras":
            p = p.parent
        run_dir = p if (p.exists() or "/" in arg or arg.endswith(".keras")) else MODELS_DIR / arg
    model_file = run_dir / "model.keras"
    if not model_file.is_file():
        hint = (f"train one (python -m train --out {run_dir}) or pass --model RUN_DIR"
                if arg is None else "pass a run folder written by python -m train")
        raise ExportError(f"no trained model at {model_file}; {hint}")
    try:
        run = read_manifest(run_dir)
    except ManifestError as e:
        raise ExportError(str(e)) from e
    if run.kind != "run" or run.params is None:
        raise ExportError(f"{run_dir}/manifest.json is not a training run's manifest (kind {run.kind!r}, no params)")
    if sha256_file(model_file) != run.model_sha256:
        raise ExportError(f"{model_file} does not match the sha256 its manifest records (an interrupted "
                          "training run, or a replaced file): retrain it or restore the file")
    return run_dir.resolve(), run


def _legacy_export(out: Path) -> list[str] | None:
    """The files an earlier version's export wrote in ``out`` (its manifest names them), else None."""
    try:
        m = read_manifest(out)
    except (ManifestError, OSError):
        return None
    if m.kind != "artifacts":
        return None
    return [*REPORTS, REJECTED_DIR, *(a.file for a in m.artifacts.values() if a.file)]


def claim_out(cfg: "ExportConfig", run_dir: Path, data_root: Path, out: Path, stack: ExitStack) -> OwnedDir:
    """OUT may be new, empty, or an export's folder; never the run or data it reads, nor the model the
    package ships unless that is the point (--packaged). It is held for this export until ``stack``
    closes: a second export into it is refused, never interleaved with this one's commit and prune."""
    if out.resolve() == run_dir.resolve():
        raise ExportError(f"--out {out} is the run folder being exported: choose another, e.g. artifacts/{run_dir.name}")
    packaged = out.resolve() == PACKAGED_DIR or PACKAGED_DIR in out.resolve().parents
    if packaged and not cfg.packaged:
        raise ExportError(f"--out {out} is the model the package ships: replace it deliberately with "
                          "make artifacts (python -m export --packaged)")
    try:
        if (out / "manifest.json").is_file() and read_manifest(out).kind == "run":
            raise ExportError(f"--out {out} holds a training run (manifest kind 'run'): choose another folder")
    except ManifestError:
        pass  # not ours to judge here: the claim below decides by the ownership marker
    try:
        check_target(out, model_files(run_dir), "--out", [data_root])
        if out.is_dir():  # held before the claim, whose ledger lock would otherwise wait for the other export
            stack.enter_context(exclusive(out, "export"))
        owned = OwnedDir.claim(out, "export", inputs=model_files(run_dir), data=[data_root],
                               legacy=_legacy_export(out), accept=("export",))
        if str(owned.path) not in held_folders():
            stack.enter_context(exclusive(owned.path, "export"))
        return owned
    except OutputError as e:
        raise ExportError(str(e)) from None


def load_data(cfg: ExportConfig, spec: PreprocessSpec):
    from train.data import DataError, load_dataset, skipped_note
    try:
        data = load_dataset(cfg.data, spec, seed=cfg.seed, fraction=cfg.fraction, progress=cfg.progress)
    except DataError as e:
        raise ExportError(str(e)) from e
    note = skipped_note(train=data.train, test=data.test)
    if note:
        cfg.log(f"warning: {note}", err=True)
    missing = [lab for lab, n in data.test.counts().items() if n == 0]
    if missing:
        raise ExportError(f"test split {data.test_name} of {data.root} has no images of class(es) "
                          f"{', '.join(missing)}")
    return data, calibration_set(data.train, cfg.calibration, cfg.seed)


def calibration_set(train, n: int, seed: int = 1337):
    """The stratified training faces that calibrate int8 ranges (export and export.study alike)."""
    from train.data import stratified_indices
    n = max(len(LABELS), min(n, len(train)))
    return train.take(stratified_indices(train.labels, n / len(train), seed)[0])


# ---------------------------------------------------------------- the worker
class Worker:
    """Runs ``python -m export.worker`` and yields its events; restarts after a crash."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.proc: subprocess.Popen | None = None
        self.log_path = staging / "worker.log"

    def events(self, names: list[str]):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(SOURCE_ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", "")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "export.worker", str(self.staging), *names],
                                         stdout=subprocess.PIPE, stderr=log, cwd=SOURCE_ROOT, env=env, text=True)
        yield from results(line.rstrip("\n") for line in self.proc.stdout)
        self.proc.wait()
        yield {"event": "exit", "returncode": self.proc.returncode}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- the export
def _clean_stale_staging(out: Path) -> None:
    """Staging folders of exports that died (they carry our marker; anything else stays)."""
    for d in [*dead_staging(out, ".staging-*"), *dead_staging(out, ".rejected-*")]:
        remove_staging(d)


def run_export(cfg: ExportConfig) -> tuple[Manifest, int]:
    """-> (manifest, exit code). Raises ExportError for user errors. Steps: resolve the source and
    the data, stage the job, convert and score every format, time them, build the manifest, then
    commit it (or set it aside when the export failed)."""
    log = cfg.log
    t_start = time.perf_counter()
    fmts = F.select(cfg.int8, cfg.formats, cfg.extras)
    run_dir, run = resolve_source(cfg.model)
    spec = run.preprocessing
    if cfg.out is not None and not str(cfg.out).strip():  # an unset $OUT must not mean the default folder
        raise ExportError("--out is empty: name the folder to write")
    if cfg.packaged and cfg.out:
        raise ExportError("--packaged writes the model the package ships: give it without --out")
    out = PACKAGED_DIR / run.model if cfg.packaged else Path(cfg.out) if cfg.out else Path("artifacts") / run_dir.name
    from train.data import DataError, resolve_root
    try:
        data_root = resolve_root(cfg.data)
    except DataError as e:
        raise ExportError(str(e)) from e
    stack = ExitStack()
    try:
        owned = claim_out(cfg, run_dir, data_root, out, stack)
    except BaseException:
        stack.close()
        raise
    with stack:
        log(f"export: {run_dir} ({run.model}, input {spec.size}x{spec.size}) -> {out}/ "
            f"[{', '.join(f.name for f in fmts)}]")
        data, calib = load_data(cfg, spec)
        log(f"data: {data.root} ({data.layout}), test split '{data.test_name}' {len(data.test):,} images, "
            f"calibration {len(calib)} train images (stratified)")

        _clean_stale_staging(out)
        staging, worker = out / f".staging-{os.getpid()}", None
        try:
            staging_dir(out, staging.name)
            worker = Worker(staging)
            model_sha = _stage_job(staging, run_dir, run, spec, data, calib)
            conv = Conversions(staging, run_dir, run, spec, data, cfg, model_sha)
            conv.run(worker, [f.name for f in fmts])
            time_all(conv, cfg)
            manifest = _manifest(run_dir, run, data, calib, cfg, model_sha, conv, fmts,
                                 export_seconds=round(time.perf_counter() - t_start, 1))
            committed = exit_code(manifest, cfg.allow_partial) == 0
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            try:  # the commit runs whole: a signal now is delivered after it, and the message names the new manifest
                if committed:
                    _commit(staging, owned, manifest, packaged=cfg.packaged)
                else:
                    _set_aside(staging, owned, manifest)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        except Interrupted as e:
            e.live = _live(out)  # no commit happened: the live manifest, if any, is the previous one
            raise
        finally:
            if worker is not None:
                worker.stop()
            remove_staging(staging)

        log("\nms/face: batch 1, %d thread(s), timed after conversion" % cfg.threads)
        log(G.text_table(manifest))
        code = exit_code(manifest, cfg.allow_partial, out if committed else out / REJECTED_DIR, log)
        if not committed:
            log(f"nothing committed ({_live(out)}); this export's manifest, reports and files are in "
                f"{out / REJECTED_DIR}/", err=True)
        return manifest, code


def _stage_job(staging: Path, run_dir: Path, run: Manifest, spec: PreprocessSpec, data, calib) -> str:
    """The worker's inputs: faces, calibration set, job.json; -> the source model's sha256."""
    np.save(staging / "test.npy", data.test.images)
    np.save(staging / "calibration.npy", calib.images)
    job = {"model_file": str(run_dir / "model.keras"), "model_name": run.model, "params": run.params,
           "preprocessing": spec.to_dict(), "test_file": "test.npy", "calibration_file": "calibration.npy"}
    atomic_write_json(staging / "job.json", job)
    return sha256_file(run_dir / "model.keras")


def _manifest(run_dir: Path, run: Manifest, data, calib, cfg: ExportConfig, model_sha: str,
              conv: Conversions, fmts, export_seconds: float) -> Manifest:
    order = [F.REFERENCE] + [f.name for f in fmts]
    m = Manifest(
        kind="artifacts", model=run.model, labels=tuple(run.labels), preprocessing=run.preprocessing,
        source={"run_dir": str(run_dir), "model_file": "model.keras", "sha256": model_sha,
                "params": run.params, "run_test_metrics": (run.metrics or {}).get("test")},
        data={"root": str(data.root), "layout": data.layout, "test_split": data.test_name,
              "test_size": len(data.test), "test_files_hash": data.test.files_hash(),
              "test_class_counts": data.test.counts(), "fraction": cfg.fraction,
              "calibration": {"size": len(calib), "split": "train", "stratified": True,
                              "files_hash": calib.files_hash()}},
        gate={"max_drop_pp": cfg.max_drop, "rule": "|reference accuracy - artifact accuracy| <= max_drop_pp",
              "timing_note": f"{cfg.threads} thread(s), load average {os.getloadavg()[0]:.1f}"},
        reference={"accuracy": conv.ref["accuracy"], "macro_f1": conv.ref["macro_f1"]},
        artifacts={n: conv.artifacts[n] for n in order if n in conv.artifacts},
        versions=package_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(["python -m export", *sys.argv[1:]]),
        export_seconds=export_seconds)
    return Manifest.from_dict(m.to_dict(), "the export's manifest")  # as the device will read it, or an error now


REJECTED_DIR = "rejected"  # where a failed export's results are kept, beside the live deployment


def _live(out: Path) -> str:
    """One truthful phrase about the deployment ``out`` holds now."""
    try:
        m = read_manifest(out)
        return f"the live manifest is {out / 'manifest.json'}, exported {m.created or '?'}"
    except ManifestError:
        return f"no manifest is live in {out}"


def exit_code(manifest: Manifest, allow_partial: bool, out: Path | None = None, log=None) -> int:
    """0 when every artifact is usable; 1 when one is rejected by the gate, or failed to convert
    (failures are tolerated with ``allow_partial``). Each offender is named on stderr."""
    log = log or (lambda *a, **k: None)
    arts = manifest.artifacts
    rejected = [n for n, a in arts.items() if a.status == G.REJECTED]
    failed = [n for n, a in arts.items() if a.status == G.FAILED]
    log(f"\n{len(arts) - len(rejected) - len(failed)} usable, {len(rejected)} rejected, {len(failed)} failed "
        f"in {manifest.export_seconds or 0:.0f} s -> {out}/manifest.json, export_report.md")
    code = 0
    for n in rejected:
        a = arts[n]
        log(f"error: gate failed for {n}: {a.reason} (accuracy {100 * a.accuracy:.2f} % vs Keras "
            f"{100 * manifest.reference['accuracy']:.2f} %); kept as rejected: {Path(out or '.') / a.file}",
            err=True)
        code = 1
    for n in failed:
        if allow_partial:
            log(f"warning: {n} failed ({arts[n].reason}); accepted (--allow-partial)")
        else:
            log(f"error: {n} failed: {arts[n].reason} (--allow-partial accepts a partial export)", err=True)
            code = 1
    return code


def report(manifest: Manifest) -> dict:
    keys = ("file", "format", "precision", "size", "status", "reason", "accuracy", "macro_f1", "agreement",
            "drop_pp", "max_abs_prob_diff", "convert_seconds", "ms_per_face")
    arts = {n: {k: v for k, v in a.to_dict().items() if k in keys} for n, a in manifest.artifacts.items()}
    return {"model": manifest.model, "source": manifest.source, "data": manifest.data,
            "gate": manifest.gate, "reference": manifest.reference, "artifacts": arts,
            "rejected": [n for n, a in manifest.artifacts.items() if a.status == G.REJECTED],
            "failed": [n for n, a in manifest.artifacts.items() if a.status == G.FAILED],
            "created": manifest.created, "export_seconds": manifest.export_seconds}


def _set_aside(staging: Path, out: OwnedDir, manifest: Manifest) -> None:
    """A failed export's manifest, reports, files and worker log -> OUT/rejected/ (replacing an older one we wrote)."""
    aside = staging_dir(out.path, f".rejected-{os.getpid()}")
    _commit(staging, OwnedDir(aside, "staging"), manifest)
    name = REJECTED_DIR
    if (out.path / name).exists() and not out.remove(name):
        name = f"{REJECTED_DIR}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"  # someone else's 'rejected': kept
    os.replace(aside, out.path / name)
    out.record(name)


def _commit(staging: Path, out: OwnedDir, manifest: Manifest, packaged: bool = False) -> None:
    """Move files in (new names never clash with live ones), then swap the manifest, then prune the
    files of earlier exports no manifest refers to (only files an export wrote). ``packaged``: the
    package a device installs, without the Keras file (its score stays in the reports and in the
    manifest's "reference") and without the worker's log."""
    written = (replace(manifest, artifacts={n: a for n, a in manifest.artifacts.items() if n != F.REFERENCE})
               if packaged else manifest)
    keep = {a.file for a in written.artifacts.values() if a.file}
    reports = [r for r in REPORTS if not (packaged and r == WORKER_LOG)]
    if packaged and out.owns(WORKER_LOG):
        out.remove(WORKER_LOG)  # an earlier export's
    out.record(*keep, *reports)  # listed first: a crash after the moves leaves nothing we cannot prune later
    for f in keep:
        os.replace(staging / f, out.path / f)
    write_manifest(out.path, written)  # the commit point
    atomic_write_json(out.path / "export_report.json", report(manifest))
    atomic_write_text(out.path / "export_report.md", G.markdown_report(manifest))
    if not packaged and (staging / "worker.log").is_file():
        atomic_write_text(out.path / WORKER_LOG, (staging / "worker.log").read_text(errors="replace"))
    for name in out.owned():
        if GENERATED.match(name) and name not in keep:
            out.remove(name)
