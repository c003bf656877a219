"""The capture thread that keeps only the newest frame.

Live sources (cameras, streams) overwrite an unconsumed frame and count it as dropped, so the
pipeline always works on the newest picture; files and folders are read in full (back-pressure)
unless ``realtime`` is forced, which paces them at their FPS and drops like a camera.
Lost or unopenable sources put health to ``degraded`` and reconnect with capped exponential backoff.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .sources import open_source, redact, source_kind

log = logging.getLogger(__name__)
BACKOFF_START_S = 0.5


@dataclass
class Frame:
    image: np.ndarray
    index: int
    t_capture: float  # time.monotonic() when read
    media_s: float | None = None  # position in the source, s (edge_runtime/events.py: Event.media_s)


MAX_UNDECODABLE = 25  # failed reads in a row that mean a file's real end (a corrupt frame is one)


def backoff_delay(attempt: int, cap_s: float) -> float:
    return min(cap_s, BACKOFF_START_S * 2.0 ** min(attempt, 40))  # the exponent capped: 2**1024 overflows a float



class Capture(threading.Thread):
    """Reads frames into a one-slot mailbox; ``get()`` hands the newest one to the pipeline. With
    ``threaded=False`` nothing runs in the background: ``get()`` decodes the next frame in the caller's
    thread (a batch worker with one core gains nothing from a second thread, and loses the handoffs)."""

    def __init__(self, uri: str, stats, loop: bool = False, realtime: str = "auto", width: int = 0,
                 height: int = 0, fps: float = 0.0, reconnect_max_s: float = 30.0, opener=open_source,
                 stall_s: float = 5.0, watchdog=None, every: int = 1, threaded: bool = True):
        super().__init__(name="capture", daemon=True)
        self.threaded = threaded
        self._gen = None  # inline: the producer, advanced by get()
        self.uri, self.stats, self.loop = uri, stats, loop
        self.shown = redact(uri)  # in every message: a stream's password never reaches a log
        self.kind = source_kind(uri)
        self.realtime = self.kind in ("camera", "stream") if realtime == "auto" else realtime == "true"
        self.size_fps = (width, height, fps)
        self.reconnect_max_s, self.stall_s = reconnect_max_s, stall_s
        self.opener = opener
        self.last_frame_t = time.monotonic()  # when the source last gave a frame (or started)
        self._stalled = False
        self.stop_event = threading.Event()
        self.ended = threading.Event()  # the file/folder ran out and we do not loop
        self.error = ""  # why a file can never give frames (set with `ended`)
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._index = 0  # frames handed to the pipeline
        self._decoded = 0  # frames decoded: a frame's index, also with `every` > 1
        self.every = max(1, int(every))  # analyse every Nth decoded frame
        self._live_t0: float | None = None  # a live source's first frame (monotonic), its media time 0
        self._media_offset, self._media_last, self._frame_s = 0.0, None, 0.0  # a looped file's running time
        self.delays: list[float] = []  # backoff waits taken (inspected by tests and logs)
        self.watchdog = watchdog  # told before each call that may block (open, read, a backoff wait)
        self.crashed = ""  # the exception that ended the thread, if one did

    # --- consumer side -------------------------------------------------------------------

    @classmethod
    def from_config(cls, uri: str, src, stats, watchdog=None) -> "Capture":
        """From the config's ``[source]`` section (``config.SourceConfig``); ``uri``: the source to open,
        credentials already applied (``with_credentials``)."""
        return cls(uri, stats, src.loop, src.realtime, src.width, src.height, src.fps, src.reconnect_max_s,
                   stall_s=src.stall_s, watchdog=watchdog, every=src.every, threaded=src.decode_thread)
    def start(self):
        if self.threaded:
            return super().start()
        self._gen = self._produce()

    def is_alive(self) -> bool:
        return super().is_alive() if self.threaded else self._gen is not None

    def join(self, timeout: float | None = None):
        if self.threaded:
            return super().join(timeout)
        if self._gen is not None:
            self._gen.close()  # releases the source
            self._gen = None

    def get(self, timeout: float = 0.1) -> Frame | None:
        if not self.threaded:
            if self._slot is None and self._gen is not None and not self.stop_event.is_set():
                if next(self._gen, StopIteration) is StopIteration:
                    self._gen = None
            timeout = 0.0  # nothing else will fill the slot
        with self._cond:
            if self._slot is None:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def stop(self):
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()

    # --- producer side -------------------------------------------------------------------
    def check_stall(self) -> bool:
        """Called by the consumer while it waits: a live source silent for ``stall_s`` degrades health."""
        silent = time.monotonic() - self.last_frame_t
        if self.kind in ("camera", "stream") and silent > self.stall_s and not self._stalled:
            self._stalled = True
            self.stats.fault("source", f"source stalled: no frame for {silent:.0f} s")
            log.warning("source %s stalled: no frame for %.1f s", self.shown, silent)
        return self._stalled

    def _put(self, image: np.ndarray, media_s: float | None = None, index: int | None = None):
        index = self._index if index is None else index
        self._index += 1
        self.last_frame_t = time.monotonic()
        if self._stalled:
            self._stalled = False
            self.stats.fault("source", None)
            log.info("source %s delivers frames again", self.shown)
        self.stats.inc("frames_read")
        with self._cond:
            if self.realtime:
                if self._slot is not None:
                    self.stats.inc("frames_dropped")
            else:
                while self._slot is not None and not self.stop_event.is_set():
                    self._beat("waiting for the pipeline to take a frame")
                    self._cond.wait(0.1)
            # stamped once it is offered: for files, back-pressure waiting is not capture latency
            self._slot = Frame(image, index, time.monotonic(), media_s)
            self._cond.notify_all()

    def _beat(self, doing: str, extra_s: float = 0.0) -> None:
        if self.watchdog is not None:
            self.watchdog.beat("capture", self.watchdog.limit_s + extra_s, doing)

    def _lost(self, reason: str, attempt: int) -> None:
        delay = backoff_delay(attempt, self.reconnect_max_s)
        self.delays.append(delay)
        self.stats.set_health("degraded", f"source lost: {reason}")
        self.stats.inc("reconnects")
        log.warning("source %s lost (%s); retrying in %.1f s", self.shown, reason, delay)
        self._beat("a reconnect wait", delay)
        self.stop_event.wait(delay)

    def run(self):
        for _ in self._produce():
            pass

    def _produce(self):
        """The producer; yields after each frame it hands over."""
        try:
            yield from self._run()
        except Exception as e:  # a bug or a driver's exception: say so; the daemon exits for a restart
            self.crashed = f"{type(e).__name__}: {e}"
            log.exception("capture thread died")
            self.stats.set_health("degraded", f"capture thread died: {self.crashed}")
        finally:
            if self.watchdog is not None:
                self.watchdog.done("capture")
            with self._cond:
                self._cond.notify_all()

    def _run(self):
        attempt = 0
        while not self.stop_event.is_set():
            self._beat(f"opening {self.shown}")
            cap = self.opener(self.uri, *self.size_fps, self.stall_s)
            if not cap.isOpened():
                cap.release()
                if self._never_works(f"{self.shown} is not a video OpenCV can read"):
                    break
                self._lost(f"cannot open {self.shown}", attempt)
                attempt += 1
                continue
            try:
                n = yield from self._read_all(cap)
            finally:
                cap.release()
            if self.stop_event.is_set():
                break
            if n == 0 and self._never_works(f"{self.shown} holds no readable video frames"):
                break
            if self.kind in ("file", "dir") and n > 0:
                self.stats.set_health("ok")
                if not self.loop:
                    self.ended.set()
                    break
                attempt = 0
                if self._media_last is not None:  # the next pass starts one frame after this one ended
                    self._media_offset = self._media_last + self._frame_s
                continue  # loop: reopen from the start
            if n > 0:
                attempt = 0
            self.stats.inc("source_errors")
            self._lost("no frames" if n == 0 else "read failed", attempt)
            attempt += 1

    def _media_time(self, cap) -> float | None:
        """A file's frame: its container timestamp. A live source: seconds since its capture began
        (across reconnects). An image folder has no time."""
        if self.kind == "file":  # with --loop, each pass goes on from where the last one ended
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            if ms is None or ms < 0:
                return None
            t = self._media_offset + ms / 1000.0
            if self._media_last is not None and t <= self._media_last:
                t = self._media_last + self._frame_s  # a demuxer's flush (MPEG-PS) reports 0: time never runs back
            self._media_last = t
            return round(t, 6)
        if self.kind == "dir":
            return None
        now = time.monotonic()
        if self._live_t0 is None:
            self._live_t0 = now
        return round(now - self._live_t0, 6)

    def _never_works(self, reason: str) -> bool:
        """A file that gave no frame the first time will not give one later: end with ``error``
        set instead of retrying it like a lost camera. (A folder may still receive images: retried.)"""
        if self.kind != "file" or self._index > 0:
            return False
        self.error = reason
        self.stats.set_health("degraded", reason)
        self.ended.set()
        return True

    def _read_all(self, cap) -> int:
        """Read until the source fails or we are stopped; return the number of frames read. In a file,
        a frame that does not decode is skipped and counted (``frames_undecodable``): the file ends only
        after MAX_UNDECODABLE failed reads in a row, its real end."""
        n = failed = 0
        container_fps = cap.get(cv2.CAP_PROP_FPS) if self.kind == "file" else 0.0
        self._frame_s = 1.0 / container_fps if container_fps and container_fps > 0 else 0.0
        fps = container_fps if self.realtime else 0.0
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            self._beat("reading a frame")
            ok, img = cap.read()
            if not ok or img is None:
                failed += 1
                if self.kind != "file" or failed >= MAX_UNDECODABLE:
                    return n
                continue
            if failed and n:  # frames that would not decode, between two that did
                self.stats.inc("frames_undecodable", failed)
                log.warning("source %s: %d undecodable frame(s) skipped after frame %d", self.shown, failed, n)
            self._decoded += failed  # they held places in the file: later frames keep their own numbers
            failed = 0
            if n == 0:
                self.stats.set_health("ok")
            n += 1
            if fps and fps > 0:  # pace a file like the camera it stands in for
                self.stop_event.wait(max(0.0, t0 + n / fps - time.monotonic()))
            index, self._decoded = self._decoded, self._decoded + 1
            if index % self.every:  # subsampling: the frames kept keep their own index and time
                continue
            self._put(img, self._media_time(cap), index)
            yield
        return n
