"""Event sinks: the one ``Sink`` interface, JSON Lines (file, FIFO or stdout), and the daemon's id in
every sink (MQTT: ``mqtt.py``; HTTP: ``http.py``)."""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import sys
import threading
import time


log = logging.getLogger(__name__)


class Sink:
    """Where the daemon sends its events: ``observe`` sees every event (a view of the present: HTTP's
    /latest, MQTT's state), ``emit`` the ones delivered (updates thinned by ``events.every``),
    ``reopen`` on SIGHUP (log rotation), ``close`` at exit. A sink that fails raises; the daemon
    counts it and goes on with the others."""

    def observe(self, event: dict) -> None:
        """Nothing to keep by default."""

    def emit(self, event: dict) -> None:
        """Nothing to deliver by default."""

    def reopen(self) -> None:
        """Nothing to reopen by default (a network client reconnects by itself)."""

    def close(self) -> None:
        """Nothing to flush by default."""


class _TextOut:
    """A text stream without a file descriptor, written like a pipe (whole lines, flushed)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode())
        self.stream.flush()
        return len(data)

    def seekable(self) -> bool:
        return False

    def close(self):
        pass


class JsonlSink(Sink):
    """JSON Lines to a file (appended, one write per event), a FIFO, or stdout: whole lines or none.

    A failed write (a full disk) drops that event whole, counts it and degrades health until a write
    succeeds again; on a regular file (stdout redirected to one included) a short write is cut back,
    so the file stays valid JSON Lines. A FIFO never blocks the daemon: it is opened non-blocking (no
    reader yet: events are dropped, counted, and the open retried with each event), and an event that
    does not fit into a full pipe is dropped whole; a line the pipe took only in part is finished
    before any later event. A closed stdout pipe cannot come back: ``on_closed`` is called once and
    output stops. ``reopen()`` (SIGHUP) reopens the file after log rotation."""

    WARN_EVERY_S = 60.0  # a full disk logs once a minute, not once per event

    def __init__(self, path: str = "-", stats=None, on_closed=None):
        self.path, self.stats, self.on_closed = path, stats, on_closed
        self._own = path != "-"
        self._lock = threading.Lock()
        self._pending = b""  # the rest of a line a full FIFO took only in part
        self._failing, self._warned, self.closed = False, 0.0, False
        self._f = None
        try:
            self._f = self._open()
        except OSError as e:
            if not self._fifo:
                raise
            self._failed(e)  # a FIFO without a reader: retried with each event

    def _open(self):
        if not self._own:  # stdout, unbuffered, through the same checks as a file
            sys.stdout.flush()
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, ValueError, io.UnsupportedOperation):
                self._fifo = self._seekable = False
                return _TextOut(sys.stdout)  # stdout replaced in-process (an embedding app, a test)
            f = open(fd, "ab", buffering=0, closefd=False)
            self._fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        else:
            self._fifo = os.path.exists(self.path) and stat.S_ISFIFO(os.stat(self.path).st_mode)
            if self._fifo:  # O_NONBLOCK: open fails at once (ENXIO) without a reader instead of waiting
                f = open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK), "ab", buffering=0)
            else:
                f = open(self.path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing queued
        self._seekable = f.seekable()  # a file (cut back on failure) or a pipe/FIFO: asked once, not per event
        return f

    def emit(self, event: dict):
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.closed:
                return
            try:
                self._write(data)
            except BrokenPipeError:
                self._pipe_closed()
            except (OSError, ValueError) as e:  # ValueError: a file closed under us
                self._failed(e)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("events %s writable again", self._name())
                    if self.stats:
                        self.stats.fault("events", None)

    def _write(self, data: bytes):
        if self._f is None:  # opening failed earlier (rotation, a FIFO's reader): try again with each event
            self._f = self._open()
        if self._fifo:
            self._write_fifo(data)
            return
        if not self._seekable:  # a pipe (stdout): blocking writes, all or an error
            view = memoryview(data)
            while view:
                view = view[self._f.write(view):]
            return
        start = os.fstat(self._f.fileno()).st_size  # appends land at the end, wherever tell() points
        try:
            written = self._f.write(data)
            if written != len(data):  # a short write: the disk filled up mid-line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            try:
                self._f.truncate(start)  # no half line: the file stays valid JSON Lines
            except OSError:
                pass
            raise

    def _write_fifo(self, data: bytes):
        """Non-blocking: first the rest of a line begun earlier, then this event whole or not at all."""
        if self._pending:
            self._pending = self._pending[self._nb_write(self._pending):]
            if self._pending:
                raise OSError(errno.EAGAIN, "the events FIFO's reader is not reading")
        n = self._nb_write(data)
        if n == 0:
            raise OSError(errno.EAGAIN, "the events FIFO's reader is not reading")
        self._pending = data[n:]  # only a line longer than the pipe's atomic size can be taken in part

    def _nb_write(self, data: bytes) -> int:
        try:
            return self._f.write(data) or 0  # None: the write would block
        except BlockingIOError as e:
            return e.characters_written

    def _name(self) -> str:
        return "stdout" if not self._own else self.path

    def _failed(self, e: Exception):
        if self.stats:
            self.stats.inc("sink_errors")
            self.stats.inc("events_dropped")
            self.stats.fault("events", f"events {self._name()}: {getattr(e, 'strerror', None) or e}")
        now = time.monotonic()
        if not self._failing or now - self._warned > self.WARN_EVERY_S:
            log.warning("events %s: write failed (%s); events are dropped until it works again", self._name(), e)
            self._warned = now
        self._failing = True

    def _pipe_closed(self):
        self.closed = True
        try:  # later writes by the interpreter (its exit flush) must not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        if self.on_closed:
            self.on_closed(f"events output {self._name()} closed (broken pipe)")

    def reopen(self):
        """Close and reopen the events file (log rotation moved it); stdout needs nothing."""
        if not self._own or self.closed:
            return
        with self._lock:
            try:
                if self._f is not None:
                    self._f.close()
            except OSError:
                pass
            self._f = None
            try:
                self._f = self._open()
            except OSError as e:
                self._failed(e)
                return
        log.info("events file %s reopened", self.path)

    def close(self):
        with self._lock:
            if self._f is not None and not self.closed:
                try:
                    self._f.close()
                except OSError:
                    pass


def default_device_id(source: str, host: str | None = None) -> str:
    """This daemon's id when none is configured: the host name and what it watches, so two daemons on
    one host (two USB cameras, N RTSP streams, two files of one name) get two ids ('pi-cam0', 'pi-cam1',
    'nvr-lobby-cam-3f9a1c', 'vm-door-8b2e47'). Where the readable part could be shared (a file's stem,
    a stream's port, query or a long path), a hash of the whole source (without its password) follows."""
    import hashlib
    import os
    import socket
    from pathlib import PurePosixPath
    from urllib.parse import urlsplit

    def tag(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:6]
    src = str(source)
    extra = ""
    if src.isdigit():
        what = f"cam{src}"
    elif src.startswith("/dev/video"):
        what = f"cam{src[len('/dev/video'):]}"
    elif src.startswith("picamera2"):
        what = f"picam{src.partition(':')[2] or '0'}"
    elif src.startswith("gst:"):
        what = f"gst-{tag(src)}"
    elif "://" in src and not src.startswith("file://"):
        u = urlsplit(src)
        what = "-".join(filter(None, [u.hostname or "", *PurePosixPath(u.path).parts[1:]]))
        extra = tag(f"{u.scheme}://{u.hostname}:{u.port}{u.path}?{u.query}#{u.fragment}")
    else:
        path = src[len("file://"):] if src.startswith("file://") else src
        what, extra = PurePosixPath(path).stem or "source", tag(os.path.abspath(path))
    base = f"{host or socket.gethostname()}-{what}"
    return node_id(f"{base[:57]}-{extra}" if extra else base)


def node_id(client_id: str = "") -> str:
    """This daemon's id in discovery topics and unique ids: the client id, else the host name."""
    import re
    import socket
    return re.sub(r"[^A-Za-z0-9_-]", "_", client_id or socket.gethostname())[:64] or "fer_edge"
