"""Configuration: built-in defaults <- device profile <- config file <- command-line flags.

Each TOML table is a frozen dataclass below, and its fields are the keys it knows with their
defaults. Profiles (``devices/*.toml``), config files and flags are layers applied in that order,
each validated strictly: an unknown table or key, a value of the wrong type or outside its bounds
is one ``ConfigError`` line naming the layer it came from.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from .fields import FieldError, spec, spec_of
from .packaged import AUTO, MODEL_CHOICES

# the face detectors and the longer side of the frame each sees by default, px: the one list of their
# names (config choices, the CLIs' --detector, detectors.make_detector's registry all derive from it)
DETECTOR_SIZES = {"yunet": 512, "haar": 320}


DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a daemon's id: an MQTT topic level and part of HA unique ids


class ConfigError(ValueError):
    """A user-facing configuration problem (one line, exit code 2)."""


def max_threads() -> int:
    """The CPUs this process may use: the bound for every thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(n, what: str = "threads") -> int:
    """``n`` if it is a thread count this machine can run (1 .. its CPUs), else ValueError."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_threads():
        raise ValueError(f"{what} must be an integer in [1, {max_threads()}] (the CPUs available), got {n!r}")
    return n


def ascii_digits(s: str) -> bool:
    """Only 0-9: str.isdigit also accepts '²', which int() refuses."""
    return s.isascii() and s.isdigit()


# Keys that moved, so that an old config file gets told where its key lives now.
MOVED = {"detector.model": "detector.yunet.model", "detector.score": "detector.yunet.score",
         "detector.runtime": "detector.yunet.runtime"}


@dataclass(frozen=True)
class Section:
    """A TOML table: typed, bounded keys, checked however it is built (ConfigError); ``merged``
    applies a layer from a file or flags, ``to_dict`` gives it back."""
    table: ClassVar[str] = ""  # its name in messages: "detector", "detector.yunet"

    def __post_init__(self):
        for f in fields(self):
            value, where = getattr(self, f.name), f"{self.table}.{f.name}" if self.table else f.name
            default = f.default if f.default is not MISSING else f.default_factory()
            if isinstance(default, Section):
                if not isinstance(value, type(default)):
                    raise ConfigError(f"[{where}] must be a table ({type(default).__name__})")
                continue
            if f.name == "uri" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # camera = 0 in TOML
            try:
                value = spec_of(f).check(value, where)
            except FieldError as e:
                raise ConfigError(str(e)) from None
            object.__setattr__(self, f.name, value)  # as stored: int -> float, list -> tuple

    def check(self) -> None:
        """This section's rules across its own keys (ConfigError); one key's type and bounds are
        checked when it is built. ``config.check`` runs every section's, then the cross-section ones."""
        for f in fields(self):
            if isinstance(value := getattr(self, f.name), Section):
                value.check()

    def merged(self, layer: dict, origin: str = "config"):
        """A copy with ``layer`` (a TOML table's dict) applied; errors name ``origin``."""
        if not isinstance(layer, dict):
            raise ConfigError(f"{origin}: [{self.table}] must be a table")
        known = [f.name for f in fields(self)]
        changes = {}
        for key, value in layer.items():
            where = f"{self.table}.{key}" if self.table else key
            if key not in known:
                if where in MOVED:
                    raise ConfigError(f"{origin}: {where} is now {MOVED[where]} "
                                      f"([{MOVED[where].rpartition('.')[0]}] {key} = …)")
                what = f"key {where}" if self.table else f"section [{key}]"
                raise ConfigError(f"{origin}: unknown {what} (known: {', '.join(known)})")
            current = getattr(self, key)
            changes[key] = current.merged(value, origin) if isinstance(current, Section) else value
        try:
            return replace(self, **changes)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def from_dict(cls, layer: dict, origin: str = "config"):
        """The defaults with ``layer`` applied, as strictly as a config file."""
        return cls().merged(layer, origin)

    def to_dict(self) -> dict:
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), Section) else
                         list(v) if isinstance(v, tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class ModelConfig(Section):
    table: ClassVar[str] = "model"
    # which model shipped in the package: auto = by the CPU (edge_runtime/packaged.py)
    name: str = spec(AUTO, choices=MODEL_CHOICES)
    artifacts: str = ""           # instead, a folder holding manifest.json + model files (replaces name)
    backend: str = "auto"         # auto | tflite | onnx | an artifact name (e.g. "onnx-fp32")
    precision: str = ""           # "" = any, else the manifest's precision (int8, fp32, dr, int16x8, ...)
    threads: int = 1              # inference, detector and OpenCV threads: 1 .. the CPUs (checked at build)
    providers: tuple[str, ...] = ()  # onnxruntime providers in preference order; () = best available

    def check(self) -> None:
        try:
            check_threads(self.threads, "model.threads")
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class SourceConfig(Section):
    table: ClassVar[str] = "source"
    uri: str = "0"                # camera index, /dev/videoN, picamera2[:N], gst:..., file, rtsp://..., image folder
    loop: bool = False            # restart a file/folder at its end instead of exiting
    realtime: str = spec("auto", choices=("auto", "true", "false"))  # auto: cameras/streams drop stale frames
    width: int = spec(0, 0, 8192)     # camera capture request; 0 = driver default
    height: int = spec(0, 0, 8192)
    fps: float = spec(0.0, 0.0, 1000.0)
    reconnect_max_s: float = spec(30.0, 0.1, 3600.0)  # backoff cap when the source is lost
    # a live source with no new frame for this long is stalled: health degraded, a stream read reconnects
    stall_s: float = spec(5.0, 0.5, 3600.0)
    every: int = spec(1, 1, 100_000)  # analyse every Nth frame (frame indexes and media times stay the source's)
    # decode in a thread of its own, overlapping inference (a spare core's worth); false: in the main loop,
    # one thread per stream, for python -m edge_runtime.batch's workers, which each have one core
    decode_thread: bool = True
    # a file whose first line is user:password for a stream, so they need not be in the URI (ps, configs);
    # else $FER_EDGE_SOURCE_CREDENTIALS. Wherever the source is shown, credentials are redacted.
    credentials_file: str = ""


@dataclass(frozen=True)
class YuNetConfig(Section):
    table: ClassVar[str] = "detector.yunet"
    model: str = ""               # "" = the packaged yunet_n, or a path to a YuNet .onnx
    score: float = spec(0.4, 0.0, 1.0, open_lo=True, open_hi=True)  # score threshold
    runtime: str = spec("auto", choices=("auto", "onnxruntime", "opencv"))  # auto: onnxruntime, else OpenCV DNN


@dataclass(frozen=True)
class DetectorConfig(Section):
    table: ClassVar[str] = "detector"
    type: str = spec("yunet", choices=tuple(DETECTOR_SIZES))  # yunet: shipped model, 5 landmarks
    size: int = spec(0, 64, 4096, zero_ok=True)  # longer side of the frame it sees, px; 0 = yunet 512, haar 320
    min_size: int = spec(24, 1, 4096)             # smallest face, full-frame pixels
    max_faces: int = spec(32, 1, 256)
    # between full-frame detections, detect only around the live tracks' predicted boxes: a full frame
    # every `full_every` frames (1 = always), and whenever no face is tracked or a region search missed a face;
    # 8 and 0.5 chosen on validation videos by python -m benchmarks.regions (docs/pipeline.md)
    full_every: int = spec(8, 1, 1000)
    roi_margin: float = spec(0.5, 0.1, 5.0)  # a region: the predicted box grown by this share of its side, each way
    yunet: YuNetConfig = field(default_factory=YuNetConfig)


@dataclass(frozen=True)
class CropConfig(Section):
    table: ClassVar[str] = "crop"
    mode: str = spec("calibrated", choices=("calibrated", "manual"))  # calibrated: crops.json for the detector
    scale: float = spec(1.0, 0.3, 3.0)  # manual: crop side / box side
    dx: float = spec(0.0, -1.0, 1.0)    # manual: crop centre shift, fraction of the box side
    dy: float = spec(0.0, -1.0, 1.0)
    level: bool = False                    # manual: rotate so the eyes are level (yunet landmarks)


@dataclass(frozen=True)
class TrackerConfig(Section):
    table: ClassVar[str] = "tracker"
    iou: float = spec(0.3, 0.01, 1.0)  # a detection continues a track when IoU >= this
    smoothing: float = spec(0.6, 0.0, 1.0, open_hi=True)  # weight of the past in the probability EMA
    max_missed: int = spec(5, 0, 10_000)  # frames a track may go unseen before its `end` event
    appearance: float = spec(0.5, -1.0, 1.0)  # min thumbnail correlation to continue a track (-1 = off)


@dataclass(frozen=True)
class EventsConfig(Section):
    table: ClassVar[str] = "events"
    path: str = "-"                        # JSON Lines file or "-" (stdout)
    every: int = spec(1, 1, 1_000_000)  # an `update` event every N frames


@dataclass(frozen=True)
class HttpConfig(Section):
    table: ClassVar[str] = "http"
    bind: str = ""                # HOST:PORT; "" = off
    token: str = ""               # bearer token; required beyond loopback
    stream: bool = True           # serve /stream.mjpg
    timeout_s: float = spec(10.0, 0.5, 3600.0)  # a client with no complete request (or not reading) is dropped
    max_clients: int = spec(32, 1, 1024)
    # Host names a browser may use for a server without a token, beside loopback ones (DNS rebinding:
    # another site's page must not reach the camera through a name that resolves here)
    hosts: tuple = ()
    max_streams_per_client: int = spec(2, 1, 1024)  # /stream.mjpg viewers from one address at once
    max_per_client: int = spec(8, 1, 1024)  # connections from one address at once (slow ones included)

    def check(self) -> None:
        if self.token and not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", self.token):
            raise ConfigError("http.token may hold only letters, digits and -._~+/ (a bearer token, RFC 6750)")
        if self.bind:
            host, _, port = self.bind.rpartition(":")
            if not host or not ascii_digits(port) or not 0 <= int(port) < 65536:
                raise ConfigError(f"http.bind {self.bind!r} should be HOST:PORT with a port in [0, 65535]")
            if not _is_loopback(host) and not self.token:
                raise ConfigError(f"http.bind {self.bind} is not loopback: set --token (clients send Authorization: Bearer)")


@dataclass(frozen=True)
class MqttConfig(Section):
    table: ClassVar[str] = "mqtt"
    host: str = ""                # "" = off
    port: int = spec(1883, 1, 65535)
    prefix: str = "fer-edge"
    # this daemon's id under <prefix>/ and in Home Assistant; "" = the host name and the source
    # (sinks.default_device_id), so several daemons on one host and broker never mix their topics
    device_id: str = ""
    client_id: str = ""           # "" = fer-edge-<device id>
    stats_interval_s: float = spec(10.0, 0.5, 86_400.0)
    discovery: bool = False       # Home Assistant MQTT discovery configs (one device, its sensors)
    discovery_prefix: str = "homeassistant"
    # events kept while the broker is unreachable, published when it is back; beyond this the oldest
    # are dropped and counted (edge_events_dropped_total)
    queue: int = spec(1000, 0, 1_000_000)
    # broker login: a file whose first line is user:password, else $FER_EDGE_MQTT_CREDENTIALS (never a flag)
    credentials_file: str = ""
    tls: bool = False             # TLS to the broker (usually port 8883)
    ca_file: str = ""             # CA certificate(s) to trust; "" = the system's
    cert_file: str = ""           # client certificate and its key, for brokers that require one
    key_file: str = ""

    def check(self) -> None:
        for key in ("prefix", "discovery_prefix"):
            prefix = getattr(self, key)
            if (not prefix.strip("/") or any(c in prefix for c in "+#\0") or len(prefix) > 200 or prefix.startswith("$")
                    or not prefix.isprintable()):
                raise ConfigError(f"mqtt.{key} {prefix!r} must be a topic without wildcards (+, #) or control "
                                  "characters, not starting with $ (broker-reserved), 1-200 characters")
        if self.device_id and not DEVICE_ID.fullmatch(self.device_id):
            raise ConfigError(f"mqtt.device_id {self.device_id!r} must be 1-64 letters, digits, _ or -")
        if self.host and not _is_host(self.host):
            raise ConfigError("mqtt.host must be a host name or an IP address (no scheme, user or password: the "
                              "login goes in mqtt.credentials_file)")
        if (self.ca_file or self.cert_file or self.key_file) and not self.tls:
            raise ConfigError("mqtt.ca_file, cert_file and key_file need mqtt.tls = true")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("mqtt.cert_file and mqtt.key_file go together (a client certificate and its key)")
        for key in ("credentials_file", "ca_file", "cert_file", "key_file"):
            if getattr(self, key) and self.host and not Path(getattr(self, key)).is_file():
                raise ConfigError(f"mqtt.{key} {getattr(self, key)} is not a readable file")
        if len(self.client_id.encode()) > 64 or not self.client_id.isprintable():
            raise ConfigError(f"mqtt.client_id {self.client_id!r} must be printable and at most 64 bytes")


@dataclass(frozen=True)
class RunConfig(Section):
    table: ClassVar[str] = "run"
    max_frames: int = spec(0, 0, 10**12)  # 0 = no limit
    log_level: str = spec("info", choices=("debug", "info", "warning", "error"))
    annotate: str = ""            # write the processed frames, annotated, to this .mp4/.avi ("" = off)
    overwrite: bool = False       # let --annotate replace a file that no command of this toolkit wrote
    # a thread (main loop, capture) blocked longer than this ends the process (exit 1) and stops
    # systemd's watchdog pings; must exceed source.stall_s, the longest a stream's open or read may take
    watchdog_s: float = spec(30.0, 2.0, 3600.0)


@dataclass(frozen=True)
class Config(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    run: RunConfig = field(default_factory=RunConfig)


DEFAULTS: dict = Config().to_dict()  # the schema as plain data (docs, --help)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from None


def check(cfg: Config) -> Config:
    """Every section's own rules (``Section.check``), then the rules between sections."""
    cfg.check()
    if cfg.run.watchdog_s <= cfg.source.stall_s:
        raise ConfigError(f"run.watchdog_s ({cfg.run.watchdog_s:g}) must exceed source.stall_s "
                          f"({cfg.source.stall_s:g}): a stream's open or read may take that long")
    return cfg


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?", host)) and len(host) <= 253


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build(profile: str | None = None, config: str | None = None, flags: dict | None = None) -> Config:
    """defaults <- profile <- config file <- flags (a layer dict like a TOML file's)."""
    cfg = Config()
    if profile:
        cfg = cfg.merged(load_toml(profile), f"profile {profile}")
    if config:
        cfg = cfg.merged(load_toml(config), f"config {config}")
    if flags:
        cfg = cfg.merged(flags, "command line")
    return check(cfg)
