"""The benchmark table (stdout, Markdown), machine info and plots."""
from __future__ import annotations

import io
import os
import platform

from edge_runtime.manifest import Status, atomic_write_bytes
from edge_runtime.versions import package_versions

COLUMNS = [  # (key, header, format)
    ("name", "artifact", "{}"), ("precision", "prec", "{}"), ("runtime_short", "backend", "{}"),
    ("threads", "thr", "{}"), ("status", "status", "{}"), ("size_kb", "size KB", "{:.0f}"),
    ("macs_m", "MMACs", "{:.1f}"),
    ("load_ms", "load ms", "{:.0f}"), ("accuracy_pct", "acc %", "{:.2f}"), ("macro_f1", "F1", "{:.3f}"),
    ("drop_pp", "drop pp", "{:+.2f}"), ("agreement_pct", "agree %", "{:.1f}"), ("p50_ms", "p50 ms", "{:.3f}"),
    ("p90_ms", "p90 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}"), ("faces_per_s", "faces/s@32", "{:.0f}"),
    ("peak_rss_mb", "RSS MB", "{:.0f}"), ("latency_x_peer", "lat×peer", "{:.2f}"), ("size_x_peer", "size×peer", "{:.2f}"),
]


def flat(row: dict) -> dict:
    """A row's display fields (missing ones stay empty: a failed row still shows its status)."""
    out = dict(row)
    out["name"] = row.get("artifact")
    lat = row.get("latency") or {}
    out.update({k: lat.get(k) for k in ("p50_ms", "p90_ms", "p99_ms")})
    out["macs_m"] = row["macs"] / 1e6 if row.get("macs") is not None else None
    out["faces_per_s"] = (row.get("throughput") or {}).get("faces_per_s")
    out["accuracy_pct"] = 100 * row["accuracy"] if row.get("accuracy") is not None else None
    out["agreement_pct"] = 100 * row["agreement"] if row.get("agreement") is not None else None
    rt = row.get("runtime") or ""
    out["runtime_short"] = rt.split(" (")[-1].rstrip(")").replace("ExecutionProvider", "") if "(" in rt \
        else rt.split(" ")[0]
    if row.get("status") == Status.FAILED:
        out["status"] = "FAILED"
    return out


def _cells(row: dict) -> list[str]:
    f = flat(row)
    cells = []
    for key, _, fmt in COLUMNS:
        v = f.get(key)
        cells.append("" if v is None else fmt.format(v))
    return cells


def text_table(rows: list[dict]) -> str:
    headers = [h for _, h, _ in COLUMNS]
    body = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    for r in rows:
        if r.get("reason"):
            lines.append(f"  {r['artifact']} ({r.get('threads')} thr): {r['reason']}")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f} %"


def pipeline_table(rows: list[dict]) -> str:
    """One row per scene x detector x backend x threads: recall, label accuracy beside the exact-crop
    ceiling, tracking errors, FPS and the per-stage split."""
    if not rows:
        return ""
    lines = ["| scene | detector | backend | threads | faces found | label right (of found) | exact-crop ceiling "
             "| gap ± SE | gap ± SE per face | per distinct face: right / ceiling | smoothed | false + | ID switches "
             "| merged tracks | FPS | detect ms | preprocess ms | classify ms | postprocess ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r.get('scene', '')} | {r.get('detector', '')} | {r.get('artifact')} | {r.get('threads', '')} |"
        if r.get("status") == Status.FAILED:
            lines.append(f"{head} failed: {r.get('reason')} |||||||||||||||")
            continue
        s = r.get("stages_ms", {})
        ms = (lambda k: f"{s[k]:.2f}" if k in s else "")  # noqa: E731
        found = f"{_pct(r.get('recall'))} ({r.get('found')}/{r.get('faces')})" if "recall" in r else ""
        gap = f"{r['gap_pp']:.2f} ± {r['gap_se_pp']:.2f} pp" if r.get("gap_se_pp") is not None else ""
        cgap = (f"± {r['gap_cluster_se_pp']:.2f} pp ({r['distinct_faces']} faces)"
                if r.get("gap_cluster_se_pp") is not None else "")
        per_face = (f"{_pct(r.get('label_acc_per_face'))} / {_pct(r.get('ceiling_acc_per_face'))}"
                    if r.get("label_acc_per_face") is not None else "")
        lines.append(f"{head} {found} | {_pct(r.get('label_acc'))} | {_pct(r.get('ceiling_acc'))} | {gap} | "
                     f"{cgap} | {per_face} | "
                     f"{_pct(r.get('smoothed_acc'))} | {r.get('false_pos', '')} | {r.get('id_switches', '')} | "
                     f"{r.get('merged_tracks', '')} | "
                     f"{r['fps']:.1f} | {ms('detect')} | {ms('preprocess')} | {ms('classify')} | {ms('postprocess')} |")
    return "\n".join(lines)


def machine_info() -> dict:
    """The CPU as this process's runtimes see it: under --mask-cpu, without the features hidden."""
    from edge_runtime.cpu import SPEED_FLAGS, cpu_class, cpu_flags, cpu_name, int8_dot_flags

    from . import cpu_mask
    versions = {k: v for k, v in package_versions().items() if k not in ("python", "platform")}
    mask = cpu_mask.active()
    hidden = cpu_mask.hidden_flags(mask) if mask else []
    dots = [f for f in int8_dot_flags() if f not in hidden]
    cls = cpu_class() if not mask else (f"{platform.machine()}, no int8 dot products (CPUID masked to {mask}; "
                                        f"the host has {', '.join(int8_dot_flags()) or 'none'})")
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(),
            "cpu_flags": [f for f in SPEED_FLAGS if f in cpu_flags() and f not in hidden], "int8_dot_products": dots,
            "cpu_class": cls, "cpu_mask": mask, "hidden_flags": hidden, "system": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def machine_line(mi: dict) -> str:
    """The header every table carries: which CPU class its timings came from."""
    masked = (f" as this process sees it; CPUID masked to {mi['cpu_mask']} (hidden: {' '.join(mi['hidden_flags'])}): "
              "the code an AVX2-only CPU runs, on the cores of a host that has them" if mi.get("cpu_mask") else "")
    return (f"Machine: {mi['cpu']} ({mi['cores']} cores, {mi['machine']}); "
            f"{'int8 dot products: ' + ', '.join(mi['int8_dot_products']) if mi['int8_dot_products'] else 'no int8 dot products'}"
            f"{masked}; flags: {' '.join(mi['cpu_flags']) or 'none read'}. MMACs: multiply-accumulates per face, "
            "counted from each file's graph (the cost that does not depend on the CPU).")


def plots(rows: list[dict], out_dir) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ok = [flat(r) for r in rows if r.get("status") != Status.FAILED and r.get("latency")]
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(os.path.join(out_dir, name), buf.getvalue())
        written.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = ["o", "^", "s", "D"]
    thread_counts = sorted({r["threads"] for r in ok})
    for r in ok:
        peer = r.get("kind") == "peer"
        k = thread_counts.index(r["threads"]) % len(markers)
        ax.scatter(r["p50_ms"], r["accuracy_pct"], marker=markers[k], s=70,
                   color="tab:red" if peer else "tab:blue", alpha=0.8)
        if r["threads"] == thread_counts[0]:  # one label per artifact keeps the plot readable
            ax.annotate(r["name"], (r["p50_ms"], r["accuracy_pct"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points", rotation=20)
    for k, t in enumerate(thread_counts):
        ax.scatter([], [], marker=markers[k % len(markers)], color="gray", label=f"{t} thread(s)")
    ax.legend(fontsize=7, loc="best")
    ax.set_xscale("log")
    ax.margins(0.15)  # room for the labels of the points at the corners
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.25, not 2.5×10⁻¹ (overlapping on a narrow range)
    ax.xaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    if hi < 10 * lo:  # within one decade the major ticks are off-screen: label the minor ones
        ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel("p50 latency per face, batch 1 (ms, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency (red = peer)")
    ax.grid(alpha=0.3)
    save(fig, "accuracy_vs_latency.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['name']}\n{r['threads']}t" for r in ok]
    bars = ax.bar(labels, [r["p50_ms"] for r in ok],
                  yerr=[[r["p50_ms"] - r["latency"]["round_p50_min_ms"] for r in ok],
                        [r["latency"]["round_p50_max_ms"] - r["p50_ms"] for r in ok]],
                  color=["tab:red" if r.get("kind") == "peer" else "tab:blue" for r in ok])
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_ylabel("p50 ms / face (bars: spread of round medians)")
    ax.set_title("Per-face latency by artifact and thread count")
    ax.tick_params(axis="x", labelsize=7)
    save(fig, "latency.png")

    sizes = {r["name"]: (r["size_kb"], r.get("kind") == "peer") for r in ok if r.get("size_kb")}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(list(sizes), [v[0] for v in sizes.values()],
                  color=["tab:red" if v[1] else "tab:blue" for v in sizes.values()])
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_ylabel("KB")
    ax.set_title("Artifact size")
    ax.tick_params(axis="x", labelsize=7)
    save(fig, "size.png")
    return written
