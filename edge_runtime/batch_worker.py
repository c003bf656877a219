"""The batch analyser's worker side: one video through the camera daemon's own code path, in a worker
process (a local pool or a Dask worker); its events and facts go back to the client, which alone writes.
``run_jobs`` runs the workers: a local process pool (a dead worker fails its video, not the run) or a
Dask cluster."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import build
from .sinks import Sink


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
    display: str = ""        # the name shown and indexed
    # decode in a second thread only where a core would otherwise idle (fewer workers than CPUs);
    # the events are the same either way
    decode_thread: bool = False


OK, PARTIAL, FAILED = "ok", "partial", "failed"  # a video's status in the index: the one place these words live
STATUSES = (OK, PARTIAL, FAILED)  # partial: some frames did not decode (counted); failed: see `error`


class _Collect(Sink):
    """A daemon sink that keeps the events."""

    def __init__(self):
        self.events: list[dict] = []

    def emit(self, event: dict) -> None:
        self.events.append(event)


def worker_init(client_pid: int | None = None) -> None:
    """A pool worker dies with the client (Linux): a killed client leaves no orphan behind, also when
    it died before this ran (the death signal is only armed from here on)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if client_pid is not None and os.getppid() != client_pid:
        os._exit(1)


def ends_early(last_s: float | None, declared: float, fps: float) -> bool:
    """Fewer frames than the container declares, and they stop short in time as well: a truncated file.
    (A count alone misleads: OpenCV estimates it from duration x average fps, wrong for variable rates.)"""
    return last_s is None or fps <= 0 or last_s + 1.5 / fps < declared / fps


def analyze_video(job: Job) -> dict:
    """Run one video through the daemon (in a worker process); -> its events and facts. Never raises:
    a video that cannot be analysed comes back with status 'failed' and the reason."""
    import cv2
    logging.getLogger("edge_runtime").setLevel(logging.WARNING)
    t0 = time.monotonic()
    out = {"path": job.path, "rel": job.rel, "status": FAILED, "error": "", "events": [], "frames": 0,
           "frames_undecodable": 0, "fps": 0.0, "duration_s": 0.0, "model_sha256": "", "worker": os.uname().nodename}
    try:
        cap = cv2.VideoCapture(job.path)
        fps, n = cap.get(cv2.CAP_PROP_FPS) or 0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
        cap.release()
        fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0
        n = n if math.isfinite(n) and 0 < n < 1e9 else 0  # a raw MJPEG stream reports -1.9e14: unknown
        every = job.settings.every
        if job.settings.fps and fps > 0:
            every = max(1, int(round(fps / job.settings.fps)))
        layer = {"source": {"uri": job.path, "every": every, "decode_thread": job.decode_thread},
                 "model": {"threads": 1, "backend": job.settings.backend},
                 "detector": {"type": job.settings.detector}, "run": {"log_level": "warning"}}
        layer["model"].update({"artifacts": job.artifacts} if job.artifacts else {"name": job.model})
        tmp = None
        if job.settings.annotate:  # written in the worker's own temp folder, sent back with the events
            import tempfile

            from .outputs import dead_staging, remove_staging, staging_dir
            scratch = Path(tempfile.gettempdir())
            for old in dead_staging(scratch, "fer-edge-batch-*"):  # of workers killed mid-video: ours, marked
                remove_staging(old)
            tmp = str(staging_dir(scratch, f"fer-edge-batch-{os.urandom(4).hex()}-{os.getpid()}"))
            layer["run"]["annotate"] = os.path.join(tmp, "annotated.webm")
        from .daemon import Daemon
        sink = _Collect()
        d = Daemon(build(flags=layer), sinks=[sink])
        sha = d.recognizer.backend.sha256
        out["model_sha256"] = sha
        if job.model_sha256 and sha != job.model_sha256:
            raise RuntimeError(f"this worker loaded model {sha[:12]}…, the run uses {job.model_sha256[:12]}…")
        try:
            rc = d.run()
            if tmp is not None and os.path.exists(os.path.join(tmp, "annotated.webm")):
                with open(os.path.join(tmp, "annotated.webm"), "rb") as f:
                    out["annotated"] = f.read()
        finally:
            if tmp is not None:
                remove_staging(Path(tmp))
        snap = d.stats.snapshot()
        decoded = d.capture._decoded
        out.update(events=sink.events, frames=snap["frames_processed"], frames_undecodable=snap["frames_undecodable"],
                   fps=fps, duration_s=(n / fps if fps > 0 else 0.0), every=every)
        if rc != 0:
            out["error"] = d.capture.error or d.exit_reason or f"the daemon exited with {rc}"
        elif snap["frames_undecodable"]:
            out["status"], out["error"] = PARTIAL, f"{snap['frames_undecodable']} frame(s) did not decode"
        elif n > 0 and decoded < n and ends_early(d.capture._media_last, n, fps):  # truncated
            out["status"], out["error"] = PARTIAL, f"{decoded} of the {int(n)} frames the file declares were read"
        else:
            out["status"] = OK
    except Exception as e:  # one bad video must not end the run: it is recorded, the others go on
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def run_jobs(jobs: list[Job], workers: int | None, dask: str | None, quiet: bool = True):
    """(job, result) as videos finish, on local processes or a Dask cluster. A worker that dies (killed,
    out of memory) fails its video, not the run: the others go on in a fresh pool."""
    if not jobs:
        return
    if dask:
        if quiet:  # distributed logs its start-up at INFO
            logging.getLogger("distributed").setLevel(logging.WARNING)
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.WARNING if quiet else logging.INFO) \
            if dask == "local" else None
        client = Client(cluster if cluster is not None else dask)
        try:
            futures = {client.submit(analyze_video, job, pure=False): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except Exception as e:  # the worker died under the video
                    res = {"status": FAILED, "error": f"the worker failed: {type(e).__name__}: {e}"}
                yield job, res
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed as done_first
    from concurrent.futures.process import BrokenProcessPool
    todo, tries = list(jobs), {id(j): 0 for j in jobs}
    while todo:
        pool = ProcessPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, len(todo)),
                                   mp_context=mp.get_context("spawn"), initializer=worker_init,
                                   initargs=(os.getpid(),))
        futures = {pool.submit(analyze_video, job): job for job in todo}
        todo = []
        try:
            for fut in done_first(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    tries[id(job)] += 1
                    if tries[id(job)] < 2:  # maybe not this video's fault: once more, in a fresh pool
                        todo.append(job)
                        continue
                    res = {"status": FAILED, "error": "the worker process died while analysing it (killed or "
                                                        "out of memory), twice"}
                yield job, res
        except BaseException:
            # Ctrl-C, SIGTERM or an error: stop at once, queued videos are not started, workers end now
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            raise
        pool.shutdown(wait=True)
