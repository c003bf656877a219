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
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import DEFAULTS, ConfigError, build
from .labels import LABELS
from .manifest import atomic_write_bytes, atomic_write_json
from .outputs import OutputError, OwnedDir, exclusive, model_files, staging_dir
from .packaged import MODEL_CHOICES

WRITER = "python -m edge_runtime.batch"
# the containers OpenCV's FFmpeg reads (searched case-insensitively, folders recursively)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".ogv", ".mjpeg")
DONE = "done.json"  # last file of a video's folder: what it was made from (the resume key)
INDEX = "index"     # index.parquet (+ index.csv with --csv): one row per video
STATUSES = ("ok", "partial", "failed")  # partial: some frames did not decode (counted); failed: see `error`
log = logging.getLogger("edge_runtime.batch")


@dataclass(frozen=True)
class Settings:
    """What the outputs depend on besides the video and the model: part of the resume key."""
    every: int = 1
    fps: float = 0.0
    detector: str = "yunet"
    backend: str = "auto"
    annotate: bool = False
    tables: tuple[str, ...] = ("parquet",)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Job:
    path: str        # as the workers see it
    rel: str         # output folder name under --out, from the path relative to its argument
    model: str       # packaged model name, or "" with artifacts
    artifacts: str   # exported folder, or ""
    settings: Settings
    model_sha256: str = ""  # the client's: every worker must load the same file
    identity: dict = field(default_factory=dict)
    annotate_path: str = ""  # where a worker writes the annotated video (the client moves it into place)


# --------------------------------------------------------------------------------------- finding
def find_videos(args: list[str]) -> list[tuple[Path, str]]:
    """(path, relative name) of every video in the arguments; folders are searched recursively. The
    relative name keeps the folder structure, so a/clip.mp4 and b/clip.mp4 never collide."""
    found, seen = [], set()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                    found.append((f, f"{p.name}/{f.relative_to(p).as_posix()}" if len(args) > 1 else
                                  f.relative_to(p).as_posix()))
        elif p.is_file():
            found.append((p, p.name))
        else:
            raise ConfigError(f"{arg}: no such file or folder")
    out = []
    for path, rel in found:
        if rel in seen:
            raise ConfigError(f"two inputs map to the same output name {rel!r}: pass their common folder instead")
        seen.add(rel)
        out.append((path, rel))
    return out


def identity(path: Path) -> dict:
    """What makes a video the same video: size, mtime and a hash of its first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


# ------------------------------------------------------------------------------------ the worker
class _Collect:
    """A daemon sink that keeps the events."""

    def __init__(self):
        self.events: list[dict] = []

    def emit(self, event: dict) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def analyze_video(job: Job) -> dict:
    """Run one video through the daemon (in a worker process); -> its events and facts. Never raises:
    a video that cannot be analysed comes back with status 'failed' and the reason."""
    import cv2
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    t0 = time.monotonic()
    out = {"path": job.path, "rel": job.rel, "status": "failed", "error": "", "events": [], "frames": 0,
           "frames_undecodable": 0, "fps": 0.0, "duration_s": 0.0, "model_sha256": "", "worker": os.uname().nodename}
    try:
        cap = cv2.VideoCapture(job.path)
        fps, n = cap.get(cv2.CAP_PROP_FPS) or 0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
        cap.release()
        every = job.settings.every
        if job.settings.fps and fps > 0:
            every = max(1, int(round(fps / job.settings.fps)))
        layer = {"source": {"uri": job.path, "every": every}, "model": {"threads": 1, "backend": job.settings.backend},
                 "detector": {"type": job.settings.detector}, "run": {"log_level": "warning"}}
        layer["model"].update({"artifacts": job.artifacts} if job.artifacts else {"name": job.model})
        if job.settings.annotate:
            layer["run"]["annotate"] = job.annotate_path
        from .daemon import Daemon
        sink = _Collect()
        d = Daemon(build(flags=layer), sinks=[sink])
        sha = d.recognizer.backend.sha256
        out["model_sha256"] = sha
        if job.model_sha256 and sha != job.model_sha256:
            raise RuntimeError(f"this worker loaded model {sha[:12]}…, the run uses {job.model_sha256[:12]}…")
        rc = d.run()
        snap = d.stats.snapshot()
        out.update(events=sink.events, frames=snap["frames_processed"], frames_undecodable=snap["frames_undecodable"],
                   fps=fps, duration_s=(n / fps if fps > 0 else 0.0), every=every)
        if rc != 0:
            out["error"] = d.capture.error or d.exit_reason or f"the daemon exited with {rc}"
        else:
            out["status"] = "partial" if snap["frames_undecodable"] else "ok"
    except Exception as e:  # one bad video must not end the run: it is recorded, the others go on
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


# ---------------------------------------------------------------------------------------- tables
def frame_rows(events: list[dict]) -> list[dict]:
    """One row per face per analysed frame (the new and update events)."""
    rows = []
    for e in events:
        if e["type"] == "end":
            continue
        x, y, w, h = e["box"]
        rows.append({"frame": e["frame"], "media_s": e["media_s"], "track": e["track"], "x": x, "y": y, "w": w,
                     "h": h, "det_score": e["det_score"], "label": e["label"], "score": e["score"],
                     "raw_label": e["raw_label"], **{f"p_{lab}": e["probs"][lab] for lab in LABELS}})
    return rows


def person_rows(events: list[dict]) -> list[dict]:
    """One row per track (the end events)."""
    rows = []
    for e in events:
        if e["type"] != "end":
            continue
        s = e["summary"]
        rows.append({"track": e["track"], "first_frame": e["first_frame"], "last_frame": e["last_frame"],
                     "first_media_s": s["first_media_s"], "last_media_s": s["last_media_s"],
                     "duration_s": s["duration_s"], "frames_seen": s["frames_seen"],
                     "frames_spanned": s["frames_spanned"], "dominant": s["dominant"],
                     "dominant_pct": s["dominant_pct"], **{f"share_pct_{lab}": s["shares_pct"][lab] for lab in LABELS}})
    return rows


FRAME_COLUMNS = ["frame", "media_s", "track", "x", "y", "w", "h", "det_score", "label", "score", "raw_label",
                 *(f"p_{lab}" for lab in LABELS)]
PERSON_COLUMNS = ["track", "first_frame", "last_frame", "first_media_s", "last_media_s", "duration_s",
                  "frames_seen", "frames_spanned", "dominant", "dominant_pct", *(f"share_pct_{lab}" for lab in LABELS)]


def write_table(rows: list[dict], columns: list[str], base: Path, formats) -> list[str]:
    """rows -> base.parquet (and base.csv): the files written."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: pa.array([], pa.null()) for c in columns})
    table = table.select(columns) if rows else table
    written = []
    if "parquet" in formats:
        pq.write_table(table, base.with_suffix(".parquet"))
        written.append(base.with_suffix(".parquet").name)
    if "csv" in formats:
        pacsv.write_csv(table, base.with_suffix(".csv"))
        written.append(base.with_suffix(".csv").name)
    return written


# ---------------------------------------------------------------------------------------- client
def _video_dir(out: Path, rel: str) -> Path:
    return out / rel


def _done_key(job: Job, model_sha: str) -> dict:
    return {"identity": job.identity, "model_sha256": model_sha, "settings": job.settings.key()}


def already_done(out: Path, job: Job, model_sha: str) -> dict | None:
    """The video's done.json when its outputs exist for this video, model and settings."""
    try:
        done = json.loads((_video_dir(out, job.rel) / DONE).read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("key") == _done_key(job, model_sha) else None


def write_video(out: Path, owned: OwnedDir, job: Job, res: dict, model_sha: str) -> dict:
    """A finished video's folder, written whole: staged beside it, renamed into place."""
    target = _video_dir(out, job.rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(target.parent, f".{target.name}.staging-{os.getpid()}")
    try:
        lines = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in res["events"])
        atomic_write_bytes(stage / "events.jsonl", lines.encode())
        files = ["events.jsonl"]
        files += write_table(frame_rows(res["events"]), FRAME_COLUMNS, stage / "frames", job.settings.tables)
        files += write_table(person_rows(res["events"]), PERSON_COLUMNS, stage / "people", job.settings.tables)
        if job.settings.annotate and Path(job.annotate_path).exists():
            shutil.move(job.annotate_path, stage / "annotated.webm")
            files.append("annotated.webm")
        row = index_row(job, res)
        atomic_write_json(stage / DONE, {"key": _done_key(job, model_sha), "row": row, "files": files})
        from .outputs import seal
        seal(stage, WRITER)
        if target.exists():  # an older result for another model or settings: ours to replace
            from .outputs import read_ledger
            if (read_ledger(target) or {}).get("owner") != WRITER:
                raise OutputError(f"{target} exists and was not written by {WRITER}: move it away")
            old = target.parent / f".{target.name}.replaced-{os.getpid()}"
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    owned.record(job.rel.split("/")[0])
    return row


def index_row(job: Job, res: dict) -> dict:
    events = res.get("events", [])
    return {"video": job.rel, "path": job.path, "status": res["status"], "error": res.get("error", ""),
            "frames": res.get("frames", 0), "frames_undecodable": res.get("frames_undecodable", 0),
            "every": res.get("every", job.settings.every),
            "faces": sum(e["type"] != "end" for e in events), "tracks": sum(e["type"] == "end" for e in events),
            "video_s": round(res.get("duration_s", 0.0), 3), "processing_s": res.get("seconds", 0.0),
            "model_sha256": res.get("model_sha256", ""), "worker": res.get("worker", "")}


INDEX_COLUMNS = ["video", "path", "status", "error", "frames", "frames_undecodable", "every", "faces", "tracks",
                 "video_s", "processing_s", "model_sha256", "worker"]


def write_index(out: Path, rows: list[dict], formats) -> None:
    write_table(sorted(rows, key=lambda r: r["video"]), INDEX_COLUMNS, out / INDEX, formats)


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
    """Analyse videos (files or folders) into ``out``; -> the index, one record per video (a pandas
    DataFrame with ``as_frame``). ``workers``: local processes (default: the CPUs); ``dask``: a
    scheduler address or "local" instead."""
    videos = find_videos([str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)])
    if not videos:
        raise ConfigError("no videos found (extensions: " + " ".join(VIDEO_EXTENSIONS) + ")")
    if every < 1 or fps < 0 or (every > 1 and fps):
        raise ConfigError("give --every N (N >= 1) or --fps F (F > 0), not both")
    settings = Settings(every=every, fps=fps, detector=detector, backend=backend, annotate=annotate,
                        tables=("parquet", "csv") if csv else ("parquet",))
    from .api import EmotionRecognizer  # the client's own load: the model every worker must match
    er = EmotionRecognizer(artifacts or None, backend, threads=1, detector=detector,
                           model=model if not artifacts else "auto")
    model_sha = er.backend.sha256
    out = Path(out)
    inputs = [*model_files(er.manifest.dir), *(p for p, _ in videos)]
    try:
        owned = OwnedDir.claim(out, WRITER, inputs=inputs, data=[p for p in map(Path, [str(x) for x in
                               ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]) if p.is_dir()],
                               flag="--out")
    except OutputError as e:
        raise ConfigError(str(e)) from None
    rows: dict[str, dict] = {}
    try:
        old = json.loads((out / f".{INDEX}.json").read_text())
        rows.update({r["video"]: r for r in old})
    except (OSError, ValueError):
        pass
    with exclusive(out, "python -m edge_runtime.batch"):
        _remove_dead_staging(out)
        jobs, progress = [], _Progress(len(videos), quiet)
        for path, rel in videos:
            job = Job(str(path.resolve()), rel, "" if artifacts else model, str(artifacts or ""), settings, model_sha,
                      identity(path))
            if (done := already_done(out, job, model_sha)) is not None:
                rows[rel] = done["row"]
                progress.update(done["row"], skipped=True)
                continue
            job.annotate_path = str(out / f".{hashlib.sha256(rel.encode()).hexdigest()[:12]}-{os.getpid()}.webm")
            jobs.append(job)
        try:
            for job, res in _run(jobs, workers, dask):
                if res["status"] == "failed":
                    row = index_row(job, res)
                else:
                    row = write_video(out, owned, job, res, model_sha)
                rows[job.rel] = row
                atomic_write_json(out / f".{INDEX}.json", list(rows.values()))
                write_index(out, list(rows.values()), settings.tables)
                owned.record(f".{INDEX}.json", *(f"{INDEX}{s}" for s in (".parquet", ".csv") if (out / f"{INDEX}{s}").exists()))
                progress.update(row)
        finally:
            progress.close()
            for job in jobs:
                Path(job.annotate_path).unlink(missing_ok=True)
    index = sorted(rows.values(), key=lambda r: r["video"])
    if as_frame:
        import pandas as pd
        return pd.DataFrame(index, columns=INDEX_COLUMNS)
    return index


def _remove_dead_staging(out: Path) -> None:
    """What a killed run left: video folders it was staging and annotated videos in the making (their
    process is gone; each carries our marker or our name pattern). Nothing else is touched."""
    from .outputs import pid_alive, dead_staging, remove_staging
    for folder in [out, *(d for d in out.rglob("*") if d.is_dir() and not d.name.startswith("."))]:
        for d in dead_staging(folder, ".*.staging-*"):
            remove_staging(d)
    for f in out.glob(".*-*.webm"):
        pid = f.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            f.unlink(missing_ok=True)


def _run(jobs: list[Job], workers: int | None, dask: str | None):
    """(job, result) as videos finish, on local processes or a Dask cluster."""
    if not jobs:
        return
    if dask:
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None) if dask == "local" else None
        client = Client(cluster if cluster is not None else dask)
        try:
            futures = {client.submit(analyze_video, job, pure=False): job for job in jobs}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed as done_first
    n = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=min(n, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(analyze_video, job): job for job in jobs}
        for fut in done_first(futures):
            yield futures[fut], fut.result()


# ----------------------------------------------------------------------------------------- CLI
EPILOG = f"""examples:
  python -m edge_runtime.batch recordings/ --out analysis/                 # every video, all CPUs
  python -m edge_runtime.batch a.mp4 b.mkv --out analysis/ --every 5 --csv # every 5th frame, CSV too
  python -m edge_runtime.batch /mnt/archive --out analysis/ --dask tcp://scheduler:8786
  python -m edge_runtime.batch recordings/ --out analysis/ --dask local --workers 2

Video extensions searched (folders recursively): {' '.join(VIDEO_EXTENSIONS)}
Outputs, per video (folder OUT/<path relative to its argument>/, written whole): events.jsonl (the
daemon's events, docs/events.schema.json), frames.parquet (one row per face per frame: media time,
box, label, 7 probabilities), people.parquet (one row per track: first/last media time, duration,
dominant emotion, shares); .csv beside each with --csv; annotated.webm with --annotate. OUT/index.parquet:
one row per video (status ok / partial / failed, frames, faces, tracks, seconds of video and of
processing, model sha256). A re-run skips the videos done with the same model and settings.

exit codes: 0 every video ok or partial (undecodable frames skipped and counted); 1 some videos
failed (see the index's status and error); 2 bad arguments; 130 interrupted"""


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
    p.add_argument("--detector", choices=["yunet", "haar"], default=DEFAULTS["detector"]["type"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--every", type=int, default=1, metavar="N", help="analyse every Nth frame (default 1)")
    g.add_argument("--fps", type=float, default=0.0, metavar="F", help="analyse about F frames per second of video")
    p.add_argument("--csv", action="store_true", help="also write each table as CSV")
    p.add_argument("--annotate", action="store_true", help="also write each video annotated (annotated.webm)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.workers is not None and a.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if a.every < 1 or a.fps < 0:
            raise ConfigError("--every must be at least 1 and --fps positive")
        index = analyze(a.inputs, a.out, workers=a.workers, dask=a.dask, model=a.model, artifacts=a.artifacts or "",
                        every=a.every, fps=a.fps, detector=a.detector, backend=a.backend, csv=a.csv,
                        annotate=a.annotate, quiet=a.quiet)
    except KeyboardInterrupt:
        print("edge_runtime.batch: interrupted; the videos finished so far are kept, a re-run goes on",
              file=sys.stderr)
        return 130
    except (ConfigError, OSError, ValueError) as e:
        print(f"edge_runtime.batch: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in index if r["status"] == "failed"]
    frames = sum(r["frames"] for r in index)
    print(f"{len(index)} video(s): {len(index) - len(failed)} analysed, {len(failed)} failed; {frames} frames; "
          f"index: {Path(a.out) / (INDEX + '.parquet')}")
    for r in failed:
        print(f"failed: {r['video']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
