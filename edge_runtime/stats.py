"""The one stats object (counters, latency histograms and health, read by HTTP and MQTT) and the
recent-events view that HTTP's /latest and MQTT's state each keep."""
from __future__ import annotations

import os
import threading
import time
from collections import deque

from .labels import LABELS

# Latency buckets in milliseconds (Prometheus exports them as seconds).
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
STAGES = ("capture_age", "detect", "preprocess", "classify", "postprocess", "total")
ENDED_KEEP_S = 60.0  # /latest keeps a track's end event (with its summary) this long after it ended
MOOD_WINDOW_S = 60.0  # the share of each emotion is over the faces seen in this many seconds
# counter -> its Prometheus HELP text (the one place each counter is named and explained)
COUNTER_HELP = {
    "frames_read": "Frames read from the source.",
    "frames_processed": "Frames run through detection and classification.",
    "frames_dropped": "Frames a live source delivered while the previous one was still in work (skipped).",
    "frames_undecodable": "Frames of a video file that did not decode (skipped, the file went on).",
    "faces": "Faces detected, summed over processed frames.",
    "frames_region_detect": "Processed frames whose faces were looked for only around the live tracks (detector.full_every).",
    "events": "Track events produced (start, update, end).",
    "reconnects": "Times the source was lost and reopened.",
    "source_errors": "Source reads that failed.",
    "sink_errors": "Event writes or publishes that failed.",
    "events_dropped": "Events not delivered to a sink (a full disk, a FIFO nobody reads, an MQTT queue overflow).",
    "http_refused": "HTTP connections refused because every slot (or the address's share) was taken.",
}
COUNTERS = tuple(COUNTER_HELP)


def rss_bytes() -> int:
    """Resident memory from /proc (no psutil needed on the device); 0 where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Histogram:
    def __init__(self):
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, ms: float):
        i = next((k for k, b in enumerate(BUCKETS_MS) if ms <= b), len(BUCKETS_MS))
        self.counts[i] += 1
        self.sum += ms
        self.n += 1

    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latency = {s: Histogram() for s in STAGES}
        self.status, self.reason = "starting", ""  # the source's health
        self.faults: dict[str, str] = {}  # other parts' problems (a sink, a stalled source): each degrades health
        self.info: dict[str, str] = {}  # backend, artifact, sha256, runtime, detector, source
        self.tracks_active = 0
        self.progress_timeout_s = 0.0  # set by the daemon: no frame processed for this long degrades health
        self._last_progress = time.monotonic()

    def inc(self, name: str, n: int = 1):
        with self._lock:
            self.counters[name] += n
            if name == "frames_processed":
                self._last_progress = time.monotonic()

    def observe(self, latencies_ms: dict[str, float]):
        with self._lock:
            for stage, ms in latencies_ms.items():
                self.latency[stage].observe(ms)

    def set_health(self, status: str, reason: str = ""):
        with self._lock:
            self.status, self.reason = status, reason

    def fault(self, part: str, reason: str | None) -> None:
        """Report (reason) or clear (None) a problem of one part; any open fault degrades health."""
        with self._lock:
            if reason:
                self.faults[part] = reason
            else:
                self.faults.pop(part, None)

    def health(self) -> tuple[str, str]:
        with self._lock:
            return self._health()

    def _health(self) -> tuple[str, str]:
        faults = list(self.faults.values())
        idle = time.monotonic() - self._last_progress
        if self.status == "ok" and self.progress_timeout_s and idle > self.progress_timeout_s:
            faults.append(f"no frame processed for {idle:.0f} s")  # computed when asked: true even if the loop is wedged
        if faults and self.status == "ok":
            return "degraded", "; ".join(faults)
        return self.status, "; ".join([self.reason] * bool(self.reason) + faults)

    def snapshot(self) -> dict:
        """A JSON-ready copy (MQTT stats, /healthz)."""
        with self._lock:
            up = time.time() - self.started
            status, reason = self._health()
            return {
                "status": status, "reason": reason, "uptime_s": round(up, 1),
                **self.counters, "tracks_active": self.tracks_active,
                "fps": round(self.counters["frames_processed"] / up, 2) if up > 0 else 0.0,
                "latency_ms_mean": {s: round(h.mean(), 3) for s, h in self.latency.items()},
                "rss_bytes": rss_bytes(), **self.info,
            }

    def prometheus(self) -> str:
        lines = []
        with self._lock:
            for name, v in self.counters.items():
                lines += [f"# HELP edge_{name}_total {COUNTER_HELP[name]}", f"# TYPE edge_{name}_total counter",
                          f"edge_{name}_total {v}"]
            lines += ["# HELP edge_tracks_active Faces being tracked now.", "# TYPE edge_tracks_active gauge",
                      f"edge_tracks_active {self.tracks_active}",
                      "# HELP edge_healthy 1 when /healthz says ok, else 0 (degraded, starting, stopping).",
                      "# TYPE edge_healthy gauge", f"edge_healthy {int(self._health()[0] == 'ok')}",
                      "# HELP edge_stage_latency_seconds Time per frame in each pipeline stage.",
                      "# TYPE edge_stage_latency_seconds histogram"]
            for stage, h in self.latency.items():
                cum = 0
                for b, c in zip(BUCKETS_MS, h.counts):
                    cum += c
                    lines.append(f'edge_stage_latency_seconds_bucket{{stage="{stage}",le="{b / 1000:g}"}} {cum}')
                lines.append(f'edge_stage_latency_seconds_bucket{{stage="{stage}",le="+Inf"}} {h.n}')
                lines.append(f'edge_stage_latency_seconds_sum{{stage="{stage}"}} {h.sum / 1000:.6f}')
                lines.append(f'edge_stage_latency_seconds_count{{stage="{stage}"}} {h.n}')
            labels = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(self.info.items()))
            lines += ["# HELP edge_info The model, runtime, detector and source this daemon runs (value 1).",
                      "# TYPE edge_info gauge", f"edge_info{{{labels}}} 1"]
        lines += ["# HELP process_resident_memory_bytes Resident memory of the daemon process.",
                  "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss_bytes()}"]
        return "\n".join(lines) + "\n"


class RecentEvents:
    """The last minute as a viewer sees it: each live track's last event, the end events (with their
    summaries) of the tracks ended in the last ENDED_KEEP_S, and each emotion's share of the faces seen
    over MOOD_WINDOW_S. HTTP's /latest and MQTT's state each keep one, fed every event (Sink.observe);
    memory stays bounded by time."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latest: dict[int, dict] = {}  # track id -> its last event
        self.ended: deque = deque(maxlen=10_000)  # (time, end event)
        self._seen: deque = deque(maxlen=200_000)  # (time, label) per face per frame

    def record(self, event: dict) -> None:
        with self._lock:
            now = time.time()
            if event["type"] == "end":
                self.latest.pop(event["track"], None)
                self.ended.append((now, event))
            else:
                self.latest[event["track"]] = event
                self._seen.append((now, event["label"]))
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._seen and self._seen[0][0] < now - MOOD_WINDOW_S:
            self._seen.popleft()
        while self.ended and self.ended[0][0] < now - ENDED_KEEP_S:
            self.ended.popleft()

    def latest_events(self) -> list[dict]:
        """The live tracks' last events, then the end events (with summaries) of the last minute."""
        with self._lock:
            cutoff = time.time() - ENDED_KEEP_S
            return list(self.latest.values()) + [e for t, e in self.ended if t >= cutoff]

    def mood(self, faces: int) -> dict:
        """What a home-automation sensor shows: ``faces`` now, and each emotion's share of the faces
        seen over the last MOOD_WINDOW_S seconds (percent, as the key says), with the most common one."""
        with self._lock:
            self._prune(time.time())
            counts = dict.fromkeys(LABELS, 0)
            for _, label in self._seen:
                counts[label] += 1
            total = sum(counts.values())
            dominant = max(counts, key=counts.get) if total else "none"
            return {"faces": faces, "dominant": dominant, "window_s": MOOD_WINDOW_S,
                    "shares_pct": {k: round(100.0 * v / total, 1) if total else 0.0 for k, v in counts.items()}}


def _esc(v) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
