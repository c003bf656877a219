"""Per-face tracks: greedy IoU matching, exponential smoothing of probabilities, new/update/end."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Track:
    id: int
    box: np.ndarray         # x, y, w, h of the latest detection
    crop: np.ndarray        # the region that was classified (box + margin)
    raw: np.ndarray         # the model's probabilities on the latest crop
    smooth: np.ndarray      # EMA of raw
    first_frame: int
    last_frame: int
    missed: int = 0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N,4) and (M,4) x,y,w,h boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = a.astype(np.float64), b.astype(np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return inter / np.maximum(union, 1e-9)


class Tracker:
    def __init__(self, iou: float = 0.3, smoothing: float = 0.6, max_missed: int = 5):
        self.iou, self.alpha, self.max_missed = iou, smoothing, max_missed
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(self, frame: int, boxes: np.ndarray, crops: np.ndarray, probs: np.ndarray):
        """Feed one frame's detections; return [(kind, track)] with kind in new/update/end."""
        out = []
        ids = list(self.tracks)
        m = iou_matrix(np.array([self.tracks[i].box for i in ids]).reshape(-1, 4), boxes)
        matched_t, matched_d = set(), set()
        # greedy: best remaining pair first (faces rarely cross, so this equals Hungarian in practice)
        for flat in np.argsort(-m, axis=None):
            ti, di = np.unravel_index(flat, m.shape)
            if m[ti, di] < self.iou:
                break
            if ti in matched_t or di in matched_d:
                continue
            matched_t.add(ti)
            matched_d.add(di)
            t = self.tracks[ids[ti]]
            t.box, t.crop, t.raw, t.last_frame, t.missed = boxes[di], crops[di], probs[di], frame, 0
            t.smooth = self.alpha * t.smooth + (1 - self.alpha) * probs[di]
            out.append(("update", t))
        for di in range(len(boxes)):
            if di not in matched_d:
                t = Track(self._next_id, boxes[di], crops[di], probs[di], probs[di].copy(), frame, frame)
                self.tracks[t.id] = t
                self._next_id += 1
                out.append(("new", t))
        for ti, tid in enumerate(ids):
            if ti not in matched_t:
                t = self.tracks[tid]
                t.missed += 1
                if t.missed > self.max_missed:
                    out.append(("end", self.tracks.pop(tid)))
        return out

    def end_all(self):
        """Close every open track (shutdown, end of file)."""
        out = [("end", t) for t in self.tracks.values()]
        self.tracks.clear()
        return out
