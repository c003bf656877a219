"""Configuration: built-in defaults <- device profile <- config file <- command-line flags.

Profiles (``devices/*.toml``) and config files share one TOML schema, validated strictly:
an unknown section or key, or a value of the wrong type, is one clear ``ConfigError`` line.
"""
from __future__ import annotations

import copy
import ipaddress
import os
import re
import tomllib
from pathlib import Path

# Every key the daemon knows, with its default; the default's type is the key's type.
DEFAULTS: dict[str, dict] = {
    "model": {
        "artifacts": "",          # folder holding manifest.json + model files; "" = the packaged default
        "backend": "auto",        # auto | tflite | onnx | an artifact name (e.g. "onnx-fp32")
        "precision": "",          # "" = any, else the manifest's precision (int8, fp32, dr, int16x8, ...)
        "threads": 1,
        "providers": [],          # onnxruntime providers in preference order; [] = best available
    },
    "source": {
        "uri": "0",               # camera index, /dev/videoN, file, rtsp://..., or an image folder
        "loop": False,            # restart a file/folder at its end instead of exiting
        "realtime": "auto",       # auto: cameras/streams drop stale frames, files are read in full
        "width": 0, "height": 0, "fps": 0.0,  # camera capture request; 0 = driver default
        "reconnect_max_s": 30.0,  # backoff cap when the source is lost
        "stall_s": 5.0,           # a live source with no new frame for this long is stalled: health degraded,
                                  # and a stream read gives up and reconnects
    },
    "detector": {
        "type": "yunet",          # yunet (shipped model, 5 landmarks) | haar
        "size": 0,                # longer side of the frame the detector sees, px; 0 = yunet 512, haar 320
        "min_size": 24,           # smallest face, full-frame pixels
        "max_faces": 32,
        "model": "",              # yunet: "" = the packaged yunet_n, or a path to a YuNet .onnx
        "score": 0.4,             # yunet score threshold
        "runtime": "auto",        # yunet: auto (onnxruntime, else OpenCV DNN) | onnxruntime | opencv
    },
    "crop": {
        "mode": "calibrated",     # calibrated: the crop fitted for the detector (crops.json) | manual
        "scale": 1.0,             # manual: crop side / box side
        "dx": 0.0, "dy": 0.0,     # manual: crop centre shift, fraction of the box side
        "level": False,           # manual: rotate so the eyes are level (yunet landmarks)
    },
    "tracker": {
        "iou": 0.3,               # a detection continues a track when IoU >= this
        "smoothing": 0.6,         # weight of the past in the probability EMA (0 = no smoothing)
        "max_missed": 5,          # frames a track may go unseen before its `end` event
        "appearance": 0.5,        # min thumbnail correlation for a detection to continue a track (-1 = off)
    },
    "events": {"path": "-", "every": 1},  # JSON Lines file or "-" (stdout); `update` every N frames
    # timeout_s: a client that sends no complete request (or stops reading) for this long is dropped
    "http": {"bind": "", "token": "", "stream": True, "timeout_s": 10.0, "max_clients": 32},
    # discovery: Home Assistant MQTT discovery configs under discovery_prefix (one device, its sensors)
    "mqtt": {"host": "", "port": 1883, "prefix": "fer-edge", "client_id": "", "stats_interval_s": 10.0,
             "discovery": False, "discovery_prefix": "homeassistant"},
    "run": {"max_frames": 0, "log_level": "info",
            "annotate": ""},              # write the processed frames, annotated, to this .mp4/.avi ("" = off)
}


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


class ConfigError(Exception):
    """A user-facing configuration problem (one line, exit code 2)."""


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str) or (default == "0" and isinstance(value, int))


def merge(base: dict, layer: dict, origin: str) -> dict:
    """Validate ``layer`` against the schema and apply it over ``base`` (returns a new dict)."""
    out = copy.deepcopy(base)
    for section, values in layer.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(DEFAULTS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{origin}: unknown key {section}.{key} "
                                  f"(known: {', '.join(DEFAULTS[section])})")
            default = DEFAULTS[section][key]
            if not _type_ok(default, value):
                raise ConfigError(f"{origin}: {section}.{key} = {value!r} should be {type(default).__name__}")
            out[section][key] = float(value) if isinstance(default, float) else value
    return out


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None


# Every number a file or flag can set, bounded (inclusive); NaN fails every bound.
BOUNDS = {
    ("source", "width"): (0, 8192), ("source", "height"): (0, 8192), ("source", "fps"): (0.0, 1000.0),
    ("source", "reconnect_max_s"): (0.1, 3600.0), ("source", "stall_s"): (0.5, 3600.0),
    ("http", "timeout_s"): (0.5, 3600.0), ("http", "max_clients"): (1, 1024),
    ("detector", "size"): (0, 4096), ("detector", "min_size"): (1, 4096), ("detector", "max_faces"): (1, 256),
    ("crop", "scale"): (0.3, 3.0), ("crop", "dx"): (-1.0, 1.0), ("crop", "dy"): (-1.0, 1.0),
    ("tracker", "iou"): (0.01, 1.0), ("tracker", "max_missed"): (0, 10_000), ("tracker", "appearance"): (-1.0, 1.0),
    ("events", "every"): (1, 1_000_000), ("mqtt", "port"): (1, 65535), ("mqtt", "stats_interval_s"): (0.5, 86_400.0),
    ("run", "max_frames"): (0, 10**12),
}
CHOICES = {("source", "realtime"): ("auto", "true", "false"), ("crop", "mode"): ("calibrated", "manual"),
           ("run", "log_level"): ("debug", "info", "warning", "error")}


def check(cfg: dict) -> dict:
    """Cross-field rules a single key's type cannot express."""
    try:
        check_threads(cfg["model"]["threads"], "model.threads")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for (section, key), (lo, hi) in BOUNDS.items():
        v = cfg[section][key]
        if not lo <= v <= hi:  # also false for NaN
            raise ConfigError(f"{section}.{key} = {v!r} must be in [{lo}, {hi}]")
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{section}.{key} = {cfg[section][key]!r} must be one of {', '.join(allowed)}")
    d = cfg["detector"]
    if d["size"] and d["size"] < 64:
        raise ConfigError("detector.size must be 0 (the detector's default) or in [64, 4096]")
    if not 0.0 < d["score"] < 1.0:
        raise ConfigError("detector.score must be in (0, 1)")
    if not 0.0 <= cfg["tracker"]["smoothing"] < 1.0:
        raise ConfigError("tracker.smoothing must be in [0, 1)")
    for key in ("prefix", "discovery_prefix"):
        prefix = cfg["mqtt"][key]
        if not prefix.strip("/") or any(c in prefix for c in "+#\0") or len(prefix) > 200 or prefix.startswith("$"):
            raise ConfigError(f"mqtt.{key} {prefix!r} must be a topic without wildcards (+, #), not starting "
                              "with $ (broker-reserved), 1-200 characters")
    cid = cfg["mqtt"]["client_id"]
    if len(cid.encode()) > 64 or not cid.isprintable():
        raise ConfigError(f"mqtt.client_id {cid!r} must be printable and at most 64 bytes")
    token = cfg["http"]["token"]
    if token and not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", token):
        raise ConfigError("http.token may hold only letters, digits and -._~+/ (a bearer token, RFC 6750)")
    bind = cfg["http"]["bind"]
    if bind:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"http.bind {bind!r} should be HOST:PORT with a port in [0, 65535]")
        if not _is_loopback(host) and not cfg["http"]["token"]:
            raise ConfigError(f"http.bind {bind} is not loopback: set --token (clients send Authorization: Bearer)")
    return cfg


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build(profile: str | None = None, config: str | None = None, flags: dict | None = None) -> dict:
    """defaults <- profile <- config file <- flags (a layer dict like a TOML file's)."""
    cfg = copy.deepcopy(DEFAULTS)
    if profile:
        cfg = merge(cfg, load_toml(profile), f"profile {profile}")
    if config:
        cfg = merge(cfg, load_toml(config), f"config {config}")
    if flags:
        cfg = merge(cfg, flags, "command line")
    return check(cfg)
