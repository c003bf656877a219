"""Per-face tracks: motion-predicted IoU matching gated by appearance, exponential smoothing of
probabilities, new/update/end.

A detection continues a track when it overlaps the track's predicted box (constant velocity). A
track that lost its face for a frame or more is re-acquired only by a face that also looks like
the one it last saw (correlation of small grey thumbnails), so a new face that appears where
another just left starts a new track instead of inheriting its history.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .events import TrackSummary
from .geometry import Detections, iou_matrix

THUMB = 16  # side of the appearance thumbnail


@dataclass
class Track:
    id: int
    box: np.ndarray          # x, y, w, h of the latest detection
    crop: np.ndarray         # the region that was classified
    raw: np.ndarray          # the model's probabilities on the latest crop
    smooth: np.ndarray       # EMA of raw
    first_frame: int
    last_frame: int
    landmarks: np.ndarray = field(default_factory=lambda: np.full((5, 2), np.nan, np.float32))
    score: float = 1.0
    look: np.ndarray | None = None  # unit-norm zero-mean thumbnail
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # box centre, px per frame
    missed: int = 0
    votes: np.ndarray | None = None  # frames per (smoothed) label: the track's summary
    t_first: float = field(default_factory=time.time)
    t_last: float = field(default_factory=time.time)
    media_first: float | None = None  # the source's own time of the first and latest detection, s
    media_last: float | None = None

    def vote(self, media_s: float | None = None) -> None:
        if self.votes is None:
            self.votes = np.zeros(len(self.smooth), np.int64)
            self.media_first = media_s
        self.votes[int(np.argmax(self.smooth))] += 1
        self.t_last = time.time()
        self.media_last = media_s

    def shares(self) -> np.ndarray:
        """Each label's share of the frames seen (fractions; zeros before any vote)."""
        votes = self.votes if self.votes is not None else np.zeros(len(self.smooth), np.int64)
        return votes / max(int(votes.sum()), 1)

    def summary(self, labels) -> TrackSummary:
        """Per person, not per frame: how long (in media seconds), how often seen, each emotion's share."""
        votes = self.votes if self.votes is not None else np.zeros(len(labels), np.int64)
        seen = int(votes.sum())
        pct = [round(100.0 * float(v) / max(seen, 1), 2) for v in votes]
        first, last = self.media_first, self.media_last
        return TrackSummary(
            dominant=labels[int(np.argmax(votes))] if seen else None,
            dominant_pct=max(pct) if seen else 0.0, shares_pct=dict(zip(labels, pct)), frames_seen=seen,
            frames_spanned=self.last_frame - self.first_frame + 1,
            first_media_s=_r(first), last_media_s=_r(last),
            duration_s=_r(last - first) if first is not None and last is not None else None,
            wall_s=round(self.t_last - self.t_first, 3))

    def predicted(self, frame: int) -> np.ndarray:
        b = np.asarray(self.box, np.float64).copy()
        b[:2] += self.velocity * (frame - self.last_frame)
        return b


def thumbnails(faces: np.ndarray) -> np.ndarray:
    """(K, S, S[, 1]) face inputs -> (K, THUMB*THUMB) zero-mean unit-norm appearance vectors."""
    x = np.asarray(faces, np.float32).reshape(len(faces), faces.shape[1], faces.shape[2])
    if len(x) == 0:
        return np.zeros((0, THUMB * THUMB), np.float32)
    k = x.shape[1] // THUMB
    x = x[:, :k * THUMB, :k * THUMB].reshape(len(x), THUMB, k, THUMB, k).mean(axis=(2, 4)).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


class Tracker:
    def __init__(self, iou: float = 0.3, smoothing: float = 0.6, max_missed: int = 5, appearance: float = 0.5):
        self.iou, self.alpha, self.max_missed, self.appearance = iou, smoothing, max_missed, appearance
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self.last: Detections | None = None  # the latest frame's faces with their track ids and smoothed probs


    @classmethod
    def from_config(cls, cfg) -> "Tracker":
        """From the config's ``[tracker]`` section (``config.TrackerConfig``)."""
        return cls(cfg.iou, cfg.smoothing, cfg.max_missed, cfg.appearance)
    def update(self, frame: int, dets: Detections, looks: np.ndarray | None = None, media_s: float | None = None):
        """Feed one frame's faces (``Detections`` carrying their crop regions and probabilities) and
        (optionally) appearance thumbnails and the frame's media time; return [(kind, track)] with kind
        in new/update/end. ``self.last`` is then the same faces with their track ids and smoothed
        probabilities."""
        if dets.regions is None or dets.probs is None:
            raise ValueError("the tracker needs classified faces: Detections with regions and probs")
        crops, probs = dets.regions, dets.probs
        out = []
        ids = list(self.tracks)
        boxes = dets.boxes
        face_track = np.zeros(len(boxes), np.int64)  # the track each face went to
        m = iou_matrix(np.array([self.tracks[i].predicted(frame) for i in ids]).reshape(-1, 4), boxes)
        if looks is not None and ids and len(boxes):  # the face must also look like the track's face
            same = np.array([np.ones(len(boxes)) if self.tracks[i].look is None else looks @ self.tracks[i].look
                             for i in ids])
            m = np.where(same >= self.appearance, m, 0.0)
        matched_t, matched_d = set(), set()
        for flat in np.argsort(-m, axis=None, kind="stable"):  # greedy: best remaining overlap first
            ti, di = np.unravel_index(flat, m.shape)
            if m[ti, di] < self.iou:
                break
            if ti in matched_t or di in matched_d:
                continue
            matched_t.add(ti)
            matched_d.add(di)
            t = self.tracks[ids[ti]]
            step = max(1, frame - t.last_frame)
            moved = (_centre(boxes[di]) - _centre(t.box)) / step
            t.velocity = 0.5 * t.velocity + 0.5 * moved
            t.box, t.crop, t.raw, t.last_frame, t.missed = boxes[di], crops[di], probs[di], frame, 0
            t.landmarks, t.score = dets.landmarks[di], float(dets.scores[di])
            if looks is not None:
                t.look = looks[di]
            t.smooth = self.alpha * t.smooth + (1 - self.alpha) * probs[di]
            t.vote(media_s)
            face_track[di] = t.id
            out.append(("update", t))
        for di in range(len(boxes)):
            if di not in matched_d:
                t = Track(self._next_id, boxes[di], crops[di], probs[di], probs[di].copy(), frame, frame,
                          dets.landmarks[di], float(dets.scores[di]), None if looks is None else looks[di])
                t.vote(media_s)
                self.tracks[t.id] = t
                self._next_id += 1
                face_track[di] = t.id
                out.append(("new", t))
        for ti, tid in enumerate(ids):
            if ti not in matched_t:
                t = self.tracks[tid]
                t.missed += 1
                if t.missed > self.max_missed:
                    out.append(("end", self.tracks.pop(tid)))
        smoothed = (np.array([self.tracks[i].smooth for i in face_track], np.float32) if len(boxes)
                    else np.zeros((0, probs.shape[1]), np.float32))
        self.last = dets.with_fields(track_ids=face_track, smoothed=smoothed)
        return out

    def end_all(self):
        """Close every open track (shutdown, end of file)."""
        out = [("end", t) for t in self.tracks.values()]
        self.tracks.clear()
        self.last = None
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def _centre(box) -> np.ndarray:
    b = np.asarray(box, np.float64)
    return b[:2] + b[2:] / 2
