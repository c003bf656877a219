"""Frame sources: what a source URI is, how it opens, and how it is shown without its password
(the capture thread that reads them: ``capture.py``).

A source is a camera (index or /dev/videoN), a Raspberry Pi camera module (``picamera2`` or
``picamera2:N``, through Picamera2/libcamera), a GStreamer pipeline (``gst:...``, e.g. a Jetson CSI
camera), a stream URL, a video file or a folder of images.
Live sources (cameras, streams) overwrite an unconsumed frame and count it as dropped, so the
pipeline always works on the newest picture; files and folders are read in full (back-pressure)
unless ``realtime`` is forced, which paces them at their FPS and drops like a camera.
Lost or unopenable sources put health to ``degraded`` and reconnect with capped exponential backoff.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2

from .config import ConfigError, ascii_digits
from .credentials import SOURCE_ENV as CREDENTIALS_ENV, CredentialsError, read_credentials

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


class SourceError(Exception):
    """A source that can never open on this machine (a missing library or build option): exit 2."""


def local_path(uri: str) -> str:
    """A file:// URI as the path it names (other sources unchanged)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlsplit
        return unquote(urlsplit(uri).path)
    return uri


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_SECRET_PARAM = re.compile(r"((?:^|[?&;\s,])(?:password|passwd|pwd|pass|user-pw|token|secret|key|auth)=)([^&;\s,\"']+)",
                           re.IGNORECASE)


def redact(uri: str) -> str:
    """A source as it may be shown (logs, /healthz, /metrics, MQTT, the page): a URL's userinfo and any
    password=/token=-like value, also inside a gst: pipeline, become ***."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", str(uri)))




def with_credentials(uri: str, credentials_file: str = "") -> str:
    """``uri`` with the user:password of ``credentials_file`` (its first line) or $FER_EDGE_SOURCE_CREDENTIALS
    put into its userinfo; unchanged when neither is given. Raises SourceError for an unreadable file
    or a source that is not a URL."""
    from urllib.parse import quote
    try:
        cred = read_credentials(credentials_file, CREDENTIALS_ENV, "source.credentials_file")
    except CredentialsError as e:
        raise SourceError(str(e)) from None
    if cred is None:
        return uri
    if "://" not in uri:
        raise SourceError("source credentials are given but the source is not a URL (rtsp://host/...)")
    user, password = cred
    scheme, _, rest = uri.partition("://")
    rest = rest.split("@", 1)[1] if "@" in rest.split("/", 1)[0] else rest  # the file's credentials win
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


def source_kind(uri: str) -> str:
    if uri.startswith("file://"):  # a local file, whatever its spelling: read once, never "reconnected"
        return "dir" if Path(local_path(uri)).is_dir() else "file"
    if ascii_digits(uri) or uri.startswith("/dev/video") or is_picamera(uri) or uri.startswith("gst:"):
        return "camera"
    if "://" in uri:
        return "stream"
    return "dir" if Path(uri).is_dir() else "file"


class ImageFolder:
    """cv2.VideoCapture look-alike over a folder of images (any size, gray, BGR or BGRA)."""

    def __init__(self, path: str):
        self.files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.i = 0

    def isOpened(self) -> bool:  # noqa: N802 - mirrors cv2.VideoCapture
        return bool(self.files)

    def read(self):
        while self.i < len(self.files):
            img = cv2.imread(str(self.files[self.i]), cv2.IMREAD_UNCHANGED)
            self.i += 1
            if img is not None:
                return True, img
            log.warning("skipping unreadable image %s", self.files[self.i - 1])
        return False, None

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def is_picamera(uri: str) -> bool:
    return uri == "picamera2" or (uri.startswith("picamera2:") and ascii_digits(uri[10:]))


PICAMERA_HINT = ("--source picamera2 needs Picamera2 (libcamera): on Raspberry Pi OS, sudo apt install "
                 "python3-picamera2 and make the venv with --system-site-packages (devices/install-pi.sh does both)")
GST_HINT = ("--source gst:... needs an OpenCV built with GStreamer, which the PyPI wheels are not: on a Jetson, "
            "use JetPack's python3-opencv in a venv made with --system-site-packages (devices/install-jetson.sh)")


MAX_CAMERA_INDEX = 255  # V4L2 numbers at most 256 video devices (/dev/video0..255)


def check_source(uri: str) -> None:
    """Fail now, with the fix, for a source this machine can never open (before any model loads). A
    camera that is merely absent now is not such a source: it is waited for, like an unplugged one."""
    if not uri.strip():
        raise SourceError("source is empty: give a camera index (0), a device, a file, a folder or a URL")
    camera = uri if ascii_digits(uri) else uri[len("/dev/video"):] if uri.startswith("/dev/video") else ""
    if ascii_digits(camera) and int(camera) > MAX_CAMERA_INDEX:
        raise SourceError(f"source {uri}: camera numbers are 0..{MAX_CAMERA_INDEX}; this one can never exist")
    if is_picamera(uri):
        try:
            import picamera2  # noqa: F401
        except ImportError:
            raise SourceError(PICAMERA_HINT) from None
    elif uri.startswith("gst:"):
        info = cv2.getBuildInformation()
        if not any(ln.split(":", 1)[1].strip().startswith("YES") for ln in info.splitlines()
                   if ln.strip().startswith("GStreamer:")):
            raise SourceError(GST_HINT)


class PicameraCapture:
    """cv2.VideoCapture look-alike over Picamera2 (the documented calls only: Picamera2(camera_num),
    create_video_configuration, configure, start, capture_array, stop, close). Frames are BGR: the
    "RGB888" format stores pixels in B, G, R order, as OpenCV expects."""

    def __init__(self, index: int, width: int = 0, height: int = 0, fps: float = 0.0):
        from picamera2 import Picamera2
        self.cam, self.fps = None, fps
        cam = None
        try:
            cam = Picamera2(index)
            main = {"format": "RGB888", **({"size": (int(width), int(height))} if width and height else {})}
            controls = {"FrameRate": float(fps)} if fps else {}
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
            self.cam = cam
        except Exception as e:  # no such camera, busy, or libcamera refused: lost like a USB camera
            log.warning("picamera2:%d cannot start: %s", index, e)
            if cam is not None:
                try:
                    cam.close()  # free the camera for the retry
                except Exception:
                    pass

    def isOpened(self) -> bool:  # noqa: N802 - mirrors cv2.VideoCapture
        return self.cam is not None

    def read(self):
        try:
            img = self.cam.capture_array("main")
        except Exception as e:  # the camera went away mid-stream
            log.warning("picamera2 capture failed: %s", e)
            return False, None
        return img is not None, img

    def get(self, prop):
        return float(self.fps) if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        if self.cam is not None:
            for step in (self.cam.stop, self.cam.close):
                try:
                    step()
                except Exception:  # closing a camera that already failed
                    pass
            self.cam = None


def open_source(uri: str, width: int = 0, height: int = 0, fps: float = 0.0, timeout_s: float = 5.0):
    """An opened capture object (may report not isOpened()); never raises for a missing device.
    A stream's open and each read give up after ``timeout_s`` (a server that stalls with its
    connection open would otherwise block the read for ever)."""
    kind = source_kind(uri)
    if kind == "dir":
        return ImageFolder(uri)
    if is_picamera(uri):
        return PicameraCapture(int(uri.partition(":")[2] or 0), width, height, fps)
    if uri.startswith("gst:"):
        return cv2.VideoCapture(uri[4:], cv2.CAP_GSTREAMER)
    if kind == "stream":
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    cap = cv2.VideoCapture(int(uri) if ascii_digits(uri) else uri)
    if kind == "camera" and cap.isOpened():
        for prop, v in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps)):
            if v:
                cap.set(prop, v)
    return cap


def source_uri(src) -> str:
    """The URI to open for the config's ``[source]`` section (``config.SourceConfig``), checked before
    anything starts, with its credentials applied; a source that cannot be is a ConfigError."""
    if src.uri.startswith("picamera2") and not is_picamera(src.uri):
        raise ConfigError(f"source {redact(src.uri)}: use picamera2 or picamera2:N with a camera number, "
                          "e.g. picamera2:1")
    if source_kind(src.uri) == "file" and not Path(str(local_path(src.uri))).exists():
        raise ConfigError(f"source {redact(src.uri)} does not exist")
    try:
        check_source(src.uri)
        return local_path(with_credentials(src.uri, src.credentials_file))
    except SourceError as e:
        raise ConfigError(str(e)) from None
