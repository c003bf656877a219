"""python -m edge_runtime.batch: analyse a video archive, on all cores or on a Dask cluster.

Every video goes through the camera daemon's own code path (``Daemon`` and ``EmotionRecognizer``, one
inference thread per worker). Workers read the videos and return their events; the client alone
writes the outputs, each video's folder whole (staged, then renamed), so a killed run leaves only
complete videos behind, and a re-run skips them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import sys
import time
from dataclasses import fields
from pathlib import Path

from .backends import BackendError
from .batch_tables import FRAME_COLUMNS, PERSON_COLUMNS, frame_rows, person_rows, write_table
from .batch_worker import FAILED, Job, Settings, run_jobs
from .cli import command
from .config import DEFAULTS, DETECTOR_SIZES, ConfigError, SourceConfig
from .detectors import DetectorError
from .fields import FieldError, spec_of
from .manifest import ManifestError, atomic_write_bytes, atomic_write_json
from .outputs import OutputError, OwnedDir, check_target, exclusive, model_files
from .packaged import MODEL_CHOICES

WRITER = "python -m edge_runtime.batch"
# the containers OpenCV's FFmpeg reads (searched case-insensitively, folders recursively)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".ogv", ".mjpeg")
DONE = "done.json"  # last file of a video's folder: what it was made from (the resume key)
INDEX = "index"     # index.parquet (+ index.csv with --csv): one row per video
log = logging.getLogger("edge_runtime.batch")


# --------------------------------------------------------------------------------------- finding
def find_videos(args: list[str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """-> ([(video, output name)], [(name, problem)]) for the arguments; folders are searched
    recursively, symlinked folders included (each real folder once: a loop cannot trap the walk), for
    regular files only (a FIFO named .mp4 would block the read). The output name is the video's
    absolute path without its leading '/', so it never depends on how the command was spelled, never
    collides (a/clip.mp4, b/clip.mp4) and never leaves --out; a video given twice (or in a folder given
    too) is analysed once. A problem is keyed the same way when its path resolves."""
    found: dict[str, Path] = {}
    problems: dict[str, str] = {}

    def key(p: Path) -> str:
        try:
            return p.resolve(strict=False).as_posix().lstrip("/")
        except (OSError, RuntimeError):  # a symlink loop
            return os.path.abspath(p).lstrip("/")

    def add(p: Path):
        try:
            real = p.resolve(strict=True)
            regular = stat.S_ISREG(real.stat().st_mode)
        except (OSError, RuntimeError) as e:  # a dangling symlink, a symlink loop
            problems[key(p)] = f"cannot resolve the path ({type(e).__name__})"
            return
        name = real.as_posix().lstrip("/")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problems[name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")] = \
                "the file name is not UTF-8: rename it"
            return
        if not regular:
            problems[name] = "not a regular file (a FIFO, a device or a socket): not read"
            return
        found.setdefault(name, real)

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            seen: set[str] = set()
            for root, dirs, files in os.walk(p, followlinks=True):
                real_root = os.path.realpath(root)
                if real_root in seen:  # a symlinked folder met again (or a loop): searched once
                    dirs[:] = []
                    continue
                seen.add(real_root)
                dirs.sort()
                for f in sorted(files):
                    if Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                        add(Path(root) / f)
        elif os.path.lexists(p):
            add(p)
        else:
            raise ConfigError(f"{arg}: no such file or folder")
    return [(path, name) for name, path in found.items()], list(problems.items())


def identity(path: Path) -> dict:
    """What makes a video the same video: size, mtime and a hash of its first and last MiB (all of it
    up to 2 MiB)."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= 2 << 20:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


# ---------------------------------------------------------------------------------------- client
def _video_dir(out: Path, rel: str) -> Path:
    return out / rel


def _done_key(job: Job, model_sha: str) -> dict:
    return {"identity": job.identity, "model_sha256": model_sha, "settings": job.settings.key()}


def already_done(out: Path, job: Job, model_sha: str) -> dict | None:
    """The video's done.json when its outputs exist, whole, for this video, model and settings."""
    d = _video_dir(out, job.rel)
    try:
        done = json.loads((d / DONE).read_text())
    except (OSError, ValueError):
        return None
    if done.get("key") != _done_key(job, model_sha):
        return None
    sizes = done.get("sizes") or {}
    if set(sizes) != set(done.get("files", [])) or any(
            not (d / f).is_file() or (d / f).stat().st_size != n for f, n in sizes.items()):
        return None  # a file removed or changed since: analysed again
    return done


def foreign_files(out: Path, rel: str) -> list[str]:
    """Files in a video's output folder that this command did not write (they block its replacement)."""
    d = _video_dir(out, rel)
    if not d.is_dir():
        return []
    return OwnedDir(d, WRITER).foreign()


def write_video(out: Path, owned: OwnedDir, job: Job, res: dict, model_sha: str) -> dict:
    """A finished video's folder, written whole: staged beside it, sealed, swapped in; an older
    folder of ours is replaced, one holding anybody else's files is never touched (outputs.py)."""
    from .outputs import replaced_whole
    target = _video_dir(out, job.rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(target, WRITER, tag="staging", log=lambda m: log.warning(m)) as stage:
        lines = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in res["events"])
        atomic_write_bytes(stage / "events.jsonl", lines.encode())
        files = ["events.jsonl"]
        files += write_table(frame_rows(res["events"]), FRAME_COLUMNS, stage / "frames", job.settings.tables)
        files += write_table(person_rows(res["events"]), PERSON_COLUMNS, stage / "people", job.settings.tables)
        if res.get("annotated"):
            atomic_write_bytes(stage / "annotated.webm", res["annotated"])
            files.append("annotated.webm")
        row = index_row(job, res)
        atomic_write_json(stage / DONE, {"key": _done_key(job, model_sha), "row": row, "files": files,
                                         "sizes": {f: (stage / f).stat().st_size for f in files}})
    owned.record(job.rel.split("/")[0])
    return row


def _drop_stale(out: Path, job: Job) -> None:
    """A video that failed now: the results of its earlier content are no longer its results. Its
    folder is removed if it is wholly ours (sealed by this command); anything else stays."""
    from .outputs import read_ledger
    target = _video_dir(out, job.rel)
    ledger = read_ledger(target) if target.is_dir() else None
    if ledger is not None and ledger.get("owner") == WRITER and not OwnedDir(target, WRITER).foreign():
        gone = target.with_name(f".{target.name}.dropped-{os.getpid()}")  # out of sight at once, then removed
        os.replace(target, gone)
        shutil.rmtree(gone)
        log.warning("%s: removed the results of its earlier content (it failed now)", job.rel)


def utc_now() -> str:
    """'2026-12-07T11:35:12.123456Z': sorts as text, fine enough to tell this run's rows from the last's."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def index_row(job: Job, res: dict) -> dict:
    events = res.get("events", [])
    return {"video": job.display or job.rel, "path": job.path, "status": res["status"], "error": res.get("error", ""),
            "frames": res.get("frames", 0), "frames_undecodable": res.get("frames_undecodable", 0),
            "every": res.get("every", job.settings.every),
            "faces": sum(e["type"] != "end" for e in events), "tracks": sum(e["type"] == "end" for e in events),
            "video_s": round(res.get("duration_s", 0.0), 3), "processing_s": res.get("seconds", 0.0),
            "model_sha256": res.get("model_sha256", ""), "model": job.model or job.artifacts,
            "detector": job.settings.detector, "backend": job.settings.backend, "worker": res.get("worker", ""),
            "analysed_at": utc_now()}


# what a row was made with (model, detector, backend, every): an archive analysed in parts stays readable
INDEX_COLUMNS = ["video", "path", "status", "error", "frames", "frames_undecodable", "every", "faces", "tracks",
                 "video_s", "processing_s", "model_sha256", "model", "detector", "backend", "worker", "analysed_at"]


def index_files(formats) -> list[str]:
    return [f".{INDEX}.json", *(f"{INDEX}.{fmt}" for fmt in formats)]


def write_index(out: Path, owned: OwnedDir, rows: list[dict], formats) -> None:
    atomic_write_json(out / f".{INDEX}.json", rows)
    written = write_table(sorted(rows, key=lambda r: r["video"]), INDEX_COLUMNS, out / INDEX, formats)
    owned.record(f".{INDEX}.json", *written)
    if "csv" not in formats:  # a CSV of an earlier run would now be stale
        owned.remove(f"{INDEX}.csv")


class _Progress:
    """A bar on a terminal (videos, frames/s, ETA); one line per video otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.frames, self.t0, self.quiet = total, 0, 0, time.monotonic(), quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="video", desc="videos", file=sys.stderr)

    def update(self, row: dict, skipped: bool = False) -> None:
        self.done += 1
        self.frames += 0 if skipped else row["frames"]
        rate = self.frames / max(time.monotonic() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:.0f} frames/s")
            self.bar.update(1)
        elif not self.quiet:
            what = "skipped (done before)" if skipped else f"{row['status']}, {row['frames']} frames, {row['tracks']} tracks"
            print(f"[{self.done}/{self.total}] {row['video']}: {what}" +
                  (f" ({row['error']})" if row.get("error") and not skipped else ""), file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def analyze(paths, out, *, workers: int | None = None, dask: str | None = None, model: str = "auto",
            artifacts: str = "", every: int = 1, fps: float = 0.0, detector: str = "yunet", backend: str = "auto",
            csv: bool = False, annotate: bool = False, as_frame: bool = False, quiet: bool = True):
    """Analyse videos (files or folders) into ``out``; -> one index record per video given (a pandas
    DataFrame with ``as_frame``); ``out/index.parquet`` holds every video the folder has seen.
    ``workers``: local processes (default: the CPUs); ``dask``: a scheduler address or "local" instead."""
    args = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))]
    try:  # the config's own rule for source.every
        spec_of(next(f for f in fields(SourceConfig) if f.name == "every")).check(every, "--every")
    except FieldError as e:
        raise ConfigError(str(e)) from None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps < 0:
        raise ConfigError(f"--fps must be a number of frames per second > 0, not {fps!r}")
    if every > 1 and fps:
        raise ConfigError("give --every N or --fps F, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be a whole number of processes, at least 1, not {workers!r}")
    if str(out).strip() == "":
        raise ConfigError("--out needs a folder")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    videos, problems = find_videos(args)
    if not videos and not problems:
        raise ConfigError("no videos found (extensions: " + " ".join(VIDEO_EXTENSIONS) + ")")
    settings = Settings(every=every, fps=fps, detector=detector, backend=backend, annotate=annotate,
                        tables=("parquet", "csv") if csv else ("parquet",))
    from .api import EmotionRecognizer  # the client's own load: the model every worker must match
    er = EmotionRecognizer(artifacts or None, backend, threads=1, detector=detector,
                           model=model if not artifacts else "auto")
    model_sha = er.backend.sha256
    out = Path(out)
    inputs = [*model_files(er.manifest.dir), *(p for p, _ in videos)]
    folders = [Path(a) for a in args if Path(a).is_dir()]
    try:
        check_target(out, inputs, "--out", folders)
        out.mkdir(parents=True, exist_ok=True)
        with exclusive(out, "python -m edge_runtime.batch"):  # a second run into --out is refused at once
            owned = OwnedDir.claim(out, WRITER, inputs=inputs, data=folders, flag="--out")
            return _analyze(out, owned, videos, problems, settings, model, artifacts, model_sha, workers, dask,
                            as_frame, quiet)
    except OutputError as e:
        raise ConfigError(str(e)) from None


def _analyze(out, owned, videos, problems, settings, model, artifacts, model_sha, workers, dask, as_frame, quiet):
    names = index_files(("parquet", "csv"))
    if foreign := [f for f in index_files(settings.tables) if (out / f).exists() and not owned.owns(f)]:
        raise OutputError(f"--out {out} holds {', '.join(foreign)}, which this command did not write: move it, "
                          "or choose another folder")
    from .outputs import MARKER
    for f in [*names, MARKER]:  # temp files of a write that a kill interrupted (only one run writes here)
        for tmp in out.glob(f".{f}.*.tmp"):
            tmp.unlink(missing_ok=True)
    _remove_dead_staging(out)
    rows: dict[str, dict] = {}
    try:
        rows.update({r["video"]: r for r in json.loads((out / f".{INDEX}.json").read_text())})
    except (OSError, ValueError, TypeError, KeyError):
        pass
    _agree_with_folders(out, rows)
    mine: list[str] = []  # this run's videos: what the return value, the summary and the exit code are about
    jobs, progress = [], _Progress(len(videos) + len(problems), quiet)
    for name, problem in problems:
        rows[name] = {**index_row(Job(name, name, model, artifacts, settings, display=name),
                                  {"status": FAILED, "error": problem}), "path": name}
        mine.append(name)
        progress.update(rows[name])
    for path, rel in videos:
        job = Job(str(path), rel, "" if artifacts else model, str(artifacts or ""), settings, model_sha)
        mine.append(rel)
        try:
            job.identity = identity(path)
        except OSError as e:
            rows[rel] = index_row(job, {"status": FAILED, "error": f"cannot read the file: {e.strerror or e}"})
            progress.update(rows[rel])
            continue
        if (done := already_done(out, job, model_sha)) is not None:
            rows[rel] = done["row"]
            progress.update(done["row"], skipped=True)
            continue
        if foreign := foreign_files(out, rel):
            rows[rel] = index_row(job, {"status": FAILED, "error": f"its output folder holds files this command "
                                        f"did not write ({', '.join(foreign[:3])}): move them, then run again"})
            progress.update(rows[rel])
            continue
        jobs.append(job)
    cpus = os.cpu_count() or 1
    for job in jobs:  # a Dask worker is one process per core (dask worker --nthreads 1)
        job.decode_thread = not dask and min(workers or cpus, len(jobs)) < cpus
    try:
        for job, res in run_jobs(jobs, workers, dask, quiet):
            if res["status"] == FAILED:
                row = index_row(job, res)
            else:
                try:
                    row = write_video(out, owned, job, res, model_sha)
                except (OutputError, OSError) as e:  # e.g. a name too long to stage beside: this video only
                    reason = str(e) if isinstance(e, OutputError) else f"cannot write its results: {e}"
                    row = index_row(job, {**res, "status": FAILED, "error": reason})
            if row["status"] == FAILED:
                _drop_stale(out, job)
            rows[job.rel] = row
            write_index(out, owned, list(rows.values()), settings.tables)
            progress.update(row)
    finally:
        progress.close()
    write_index(out, owned, list(rows.values()), settings.tables)
    index = [rows[v] for v in mine]
    if as_frame:
        import pandas as pd
        return pd.DataFrame(index, columns=INDEX_COLUMNS)
    return index


def _agree_with_folders(out: Path, rows: dict[str, dict]) -> None:
    """A kill between a video's folder swap and the index write leaves the index a step behind: each
    row takes what the video's own folder says (its done.json), and a row whose folder is gone says so."""
    for name, row in rows.items():
        if row.get("status") == FAILED:
            continue
        try:
            done = json.loads((_video_dir(out, name) / DONE).read_text())
        except (OSError, ValueError):
            rows[name] = {**row, "status": FAILED, "error": "its results folder is gone (removed, or a run was "
                                                          "killed while replacing it): run it again"}
            continue
        if isinstance(done, dict) and isinstance(done.get("row"), dict) and done["row"] != row:
            rows[name] = done["row"]


def _remove_dead_staging(out: Path) -> None:
    """What a killed run left: video folders it was staging or swapping (their process is gone; each
    carries our marker). A swap killed between its two renames is completed (or undone) first, as
    every writer's is (outputs.recover_swap): the last whole copy of a video's results is never removed."""
    from .outputs import dead_staging, recover_swap, remove_staging
    for root, dirs, _ in os.walk(out, followlinks=False):
        for tag in ("staging", "replaced"):
            for d in dead_staging(Path(root), f".*.{tag}-*"):
                target = Path(root) / d.name[1:].rsplit(f".{tag}-", 1)[0]
                recover_swap(target, "staging")
        for d in dead_staging(Path(root), ".*.dropped-*"):  # a stale folder a killed run was removing
            remove_staging(d)
        dirs[:] = [d for d in dirs if not any(f".{tag}-" in d for tag in ("staging", "replaced", "dropped"))]


# ----------------------------------------------------------------------------------------- CLI
EPILOG = f"""examples:
  python -m edge_runtime.batch recordings/ --out analysis/                 # every video, all CPUs
  python -m edge_runtime.batch a.mp4 b.mkv --out analysis/ --every 5 --csv # every 5th frame, CSV too
  python -m edge_runtime.batch /mnt/archive --out analysis/ --dask tcp://scheduler:8786
  python -m edge_runtime.batch recordings/ --out analysis/ --dask local --workers 2

Video extensions searched (folders recursively): {' '.join(VIDEO_EXTENSIONS)}
Outputs, per video, in OUT/<the video's absolute path>/ (stable however the inputs are spelled, never
colliding), written whole: events.jsonl (the daemon's events, docs/events.schema.json), frames.parquet
(one row per face per frame: media time, box, label, 7 probabilities), people.parquet (one row per
track: first/last media time, duration, dominant emotion, shares); .csv beside each with --csv;
annotated.webm with --annotate. OUT/index.parquet: one row per video the folder has seen (status ok /
partial / failed, frames, faces, tracks, seconds of video and of processing, model sha256). A re-run
skips the videos done with the same model and settings whose files are all there.

exit codes: 0 every video given ok or partial (undecodable frames skipped and counted, or a file shorter
than it declares); 1 some failed (see the index's status and error); 2 bad arguments; 130 interrupted
(Ctrl-C or SIGTERM: the videos finished are kept, the others are not started)"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m edge_runtime.batch", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="VIDEO|DIR", help="videos, or folders searched recursively")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; a re-run resumes it)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes, one inference thread each (default: the CPUs); with --dask local, "
                        "its workers (default 2)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a Dask cluster: a scheduler address (tcp://host:8786) "
                                                     "or 'local' for a LocalCluster; workers must see the video paths")
    p.add_argument("--model", choices=MODEL_CHOICES, default="auto",
                   help="packaged model (auto: by the client's CPU; every worker must load the same file)")
    p.add_argument("--artifacts", metavar="DIR", help="instead, an exported model folder (python -m export)")
    p.add_argument("--backend", default="auto", metavar="B", help="auto | tflite | onnx | an artifact name")
    p.add_argument("--detector", choices=list(DETECTOR_SIZES), default=DEFAULTS["detector"]["type"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--every", type=int, default=1, metavar="N", help="analyse every Nth frame (default 1)")
    g.add_argument("--fps", type=float, default=0.0, metavar="F", help="analyse about F frames per second of video")
    p.add_argument("--csv", action="store_true", help="also write each table as CSV")
    p.add_argument("--annotate", action="store_true", help="also write each video annotated (annotated.webm)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    return p.parse_args(argv)


@command("python -m edge_runtime.batch", bad_input=(BackendError, DetectorError, ManifestError, OSError, ValueError),
         interrupted="interrupted; the videos finished so far are kept, a re-run goes on")
def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import signal

    def stop(signum, frame):  # SIGTERM like Ctrl-C: finished videos are kept, the rest not started
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    started = utc_now()
    index = analyze(a.inputs, a.out, workers=a.workers, dask=a.dask, model=a.model, artifacts=a.artifacts or "",
                    every=a.every, fps=a.fps, detector=a.detector, backend=a.backend, csv=a.csv,
                    annotate=a.annotate, quiet=a.quiet)  # ConfigError, PackagedModelError: ValueErrors
    failed = [r for r in index if r["status"] == FAILED]
    skipped = [r for r in index if r.get("analysed_at", "") < started and r["status"] != FAILED]
    frames = sum(r["frames"] for r in index if r not in skipped)
    print(f"{len(index)} video(s): {len(index) - len(failed) - len(skipped)} analysed, {len(skipped)} skipped (done "
          f"before), {len(failed)} failed; {frames} frames analysed; index: {Path(a.out) / (INDEX + '.parquet')}")
    for r in failed:
        print(f"failed: {r['video']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
