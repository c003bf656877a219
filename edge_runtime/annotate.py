"""Pictures of what the daemon sees: frames with each face's box, track id, label and a small bar
per emotion; annotated videos (``--annotate out.webm``) and a PNG contact sheet of such a video.

Containers: ``.webm`` (VP8) plays in every browser; ``.mp4`` (MPEG-4 Part 2) and ``.avi`` (MJPEG)
play in desktop players (VLC, mpv) but not in browsers: OpenCV's wheels carry no H.264 encoder.

    python -m edge_runtime.annotate sheet demo-annotated.avi demo-sheet.png --frames 8
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from .config import ConfigError
from .detectors import to_bgr
from .labels import LABELS
from .manifest import atomic_write_bytes
from .outputs import OutputError, add_overwrite_flag, claim_file, record_file
from .preprocess import to_gray
from .cli import command

log = logging.getLogger(__name__)
VIDEO_WRITER, SHEET_WRITER = "python -m edge_runtime --annotate", "python -m edge_runtime.annotate sheet"

GREEN, WHITE, DARK = (80, 220, 80), (255, 255, 255), (40, 40, 40)
FOURCC = {".webm": "VP80", ".avi": "MJPG", ".mp4": "mp4v"}  # each in every OpenCV build from PyPI
BROWSER_PLAYABLE = (".webm",)


BAR_W, NAME_W, ROW_H = 64, 18, 10  # a probability panel: bar length, the 2-letter name after it, row height
PANEL = (BAR_W + 2 + NAME_W, ROW_H * len(LABELS))  # its width and height, px


def layout(tracks, w: int, h: int) -> list[tuple[str, tuple | None, tuple | None]]:
    """Where each track's label and probability panel go in a ``w`` x ``h`` frame: (text, label rect or
    None, panel rect or None), rects as (x0, y0, x1, y1). Every rect lies inside the frame and covers no
    other label, panel or face. First every face gets its id (above its box, else inside its top, else
    below it), then each id grows to the full "id label score" where that fits, then each panel goes
    right of its box, else left of it, else is left out rather than drawn over another face."""
    boxes = [tuple(int(round(float(v))) for v in t.box) for t in tracks]
    faces = [(x, y, x + bw, y + bh) for x, y, bw, bh in boxes]
    probs = [np.asarray(t.smooth, np.float64) for t in tracks]
    full = [f"{t.id} {LABELS[int(np.argmax(p))]} {p.max():.0%}" for t, p in zip(tracks, probs)]
    texts: list[str] = [str(t.id) for t in tracks]
    labels: list[tuple | None] = [None] * len(tracks)

    def place(i: int, text: str) -> tuple | None:
        x, y, bw, bh = boxes[i]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        lh = th + 6
        busy = [r for j, r in enumerate(labels) if j != i and r is not None] + faces[:i] + faces[i + 1:]
        for ty in (y - lh - 2, y + 2, y + bh + 2):  # above, inside the top, below
            for tx in (x, x + bw - tw - 4):  # starting at the box's left edge, else ending at its right
                tx = min(max(0, tx), max(0, w - tw - 4))
                r = (tx, ty, tx + tw + 4, ty + lh)
                if _fits(r, w, h) and not _hits(r, busy):
                    return r
        return None

    for i in range(len(tracks)):
        labels[i] = place(i, texts[i])
    for i in range(len(tracks)):
        if (r := place(i, full[i])) is not None:
            labels[i], texts[i] = r, full[i]
    taken = [r for r in labels if r is not None]
    out = []
    for i, (x, y, bw, bh) in enumerate(boxes):
        others = faces[:i] + faces[i + 1:]
        pw, ph = PANEL
        py = min(max(0, y), max(0, h - ph))
        panel = None
        for px in (x + bw + 4, x - pw - 4):  # right of the face, else left of it
            r = (px, py, px + pw, py + ph)
            if _fits(r, w, h) and not _hits(r, taken) and not _hits(r, others):
                taken.append(r)
                panel = r
                break
        out.append((texts[i], labels[i], panel))
    return out


def _fits(r, w: int, h: int) -> bool:
    return r[0] >= 0 and r[1] >= 0 and r[2] <= w and r[3] <= h


def draw(image: np.ndarray, tracks) -> np.ndarray:
    """A BGR copy of ``image`` with, per track: its box, "id label score" and one bar per emotion,
    placed by ``layout``."""
    img = to_bgr(image if image.dtype == np.uint8 else to_gray(image)).copy()
    h, w = img.shape[:2]
    for t in tracks:
        x, y, bw, bh = (int(round(float(v))) for v in t.box)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), GREEN, 2)
    for t, (text, lab, panel) in zip(tracks, layout(tracks, w, h)):
        if lab is not None:
            cv2.rectangle(img, lab[:2], lab[2:], DARK, -1)
            cv2.putText(img, text, (lab[0] + 2, lab[3] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
        if panel is not None:
            _bars(img, np.asarray(t.smooth, np.float64), panel[0], panel[1])
    return img


def _hits(r, rects) -> bool:
    return any(r[0] < q[2] and q[0] < r[2] and r[1] < q[3] and q[1] < r[3] for q in rects)


def _bars(img: np.ndarray, probs: np.ndarray, x: int, y: int) -> None:
    """Seven bars, one per emotion (its first two letters after it), length = probability."""
    for i, (lab, p) in enumerate(zip(LABELS, probs)):
        yy = y + i * ROW_H
        cv2.rectangle(img, (x, yy + 1), (x + BAR_W + 2 + NAME_W, yy + ROW_H - 1), DARK, -1)
        cv2.rectangle(img, (x, yy + 1), (x + int(round(BAR_W * float(p))), yy + ROW_H - 1), GREEN, -1)
        cv2.putText(img, lab[:2], (x + BAR_W + 3, yy + ROW_H - 2), cv2.FONT_HERSHEY_PLAIN, 0.7, WHITE, 1,
                    cv2.LINE_AA)


class VideoOut:
    """An annotated video, opened at the first frame (its size is known then). It is written under a
    hidden name beside ``path`` and renamed over it at ``close()``: the target (possibly an existing
    file the user allowed with --overwrite) is replaced only by a finished video."""

    def __init__(self, path: str | Path, fps: float = 15.0, inputs=(), overwrite: bool = False, data=()):
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise ConfigError(f"--annotate {self.path}: use a .webm (plays in browsers), .mp4 or .avi file")
        if not self.path.parent.is_dir():
            raise ConfigError(f"--annotate {self.path}: folder {self.path.parent} does not exist")
        try:
            claim_file(self.path, writer=VIDEO_WRITER, inputs=inputs, data=data, flag="--annotate",
                       overwrite=overwrite)
        except OutputError as e:
            raise ConfigError(str(e)) from None
        self.partial = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}")
        self.fps, self.writer, self.frames = fps, None, 0
        if not self._open((64, 48)):  # can it be written at all? (before the camera opens)
            self.partial.unlink(missing_ok=True)
            raise ConfigError(f"--annotate {self.path}: OpenCV cannot write this file")
        self.writer.release()
        self.writer = None
        if self.path.suffix.lower() not in BROWSER_PLAYABLE:
            log.info("--annotate %s: %s plays in desktop players but not in browsers; name it .webm for a "
                     "browser", self.path, "MPEG-4 Part 2" if self.path.suffix.lower() == ".mp4" else "MJPEG AVI")

    def _open(self, size) -> bool:
        fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
        self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, size)
        return self.writer.isOpened()

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            if not self._open((frame.shape[1], frame.shape[0])):
                raise ConfigError(f"--annotate {self.path}: OpenCV cannot write this file")
            self.size = (frame.shape[1], frame.shape[0])
        if (frame.shape[1], frame.shape[0]) != self.size:  # a source that changed size: fit, never drop
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.partial, self.path)
            record_file(self.path, VIDEO_WRITER)
        self.partial.unlink(missing_ok=True)


def contact_sheet(video: str | Path, out: str | Path, frames: int = 8, columns: int = 4, width: int = 320,
                  overwrite: bool = False) -> int:
    """``frames`` frames spread over ``video``, as one PNG grid of ``columns`` (each ``width`` px wide)."""
    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{out}: the sheet is an image: name it .png (or .jpg)")
    claim_file(out, writer=SHEET_WRITER, inputs=[video], flag="OUT", overwrite=overwrite)
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        raise ValueError(f"{video} is not a video OpenCV can read")
    picks = np.linspace(0, total - 1, min(frames, total)).round().astype(int)
    tiles = []
    for i in picks:
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, img = cap.read()
        if ok:
            img = cv2.resize(img, (width, int(round(img.shape[0] * width / img.shape[1]))), interpolation=cv2.INTER_AREA)
            cv2.putText(img, f"frame {i}", (6, img.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
            tiles.append(img)
    cap.release()
    if not tiles:
        raise ValueError(f"no frame of {video} could be read")
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    try:
        ok, data = cv2.imencode(Path(out).suffix.lower(), np.vstack(rows))
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"cannot encode {out}")
    atomic_write_bytes(out, data.tobytes())
    record_file(out, SHEET_WRITER)
    return len(picks)


@command("python -m edge_runtime.annotate", bad_input=(ValueError, OSError))
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.annotate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet", help="a PNG contact sheet of frames spread over a video")
    s.add_argument("video")
    s.add_argument("out", help="PNG file to write")
    s.add_argument("--frames", type=int, default=8, help="frames on the sheet (1..64, default 8)")
    add_overwrite_flag(s)
    a = p.parse_args(argv)
    if not 1 <= a.frames <= 64:
        raise ValueError("--frames must be in [1, 64]")
    n = contact_sheet(a.video, a.out, a.frames, overwrite=a.overwrite)
    print(f"wrote {a.out} ({n} frames of {a.video})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
