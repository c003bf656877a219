"""The batch analyser's tables: one row per face per frame and one per person, typed alike for every
video (Parquet via pyarrow, CSV beside it on request), each written whole."""
from __future__ import annotations

from pathlib import Path

from .labels import LABELS
from .manifest import atomic_write_bytes


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


def schema(columns: list[str]):
    """Every table's column types, so tables of different videos (a video without faces too) concatenate."""
    import pyarrow as pa
    text = {"label", "raw_label", "dominant", "video", "path", "status", "error", "model_sha256", "model", "detector",
            "backend", "worker", "analysed_at"}
    ints = {"frame", "track", "x", "y", "w", "h", "first_frame", "last_frame", "frames_seen", "frames_spanned",
            "frames", "frames_undecodable", "every", "faces", "tracks"}
    return pa.schema([(c, pa.string() if c in text else pa.int64() if c in ints else pa.float64()) for c in columns])


def write_table(rows: list[dict], columns: list[str], base: Path, formats) -> list[str]:
    """rows -> base.parquet (and base.csv): the files written."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema(columns))
    written = []
    for fmt, write in (("parquet", pq.write_table), ("csv", pacsv.write_csv)):
        if fmt in formats:  # whole or not at all: a kill mid-write leaves the previous file
            buf = pa.BufferOutputStream()
            write(table, buf)
            atomic_write_bytes(base.with_suffix(f".{fmt}"), buf.getvalue().to_pybytes())
            written.append(base.with_suffix(f".{fmt}").name)
    return written
