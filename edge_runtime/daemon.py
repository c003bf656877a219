"""The camera daemon: source -> detect -> calibrated crop -> preprocess -> one batched predict -> track -> sinks.

Construction loads and verifies everything that can fail on user input (manifest, sha256, backend,
detector, sinks) *before* the source is opened, so a bad model never touches the camera.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from .api import EmotionRecognizer
from .cli import error
from .events import Event
from .config import Config, ConfigError, check
from .annotate import VideoOut, draw
from .geometry import landmark_list
from .labels import LABELS
from .outputs import OutputError, check_target, model_files
from .mqtt import MqttSink
from .sinks import JsonlSink, default_device_id, node_id
from .capture import Capture
from .sources import local_path, redact, source_kind, source_uri
from .stats import Stats
from .tracker import Tracker, thumbnails
from .watchdog import Watchdog, sd_notify

log = logging.getLogger("edge_runtime")
SHUTDOWN_JOIN_S = 0.3  # capture thread join bound; it is a daemon thread, so a stuck driver cannot hang exit


def _probs(p: np.ndarray) -> dict[str, float]:
    return {lab: round(float(v), 6) for lab, v in zip(LABELS, p)}


class Daemon:
    def __init__(self, cfg: Config, read_files=(), sinks=None):
        """``read_files``: other files the daemon was started from (its --config and --profile): no output
        may be one of them. ``sinks``: ``sinks.Sink`` objects that take the events instead of the JSON
        Lines file (the batch analyser collects them this way)."""
        self.cfg = check(cfg)  # the cross-field rules too, for a Config built in code
        self.stats = Stats()
        self.stop_event = threading.Event()
        m, src = cfg.model, cfg.source
        uri = source_uri(src)
        self.recognizer = EmotionRecognizer.from_config(cfg)
        er = self.recognizer
        cv2.setNumThreads(m.threads)
        self.tracker = Tracker.from_config(cfg.tracker)
        self.stats.info = {"model": er.manifest.model, "model_choice": er.model_choice, "artifact": er.artifact,
                           "backend": er.backend.format, "precision": er.backend.precision,
                           "runtime": er.backend.runtime, "sha256": er.backend.sha256,
                           "detector": er.detector.name, "source": redact(uri)}
        log.info("model %s (%s), %s (%s, sha256 %s…) on %s, %d thread(s); detector %s at %d px, crop %s",
                 er.manifest.model, er.model_choice, er.artifact, er.backend.precision, er.backend.sha256[:12],
                 er.backend.runtime, m.threads,
                 er.detector.name, er.detector_size, er.crop)
        self.exit_code, self.exit_reason = 0, ""
        self._stop_requested = self._reopen_requested = False
        self._sink_warned: dict[str, float] = {}
        # what the daemon reads: an output may not be, hold or sit inside any of them
        kind = source_kind(uri)
        inputs = [*model_files(er.manifest.dir), *read_files, local_path(uri) if kind == "file" else None]
        folder = [local_path(uri)] if kind == "dir" else []  # an image folder: nothing may be written inside
        if cfg.run.annotate and cfg.events.path not in ("", "-") and \
                Path(cfg.run.annotate).resolve() == Path(cfg.events.path).resolve():
            raise ConfigError(f"--annotate and --events both name {cfg.run.annotate}: give each its own file")
        try:
            if cfg.events.path not in ("", "-"):
                check_target(cfg.events.path, inputs, "--events", data=folder)
        except OutputError as e:
            raise ConfigError(str(e)) from None
        try:
            self.sinks = (list(sinks) if sinks is not None else
                          [JsonlSink(cfg.events.path, self.stats, on_closed=self._output_closed)])
        except OSError as e:
            raise ConfigError(f"events file {cfg.events.path}: {e.strerror or e}") from None
        self._last_view = None  # (frame index, image, tracks, media s) for /stream.mjpg, encoded on demand
        self._since_full, self._need_full = 0, True  # frames since the last full-frame detection
        self._jpeg_cache = (None, None)
        q = cfg.mqtt  # the device id names this daemon in every event, MQTT topic and HA device
        self.device_id = q.device_id or (node_id(q.client_id) if q.client_id else default_device_id(src.uri))
        self.stats.info["device_id"] = self.device_id
        if cfg.mqtt.host:
            self.sinks.append(MqttSink.from_config(q, self.stats, self.device_id))
        if cfg.http.bind:
            from .http import HttpServer
            self.sinks.append(HttpServer.from_config(cfg.http, self.stats, self.jpeg))
        # the annotated video plays at the source's pace: a file's own frame rate (over --every)
        self.annotate = None
        if cfg.run.annotate:  # a regular file only: opening a FIFO here would block before the watchdog runs
            plain = kind == "file" and Path(local_path(uri)).is_file()
            rate = src.fps or (_file_fps(local_path(uri)) if plain else 0.0) or 15.0
            self.annotate = VideoOut(cfg.run.annotate, rate / src.every, inputs, cfg.run.overwrite, data=folder)
        self.watchdog = Watchdog(cfg.run.watchdog_s)
        self.stats.progress_timeout_s = src.stall_s
        self.capture = Capture.from_config(uri, src, self.stats, self.watchdog)

    # --- the loop ------------------------------------------------------------------------------
    # Signal handlers run in the main thread between two bytecodes, possibly while it holds a lock
    # (an Event's, a Condition's): they only assign a flag, which takes none. The loop acts on it.
    def stop(self, *_):
        """Signal-safe: ask the loop to finish the frame in flight and shut down."""
        self._stop_requested = True

    def request_reopen(self, *_):
        """Signal-safe (SIGHUP): reopen the events file before the next frame (log rotation)."""
        self._reopen_requested = True

    def _output_closed(self, reason: str):
        """stdout's reader went away. With MQTT or HTTP still serving, carry on degraded; with no
        output left, stop (exit 1: a new process under a new reader can work, so systemd may restart)."""
        if len(self.sinks) > 1:
            self.stats.fault("events", reason)
            log.warning("%s; MQTT/HTTP go on", reason)
            return
        self.exit_code, self.exit_reason = 1, reason
        self.stop_event.set()

    def run(self) -> int:
        self.watchdog.beat("main loop", doing="starting")
        self.watchdog.start()
        self.capture.start()
        self._t_start = time.monotonic()
        sd_notify("READY=1")
        max_frames = self.cfg.run.max_frames
        done, code = 0, 0
        try:
            while not self.stop_event.is_set():
                self.watchdog.beat("main loop", doing="a frame")
                if self._reopen_requested:
                    self._reopen_requested = False
                    for sink in self.sinks:
                        sink.reopen()
                if self._stop_requested:
                    break
                if not self.capture.is_alive() and not self.capture.ended.is_set():
                    self.exit_code = 1  # restartable: a new process gets a new capture thread
                    self.exit_reason = (f"capture thread died ({self.capture.crashed})" if self.capture.crashed
                                        else "capture thread ended")
                    break
                if stuck := [s for s in self.watchdog.stuck() if s[0] == "capture"]:
                    self.exit_code, self.exit_reason = 1, f"capture stuck in {stuck[0][2]}"
                    break
                frame = self.capture.get(0.1)
                if frame is None and self.capture.ended.is_set():
                    frame = self.capture.get(0)  # the last frame may land just before `ended`
                    if frame is None:
                        if self.capture.error:  # a file that can never give a frame
                            error("edge_runtime", self.capture.error)
                            code = 2
                        else:
                            log.info("end of source after %d frames", done)
                        break
                if frame is None:
                    self.capture.check_stall()
                    continue
                self.process(frame)
                done += 1
                if max_frames and done >= max_frames:
                    break
        finally:
            self.shutdown()
        if self.exit_code:
            error("edge_runtime", self.exit_reason)
            return self.exit_code
        return code

    def _regions(self, index: int, seen: int):
        """Where to look for faces in frame ``index`` (``seen``: the faces found in the last frame): None (the whole frame) every ``full_every``
        frames, when no face was seen in the last frame, or when a region search missed a track; else
        around each track's predicted box (a missed one's too, so a face the detector lost for a frame
        comes back under its id). Kept here, not in the shared recognizer: it is this stream's history."""
        d = self.cfg.detector
        if d.full_every <= 1 or self._need_full or self._since_full >= d.full_every or not seen:
            return None
        m = d.roi_margin
        boxes = np.array([t.predicted(index) for t in self.tracker.tracks.values()], np.float64).reshape(-1, 4)
        return np.concatenate([boxes[:, :2] - m * boxes[:, 2:], boxes[:, 2:] * (1 + 2 * m)], axis=1)

    def process(self, frame) -> list[dict]:
        t0 = time.monotonic()
        seen = sum(1 for t in self.tracker.tracks.values() if not t.missed)  # faces found last frame
        regions = self._regions(frame.index, seen)
        r = self.recognizer.analyze(frame.image, regions)
        if regions is not None and len(r.detections) < seen:
            # a face seen last frame is not where it was expected (it left, or moved fast): look at the
            # whole frame now, or a face that replaced it elsewhere would be found frames late
            spent = r.ms
            r = self.recognizer.analyze(frame.image)
            r.ms.update({k: r.ms[k] + spent.get(k, 0.0) for k in ("detect", "preprocess", "classify")})
            regions = None
        self._since_full = 1 if regions is None else self._since_full + 1
        t3 = time.monotonic()
        looks = thumbnails(r.inputs) if self.tracker.appearance > -1 else None
        latency = {"capture_age": (t0 - frame.t_capture) * 1000, **r.ms}
        changes = self.tracker.update(frame.index, r.detections, looks, frame.media_s)
        # a track first missed by a region search (the count above can hide it): the whole frame next
        # time; one a full-frame search already missed is sought in its region, not in every frame
        self._need_full = regions is not None and any(t.missed == 1 for t in self.tracker.tracks.values())
        if regions is not None:
            self.stats.inc("frames_region_detect")
        events = self._emit(changes, frame.index, latency, frame.media_s)
        t4 = time.monotonic()
        latency["postprocess"] = (t4 - t3) * 1000  # appearance, tracking, smoothing, sinks; known only after emitting
        latency["total"] = (t4 - frame.t_capture) * 1000
        self.stats.observe(latency)
        self.stats.inc("frames_processed")
        self.stats.inc("faces", len(r.detections))
        self.stats.tracks_active = len(self.tracker.tracks)
        # a track missed in this frame is drawn where it is predicted to be, not where it was last seen
        shown = [t if not t.missed else dataclasses.replace(t, box=t.predicted(frame.index))
                 for t in self.tracker.tracks.values()]
        self._last_view = (frame.index, frame.image, shown, frame.media_s)
        if self.annotate is not None:
            try:
                self.annotate.write(draw(frame.image, self._last_view[2]))
            except (ConfigError, OSError, cv2.error) as e:  # a disk or codec problem: stop annotating, go on
                log.warning("annotated video stopped: %s", e)
                self.stats.fault("annotate", f"annotated video stopped: {e}")
                self.annotate.close()
                self.annotate = None
        return events

    def _emit(self, changes, index: int, latency: dict, media_s: float | None) -> list[dict]:
        every = self.cfg.events.every
        events = []
        for kind, t in changes:
            # an end describes the whole track: its dominant emotion, that emotion's share, every share
            p = t.shares() if kind == "end" else t.smooth
            ev = Event(
                type=kind, device=self.device_id, ts=round(time.time(), 3), media_s=media_s, frame=index, track=t.id,
                box=[int(round(float(v))) for v in t.box], crop=[int(round(float(v))) for v in t.crop],
                det_score=round(t.score, 4), landmarks=landmark_list(t.landmarks),
                label=LABELS[int(np.argmax(p))], score=round(float(np.max(p)), 6),
                raw_label=LABELS[int(np.argmax(t.raw))], probs=_probs(p), raw=_probs(t.raw),
                first_frame=t.first_frame, last_frame=t.last_frame,
                latency_ms={k: round(v, 3) for k, v in latency.items()},
                summary=t.summary(LABELS) if kind == "end" else None).to_dict()
            self.stats.inc("events")
            delivered = kind != "update" or index % every == 0
            for s in self.sinks:  # one failing sink, or step, must not stop the frame, the others or the other step
                for step in (getattr(s, "observe", None), s.emit if delivered else None):
                    if step is None:
                        continue
                    try:
                        step(ev)
                    except Exception as e:
                        self._sink_failed(s, e)
            events.append(ev)
        return events

    def _sink_failed(self, sink, e: Exception):
        self.stats.inc("sink_errors")
        name, now = type(sink).__name__, time.monotonic()
        if now - self._sink_warned.get(name, -1e9) > 60:  # once a minute per sink, not per event
            self._sink_warned[name] = now
            log.warning("%s failed: %s", name, e)

    def shutdown(self):
        """Stop capture, close tracks (end events), flush sinks, publish offline, stop HTTP (the last sink)."""
        self.stats.set_health("stopping", "shutting down")
        sd_notify("STOPPING=1")
        self.watchdog.beat("main loop", doing="shutting down")
        self.capture.stop()
        self.capture.join(SHUTDOWN_JOIN_S)
        last = self._last_view
        self._emit(self.tracker.end_all(), last[0] if last else -1, {}, last[3] if last else None)
        self.stats.tracks_active = 0
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # one failing sink must not keep the others from flushing
                log.warning("closing %s failed: %s", type(s).__name__, e)
        if self.annotate is not None:
            self.annotate.close()
            log.info("annotated video: %s (%d frames)", self.annotate.path, self.annotate.frames)
        snap = self.stats.snapshot()
        secs = time.monotonic() - getattr(self, "_t_start", time.monotonic())
        fps = snap["frames_processed"] / secs if secs > 0 else 0.0
        log.info("stopped: %d frames read, %d processed, %d dropped in %.1f s = %.1f fps; mean ms: %s",
                 snap["frames_read"], snap["frames_processed"], snap["frames_dropped"], secs, fps,
                 " ".join(f"{k} {v:.2f}" for k, v in snap["latency_ms_mean"].items()))
        self.watchdog.stop()

    # --- /stream.mjpg ----------------------------------------------------------------------------
    def jpeg(self) -> bytes | None:
        view = self._last_view
        if view is None:
            return None
        if self._jpeg_cache[0] == view[0]:
            return self._jpeg_cache[1]
        jpg = cv2.imencode(".jpg", draw(view[1], view[2]), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        self._jpeg_cache = (view[0], jpg)
        return jpg


def _file_fps(path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if fps and 0 < fps <= 1000 else 0.0
