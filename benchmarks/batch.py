"""The video-archive benchmark: frames per second of ``python -m edge_runtime.batch`` with 1 and 2 local
workers and a 2-worker Dask LocalCluster, beside the ``fer`` package's own per-frame path
(``benchmarks/fer_pipeline.py``: its Haar detector and mini-Xception on TensorFlow, 1 thread), on the
same videos in the same run. Run it on an otherwise idle machine.

    python -m benchmarks.batch --videos 8 --seconds 20 --work .cache/batch-bench --md results.md
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from edge_runtime.cpu import cpu_class, cpu_name
from edge_runtime.outputs import OutputError, OwnedDir, add_overwrite_flag, claim_file, record_file
from edge_runtime.cli import command, results

WRITER = "python -m benchmarks.batch"
FPS = 15.0


def make_archive(folder: Path, videos: int, seconds: float, data: str) -> list[Path]:
    """``videos`` 640x480 clips of 2-4 moving faces (FER test faces), ``seconds`` long at 15 fps."""
    from edge_runtime.synthetic import moving_scene, pick_faces, write_scene
    paths = []
    frames = int(seconds * FPS)
    for i in range(videos):
        p = folder / f"clip{i:02d}.avi"
        if not p.exists():
            faces = pick_faces(data, max(8, frames // 20), seed=100 + i)
            write_scene(p, moving_scene(faces, frames, (640, 480), max_faces=4, seed=100 + i), fps=FPS)
        paths.append(p)
    return paths


def run_batch(archive: Path, out: Path, engine: list[str]) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(archive), "--out", str(out), "--quiet",
                        *engine], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"edge_runtime.batch {' '.join(engine)} failed: {r.stderr[-1500:]}")
    import pandas as pd
    index = pd.read_parquet(out / "index.parquet")
    return {"frames": int(index["frames"].sum()), "seconds": secs, "processing_s": float(index["processing_s"].sum())}


def run_fer(videos: list[Path]) -> dict:
    frames, secs = 0, 0.0
    for v in videos:
        r = subprocess.run([sys.executable, "-m", "benchmarks.fer_pipeline", str(v)], capture_output=True, text=True)
        res = next(results(r.stdout), None)
        if res is None:
            raise RuntimeError(f"fer on {v}: {r.stderr[-1500:]}")
        frames, secs = frames + res["frames"], secs + res["seconds"]
    return {"frames": frames, "seconds": secs}


@command("python -m benchmarks.batch", bad_input=(OutputError,))
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each video (at 15 fps)")
    p.add_argument("--data", default="../shared/data/fer2013", help="FER2013 root (test faces)")
    p.add_argument("--work", default=".cache/batch-bench", help="folder for the videos and the outputs")
    p.add_argument("--md", help="also write the table here")
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    work = OwnedDir.claim(Path(a.work), WRITER, flag="--work").path
    archive = work / "videos"
    archive.mkdir(exist_ok=True)
    work_dir = OwnedDir(work, WRITER)
    work_dir.record("videos")
    videos = make_archive(archive, a.videos, a.seconds, a.data)
    rows = []
    for name, engine in (("edge_runtime.batch, 1 worker", ["--workers", "1"]),
                         ("edge_runtime.batch, 2 workers", ["--workers", "2"]),
                         ("edge_runtime.batch, Dask LocalCluster, 2 workers", ["--dask", "local", "--workers", "2"])):
        out = work / f"out-{len(rows)}"
        work_dir.record(out.name)
        if out.exists():
            work_dir.remove(out.name)
            work_dir.record(out.name)
        res = run_batch(archive, out, engine)
        rows.append((name, res["frames"], res["seconds"]))
        print(f"{name}: {res['frames']} frames in {res['seconds']:.1f} s = {res['frames'] / res['seconds']:.1f} fps",
              flush=True)
    fer = run_fer(videos)
    rows.append(("fer package (detect_emotions per frame), 1 process", fer["frames"], fer["seconds"]))
    print(f"fer: {fer['frames']} frames in {fer['seconds']:.1f} s = {fer['frames'] / fer['seconds']:.1f} fps")
    fer_fps = fer["frames"] / fer["seconds"]
    one = rows[0][1] / rows[0][2]
    lines = [f"Machine: {cpu_name()} ({cpu_class()}), {a.videos} videos of {a.seconds:g} s (640x480, 2-4 moving "
             f"faces, {FPS:g} fps); one inference thread per worker process; wall-clock seconds including "
             "start-up.", "",
             "| run | frames | seconds | frames/s | × fer | × 1 worker |", "|---|---|---|---|---|---|"]
    for name, frames, secs in rows:
        fps = frames / secs
        lines.append(f"| {name} | {frames} | {secs:.1f} | {fps:.1f} | {fps / fer_fps:.2f} | {fps / one:.2f} |")
    table = "\n".join(lines)
    print(table)
    if a.md:
        claim_file(a.md, writer=WRITER, flag="--md", overwrite=a.overwrite)
        Path(a.md).write_text(table + "\n")
        record_file(a.md, WRITER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
