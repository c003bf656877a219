"""Same answers on aarch64 as on x86: the edge runtime under qemu-user emulation vs. natively.

Run by ``devices/emulate-aarch64.sh check`` (``make aarch64-check``) after it has built the arm64
Bookworm rootfs. Steps, each printed as it runs:

1. pick an exported artifacts folder (``--artifacts``, else the model the package ships, which a
   fresh checkout has; ``--artifacts newest`` takes the newest ``artifacts/*/manifest.json`` with a
   usable ``tflite-int8`` and an ONNX artifact);
2. write the synthetic test video (``edge_runtime.synthetic.make_video``: FER test faces
   composited at known places) and a batch of test-split faces into ``.cache/aarch64-check/``;
3. backend probe: the same faces through ``edge_runtime.preprocess`` + ``edge_runtime.backends``
   on x86 (the project's venv) and on aarch64 (the rootfs venv); probabilities compared and the
   per-face latency timed;
4. daemon: ``python -m edge_runtime --backend tflite`` then ``--backend onnx``, on both sides, first on
   the video's frames decoded once on x86 and saved as PNG (the same pixels for both arches: this
   run gates -- same boxes, same labels, probabilities within tolerance, frame by frame), then on the
   video file itself (informational: each arch's OpenCV decodes the MJPG frames, and the decoded
   pixels differ by a grey level or two between x86 and aarch64, so detector boxes can move by a few
   pixels; reported as min IoU, label agreement and max probability difference);
5. a report (``.cache/aarch64-check/report.json``) with the timings -- labelled EMULATED -- and the
   aarch64 package versions; exit 1 if anything differs beyond tolerance.

Tolerances (absolute, on probabilities in [0, 1]):
- fp32 artifacts: 1e-4 and identical labels -- float kernels differ only in summation order and FMA use;
- int8 artifacts: the larger of two output quantization steps (2/256 = 0.0078) and the int8 model's
  own error against its fp32 twin on x86 on the probe faces (what the export gate already accepted); the
  twin is the same runtime's fp32 artifact, else another runtime's (a package may ship no tflite-fp32).
  Optimized int8 kernels are not bit-exact across Arm and x86: their requantization rounds differently
  (from the first convolution on), and depthwise and recurrent layers carry a one-step difference on.
  So an int8 TFLite artifact is also run with TFLite's reference kernels, which are the same integer
  arithmetic on every CPU. The reference outputs must be identical on both arches, and aarch64's
  optimized output must stay within the tolerance of them, or within x86's own distance from them
  (x86's kernels can stray further than a well-quantized model's int8 error: cbilstm-lite L6, 0.047
  against 0.040). Then Arm's answer is no less right than x86's, whose answer the export stored,
  whatever their difference (reported). Without a reference run the two optimized
  outputs are compared directly. A label may flip only on a near tie (top-2 margin within twice the
  tolerance), and every flip is counted.
Boxes must agree within 1 px and labels be identical on the PNG frames (the detector sees bit-identical pixels).

``python devices/aarch64_check.py probe ...`` is the step-3 worker (``aarch64_probe.py``); it imports only
numpy, OpenCV and ``edge_runtime`` so it runs inside the rootfs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:  # the rootfs venv has the project installed (pip install .); a dev checkout may not
    import edge_runtime  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))
from edge_runtime.cli import command  # noqa: E402
from edge_runtime.manifest import DEVICE_ORDER, Manifest, ManifestError, read_manifest  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, as a script and as python -m devices...
from aarch64_compare import (compare_events, face_events, latency_stats, read_events, tolerance,  # noqa: E402
                             top2_margin)
from aarch64_probe import probe  # noqa: E402

WORK = REPO / ".cache" / "aarch64-check"
VENV_IN = "/opt/fer-edge"


def say(msg: str) -> None:
    print(f"[aarch64-check] {msg}", flush=True)


# ----------------------------------------------------------------------------- helpers
# the packaged model the runtime chooses on each emulated core (edge_runtime/packaged.py: by int8 dot
# products, which the Pi 5's Cortex-A76 has and the Pi 4's A72 and the Pi 3's A53 lack)
MODEL_FOR_CPU = {"cortex-a76": "cbilstm", "cortex-a72": "cbilstm-lite", "cortex-a53": "cbilstm-lite"}


def find_artifacts(explicit: str | None) -> Path:
    from edge_runtime.packaged import packaged_dir
    if explicit == "newest":
        cands = sorted((p.parent for p in (REPO / "artifacts").glob("*/manifest.json")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
    else:
        cpu = os.environ.get("QEMU_CPU", "cortex-a76")
        if not explicit and cpu not in MODEL_FOR_CPU:
            raise SystemExit(f"[aarch64-check] QEMU_CPU={cpu}: which packaged model would run there? "
                             f"use one of {', '.join(MODEL_FOR_CPU)}, or pass --artifacts DIR")
        cands = [Path(explicit) if explicit else packaged_dir(MODEL_FOR_CPU[cpu])]
        if not explicit:
            say(f"QEMU_CPU={cpu}: the packaged {MODEL_FOR_CPU[cpu]}, the model the runtime chooses there")
    for d in cands:
        try:
            arts = set(read_manifest(d).usable())
        except ManifestError:
            continue
        if "tflite-int8" in arts and arts & {"onnx-fp32", "onnx-int8"}:
            return d.resolve()
        say(f"skipping {d}: usable artifacts {sorted(arts)} lack tflite-int8 or ONNX")
    raise SystemExit("[aarch64-check] no artifacts folder with tflite-int8 + ONNX: run `python -m export "
                     "--int8 ...` first or pass --artifacts DIR")


def snapshot(src: Path, dst: Path) -> Path:
    """Copy manifest.json and the files it names into the work folder (inside the repo, so the rootfs
    sees it; and a concurrent re-export cannot swap the model between the two runs)."""
    import shutil
    if src.resolve() == dst.resolve():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for e in read_manifest(src).artifacts.values():
        if e.file and (src / e.file).is_file():
            shutil.copy2(src / e.file, dst / e.file)
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    say(f"artifacts: snapshot of {src} in {dst}")
    return dst


def inside_repo(path: Path) -> bool:
    try:
        path.resolve().relative_to(REPO)
        return True
    except ValueError:
        return False


def run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float]:
    say(f"$ {shlex.join(cmd)}")
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    dt = time.perf_counter() - t
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        say(f"exit {rc} after {dt:.1f} s; last lines of {log}:\n  " + "\n  ".join(tail))
    return rc, dt


def decode_to_png(video: Path, out: Path) -> int:
    import shutil
    import cv2
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cap, n = cv2.VideoCapture(str(video)), 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        cv2.imwrite(str(out / f"{n:05d}.png"), img)
        n += 1
    cap.release()
    return n


def daemon_artifact(log: Path) -> str | None:
    """The artifact the daemon says it loaded ("model NAME (precision, sha256 ...) on RUNTIME")."""
    import re
    m = re.search(r"\bmodel (\S+) \((\w+), sha256", log.read_text(errors="replace"))
    return m.group(1) if m else None


def x86_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("numpy", "opencv-python-headless", "ai-edge-litert", "onnxruntime", "paho-mqtt"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- main check
@dataclass
class Check:
    """One check run: where it works, how each side runs Python, and the report it fills."""
    args: argparse.Namespace
    work: Path
    emu: list[str]
    art: Path
    manifest: Manifest
    report: dict
    arm_py: str = f"{VENV_IN}/bin/python"
    x86_py: str = sys.executable

    def sides(self):
        """(side, command prefix, python) for x86_64 (natively) and aarch64 (under the emulator)."""
        return (("x86_64", [], self.x86_py), ("aarch64", self.emu, self.arm_py))


def prepare(args) -> tuple[Check, dict, Path, Path]:
    """Step 1-2: the artifacts snapshot, the video and its frames, the probe faces; -> (check,
    the video's truth, the video, the frames folder)."""
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not inside_repo(work):
        raise SystemExit(f"--work must be inside {REPO} (the rootfs sees the repo at the same path)")
    art = work / "artifacts"
    if not (args.reuse and (art / "manifest.json").exists()):  # --reuse: the model the events came from
        art = snapshot(find_artifacts(args.artifacts), art)
    manifest = read_manifest(art)
    say(f"artifacts: {art} ({manifest.model}, usable: {sorted(manifest.usable())})")
    report = {"emulated": True, "note": "aarch64 numbers are EMULATED (qemu-user on x86_64), not a Pi figure",
              "qemu_cpu": os.environ.get("QEMU_CPU", "cortex-a76"),
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
              "artifacts": str(art.relative_to(REPO)), "model": manifest.model,
              "video": {"frames": args.frames, "faces": args.faces, "size": [640, 480]},
              "probe": {}, "daemon": {}}
    c = Check(args, work, [str(Path(args.emulator).resolve()), "run"], art, manifest, report)

    import cv2
    from edge_runtime import synthetic
    video = work / "video.avi"
    truth = synthetic.make_video(video, args.data, n_faces=args.faces, frames=args.frames, seed=args.seed)
    say(f"video: {video} ({args.frames} frames 640x480, {args.faces} faces: "
        f"{[f['label'] for f in truth['faces']]})")
    frames_dir = work / "frames"
    n = decode_to_png(video, frames_dir)
    say(f"frames: {frames_dir} ({n} PNGs of the video decoded once on x86: the same pixels for both arches)")
    faces = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
             for p, _ in synthetic.pick_faces(args.data, args.probe_faces, seed=args.seed + 1)]
    np.save(work / "faces.npy", np.stack(faces))
    return c, truth, video, frames_dir


def run_probes(c: Check, names: list[str], video: Path) -> dict:
    """Step 3 on both sides (or reused with --reuse); -> {side: the probe's JSON}."""
    probe_out = {}
    for side, pre, py in c.sides():
        out = c.work / f"probe-{side}.json"
        if c.args.reuse and out.exists():
            probe_out[side] = json.loads(out.read_text())
            say(f"probe {side}: reusing {out}")
            continue
        rc, dt = run(pre + [py, str(REPO / "devices" / "aarch64_check.py"), "probe", "--artifacts", str(c.art),
                            "--faces", str(c.work / "faces.npy"), "--names", ",".join(names),
                            "--repeat", str(c.args.repeat), "--out", str(out), "--video", str(video),
                            "--frames", "3"], c.work / f"probe-{side}.log")
        if rc != 0:
            raise SystemExit(f"[aarch64-check] probe failed on {side}")
        probe_out[side] = json.loads(out.read_text())
        say(f"probe {side}: machine={probe_out[side]['machine']} python={probe_out[side]['python']} "
            f"in {dt:.1f} s")
    return probe_out


def compare_decoding(c: Check, probe_out: dict) -> None:
    """Informational: how each arch's OpenCV decodes the same MJPG frames."""
    vx, va = probe_out["x86_64"]["video"], probe_out["aarch64"]["video"]
    f0x, f0a = (np.load(c.work / f"probe-{s}.json.frame0.npy").astype(int) for s in ("x86_64", "aarch64"))
    dec = {"frames_bit_identical": vx["frame_sha"] == va["frame_sha"],
           "frame0_pixels_differing": round(float(np.mean(f0x != f0a)), 4),
           "frame0_max_abs_diff": int(np.max(np.abs(f0x - f0a))),
           "detector_boxes_x86_64": vx["boxes"][0], "detector_boxes_aarch64": va["boxes"][0]}
    c.report["probe"]["video_decoding"] = dec
    say(f"video decoding (MJPG via each arch's OpenCV): bit-identical {dec['frames_bit_identical']}; frame 0: "
        f"{100 * dec['frame0_pixels_differing']:.1f} % of pixels differ, max |d| {dec['frame0_max_abs_diff']} "
        f"grey levels; detector boxes x86 {dec['detector_boxes_x86_64']} / aarch64 {dec['detector_boxes_aarch64']}")


def probe_tolerances(c: Check, names: list[str], x86: dict) -> dict[str, float]:
    """Per artifact; int8: the cross-arch difference may reach the quantization error itself."""
    tols = {n: tolerance(c.manifest, n) for n in names}
    for n in names:
        # the same model in fp32: the same runtime's if exported, else another's (every fp32 artifact
        # matches the Keras reference within 1e-4: export checks it), so tflite-int8 has a twin too
        twins = [f"{n.split('-')[0]}-fp32", *(m for m in names if c.manifest.artifacts[m].precision == "fp32")]
        ref = next((m for m in twins if "probs" in x86.get(m, {})), "")
        if c.manifest.artifacts[n].precision == "int8" and "probs" in x86.get(n, {}) and ref:
            qerr = float(np.max(np.abs(np.asarray(x86[n]["probs"]) - np.asarray(x86[ref]["probs"]))))
            c.report["probe"].setdefault("int8_error_vs_fp32_x86_64", {})[n] = {"vs": ref,
                                                                                "max_abs_diff": round(qerr, 4)}
            tols[n] = max(tols[n], qerr)
    return tols


def compare_probes(c: Check, names: list[str], probe_out: dict, tols: dict[str, float]) -> bool:
    """Same faces, same artifact, both arches: probabilities within tolerance, labels equal but near ties."""
    all_ok = True
    for n in names:
        a, b = probe_out["x86_64"]["artifacts"][n], probe_out["aarch64"]["artifacts"][n]
        if "error" in a or "error" in b:
            say(f"probe {n}: x86 {a.get('error', 'ok')} / aarch64 {b.get('error', 'ok')}")
            c.report["probe"][n] = {"x86_64": a.get("error"), "aarch64": b.get("error")}
            all_ok = False
            continue
        pa, pb = np.asarray(a["probs"]), np.asarray(b["probs"])
        tol = tols[n]
        d = float(np.max(np.abs(pa - pb)))
        same_top = int(np.sum(pa.argmax(1) == pb.argmax(1)))
        flips = np.flatnonzero(pa.argmax(1) != pb.argmax(1))
        unexplained = [int(i) for i in flips if top2_margin(pa[i]) > 2 * tol]
        within = d <= tol
        ref = None
        if a.get("reference_kernel_probs") and b.get("reference_kernel_probs"):
            ra, rb = np.asarray(a["reference_kernel_probs"]), np.asarray(b["reference_kernel_probs"])
            ref = {"identical_across_arches": bool(np.array_equal(ra, rb)),
                   "x86_64_optimized_vs_reference": float(np.max(np.abs(pa - ra))),
                   "aarch64_optimized_vs_reference": float(np.max(np.abs(pb - rb)))}
            # Arm's answer may be as far from the exact integer one as the model's own int8 error, or as
            # x86's own kernels are (x86's answer is what the export stored): never less right than x86's
            ref["aarch64_allowed"] = max(tol, ref["x86_64_optimized_vs_reference"])
            within = ref["identical_across_arches"] and ref["aarch64_optimized_vs_reference"] <= ref["aarch64_allowed"]
        row = {"faces": len(pa), "max_abs_diff": d, "tolerance": tol, "same_label": f"{same_top}/{len(pa)}",
               "label_flips_not_near_tie": unexplained, "reference_kernels": ref,
               "ok": within and not unexplained and (same_top == len(pa) or
                                                     c.manifest.artifacts[n].precision == "int8"),
               "ms_per_face_x86_64": round(a["ms_per_face_median"], 3),
               "ms_per_face_aarch64_EMULATED": round(b["ms_per_face_median"], 3),
               "runtime_x86_64": a["runtime"], "runtime_aarch64": b["runtime"]}
        c.report["probe"][n] = row
        all_ok &= row["ok"]
        if ref:
            say(f"probe {n}: TFLite reference kernels {'identical' if ref['identical_across_arches'] else 'DIFFER'} "
                f"on both arches; optimized vs reference: x86 {ref['x86_64_optimized_vs_reference']:.4f}, aarch64 "
                f"{ref['aarch64_optimized_vs_reference']:.4f} (allowed {ref['aarch64_allowed']:.4f}: the int8 error "
                f"{tol:.4f} or x86's own); the arches' own difference is reported")
        say(f"probe {n}: {len(pa)} faces, max |dp| = {d:.2e} (tol {tol:.1e}), same label {same_top}/{len(pa)}, "
            f"{b['ms_per_face_median']:.2f} ms/face EMULATED vs {a['ms_per_face_median']:.2f} ms x86 "
            f"-> {'OK' if row['ok'] else 'DIFFERENT'}")
    return all_ok


def run_daemons(c: Check, key: str, backend: str, src: Path) -> dict:
    """``python -m edge_runtime`` on both sides (or reused); -> {side: (events, wall seconds)}."""
    events = {}
    for side, pre, py in c.sides():
        ev = c.work / f"events-{key}-{side}.jsonl"
        wall = ev.with_suffix(".wall")
        if c.args.reuse and ev.exists() and wall.exists():
            events[side] = (read_events(ev), float(wall.read_text()))
            say(f"daemon {key} {side}: reusing {ev}")
            continue
        ev.unlink(missing_ok=True)
        cmd = pre + [py, "-m", "edge_runtime", "--artifacts", str(c.art), "--backend", backend,
                     "--threads", "1", "--source", str(src), "--events", str(ev),
                     "--max-frames", str(c.args.frames)] + shlex.split(c.args.daemon_args)
        rc, dt = run(cmd, c.work / f"daemon-{key}-{side}.log")
        if rc != 0 or not ev.exists():
            raise SystemExit(f"[aarch64-check] daemon failed on {side} with {backend} on {key} (exit {rc})")
        wall.write_text(f"{dt:.3f}")
        events[side] = (read_events(ev), dt)
        say(f"daemon {key} {side}: {len(events[side][0])} events in {dt:.1f} s")
    return events


def compare_daemons(c: Check, truth: dict, sources: list[tuple[str, Path]], tols: dict[str, float]) -> bool:
    """Step 4: each backend on each source, both arches; only the PNG frames (same pixels) gate."""
    all_ok = True
    for (src_name, src), backend in ((s, b) for s in sources for b in c.args.backends.split(",")):
        key = f"{backend}-{src_name}"
        events = run_daemons(c, key, backend, src)
        chosen = {side: daemon_artifact(c.work / f"daemon-{key}-{side}.log") for side in events}
        if chosen["x86_64"] != chosen["aarch64"]:
            say(f"daemon {backend}: the two sides loaded different artifacts: {chosen}")
            all_ok = False
        name = chosen["aarch64"] or chosen["x86_64"] or ("tflite-int8" if backend == "tflite" else "onnx-fp32")
        tol = tols.get(name, tolerance(c.manifest, name))
        cmp = compare_events(events["x86_64"][0], events["aarch64"][0], tol,
                             name in c.manifest.artifacts and c.manifest.artifacts[name].precision == "int8")
        labels_seen = sorted({e.get("label") for evs in face_events(events["aarch64"][0]).values() for e in evs})
        cmp.update({"artifact": name, "labels_seen": labels_seen,
                    "truth_labels": [f["label"] for f in truth["faces"]],
                    "x86_64": latency_stats(*events["x86_64"]),
                    "aarch64_EMULATED": latency_stats(*events["aarch64"])})
        cmp["source"] = src_name
        cmp["gating"] = src_name == "frames"
        c.report["daemon"][key] = cmp
        if cmp["gating"]:
            all_ok &= cmp["ok"]
        say(f"daemon {key} ({name}): {cmp['frames_compared']} frames / {cmp['faces_compared']} faces compared; "
            f"boxes equal {cmp['boxes_equal']} (min IoU {cmp['min_iou']:.3f}), labels equal {cmp['labels_equal']}, "
            f"max |dp| raw {cmp['max_abs_diff_raw']:.2e} smoothed {cmp['max_abs_diff_smoothed']:.2e} "
            f"(tol {tol:.1e}) -> {'OK' if cmp['ok'] else 'DIFFERENT'}"
            f"{'' if cmp['gating'] else ' (informational: each arch decodes the JPEG frames itself)'}")
        say(f"  latency x86_64: {cmp['x86_64']}")
        say(f"  latency aarch64 (EMULATED): {cmp['aarch64_EMULATED']}")
    return all_ok


def add_versions(c: Check) -> None:
    versions = Path(c.args.rootfs) / VENV_IN.lstrip("/") / "aarch64-versions.txt"
    if versions.exists():
        c.report["aarch64_versions"] = [ln for ln in versions.read_text().splitlines()
                                        if ln and not ln.startswith("#")]
    c.report["x86_64_versions"] = x86_versions()
    arm = dict(ln.split("==", 1) for ln in c.report.get("aarch64_versions", []) if "==" in ln)
    differ = {k: (v, arm.get(k)) for k, v in c.report["x86_64_versions"].items() if arm.get(k) != v}
    c.report["edge_versions_differ"] = differ
    if differ:
        say(f"note: edge package versions differ between the two sides (x86, aarch64): {differ}")


def check(args) -> int:
    """Steps 1-5 (see the module's docstring); 0 when both arches give the same answers."""
    from edge_runtime.labels import LABELS
    t_start = time.perf_counter()
    c, truth, video, frames_dir = prepare(args)
    names = [n for n in DEVICE_ORDER if n in c.manifest.usable()]
    probe_out = run_probes(c, names, video)
    ok = probe_out["x86_64"]["batch_sha"] == probe_out["aarch64"]["batch_sha"]
    say(f"preprocessed batch identical on both: {ok} ({probe_out['x86_64']['batch_sha']})")
    c.report["probe"]["preprocess_identical"] = ok
    compare_decoding(c, probe_out)
    tols = probe_tolerances(c, names, probe_out["x86_64"]["artifacts"])
    all_ok = ok & compare_probes(c, names, probe_out, tols)
    sources = [("frames", frames_dir)] + ([("video", video)] if not args.no_video else [])
    all_ok &= compare_daemons(c, truth, sources, tols)
    add_versions(c)
    c.report["check_seconds"] = round(time.perf_counter() - t_start, 1)
    c.report["ok"] = bool(all_ok)
    c.report["labels"] = list(LABELS)
    (c.work / "report.json").write_text(json.dumps(c.report, indent=1))
    say(f"report: {c.work / 'report.json'}; check took {c.report['check_seconds']} s; "
        f"{'SAME ANSWERS on aarch64 and x86_64' if all_ok else 'DIFFERENCES FOUND'}")
    return 0 if all_ok else 1


@command("python -m devices.aarch64_check", bad_input=(ManifestError, ValueError))
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m devices.aarch64_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    pr = sub.add_parser("probe", help="worker: predict saved faces with each artifact (runs on either arch)")
    pr.add_argument("--artifacts", required=True)
    pr.add_argument("--faces", required=True)
    pr.add_argument("--names", required=True)
    pr.add_argument("--repeat", type=int, default=20)
    pr.add_argument("--out", required=True)
    pr.add_argument("--video", help="also hash the decoded frames and run the default detector on them")
    pr.add_argument("--frames", type=int, default=3)
    p.add_argument("--emulator", default=str(REPO / "devices" / "emulate-aarch64.sh"))
    p.add_argument("--rootfs", default=os.environ.get("ROOTFS", str(REPO / ".cache" / "aarch64-rootfs")))
    p.add_argument("--artifacts", help="exported artifacts folder (default: the packaged model the runtime "
                                       "chooses on $QEMU_CPU; 'newest': the newest artifacts/*/)")
    p.add_argument("--data", default=os.environ.get("FER_DATA", str(REPO.parent / "shared" / "data" / "fer2013")))
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--faces", type=int, default=3)
    p.add_argument("--probe-faces", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5, help="timed single-face predictions in the probe")
    p.add_argument("--reuse", action="store_true", help="reuse probe/event files of an earlier run (re-compare only)")
    p.add_argument("--no-video", action="store_true", help="skip the informational run on the video file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", default="tflite,onnx")
    p.add_argument("--daemon-args", default="", help="extra flags for python -m edge_runtime (both sides)")
    p.add_argument("--work", default=str(WORK))
    args = p.parse_args(argv)
    return probe(args) if args.cmd == "probe" else check(args)


if __name__ == "__main__":
    sys.exit(main())
