"""python -m edge_runtime: the facial-emotion camera daemon (see --help)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
import tomllib

from .backends import BackendError
from .cli import command
from .config import DEFAULTS, DETECTOR_SIZES, ConfigError, ascii_digits, build
from .detectors import DetectorError
from .manifest import ManifestError
from .outputs import OVERWRITE_HELP
from .packaged import DENSE, LIGHT, MODEL_CHOICES

DESCRIPTION = ("Facial-emotion camera daemon: reads a camera, stream, video file or image folder, finds faces, "
               "classifies each with an exported model (TFLite or ONNX, no TensorFlow) and emits per-face "
               "events as JSON Lines, over HTTP and MQTT.")
EXAMPLES = """\
examples:
  python -m edge_runtime --source 0
  python -m edge_runtime --source clip.mp4 --events events.jsonl
  python -m edge_runtime --artifacts artifacts/cbilstm --backend onnx --threads 2 --source 0
  python -m edge_runtime --profile devices/raspberry-pi-5.toml --config /etc/fer-edge/edge.toml \\
      --http 127.0.0.1:8080 --mqtt broker.local:1883

Settings are layered: built-in defaults < --profile < --config < flags. Unknown keys are errors.
exit codes: 0 done (end of file, --max-frames, SIGTERM/SIGINT); 1 the only output (stdout) was
closed; 2 bad configuration or model (sha256 mismatch, truncated file, missing runtime) — reported
before any camera is opened — or a file source that is not a video. SIGHUP reopens the events file.
A full disk, a lost or stalled camera or stream, a lost broker: health "degraded" (/healthz), it goes on.
Events are JSON Lines (new/update/end per face track); HTTP serves / (a live page), /healthz, /metrics,
/latest and /stream.mjpg; --ha-discovery announces the daemon to Home Assistant over MQTT.
"""


# The short flags, each the config key it sets: the parser and the config layer both derive from this one
# table; every other key is set with --set SECTION.KEY=VALUE (the config's own names, types and bounds).
FLAGS: dict[str, tuple[str, dict]] = {
    "--model": ("model.name", dict(choices=MODEL_CHOICES, help=(
        f"which model shipped in this package: auto (default) picks {DENSE} on CPUs with int8 dot products, "
        f"{LIGHT} on CPUs without them (a Raspberry Pi 4 or 3); the choice is logged and in /healthz"))),
    "--artifacts": ("model.artifacts", dict(metavar="DIR", help="instead, an exported model folder with "
                                                                "manifest.json (python -m export)")),
    "--backend": ("model.backend", dict(metavar="B", help="auto (int8 TFLite if LiteRT is installed, else ONNX) | "
                                                          "tflite | onnx | an artifact name such as onnx-fp32")),
    "--precision": ("model.precision", dict(metavar="P", help="restrict --backend to one precision: int8, fp32, ... "
                                                              "(as in the manifest)")),
    "--threads": ("model.threads", dict(type=int, metavar="N", help="inference, detector and OpenCV threads, "
                                                                    "1 .. the CPUs (default 1)")),
    "--source": ("source.uri", dict(metavar="SRC", help=(
        "camera index (0), /dev/videoN, picamera2[:N] (Raspberry Pi camera module), gst:PIPELINE (GStreamer, "
        "e.g. a Jetson CSI camera), video file, rtsp://... or image folder"))),
    "--loop": ("source.loop", dict(action="store_true", default=None,
                                   help="restart a file/folder at its end instead of exiting")),
    "--detector": ("detector.type", dict(choices=list(DETECTOR_SIZES),
                                         help="face detector (default yunet: shipped with the package)")),
    "--events": ("events.path", dict(metavar="FILE|-", help="JSON Lines events file, '-' for stdout (default)")),
    "--http": ("http.bind", dict(metavar="HOST:PORT", help="serve HTTP, e.g. 127.0.0.1:8080 (other hosts need "
                                                           "--token)")),
    "--token": ("http.token", dict(metavar="T", help="bearer token required by HTTP when bound beyond loopback")),
    "--mqtt-prefix": ("mqtt.prefix", dict(metavar="P", help=f"MQTT topic prefix (default {DEFAULTS['mqtt']['prefix']})")),
    "--device-id": ("mqtt.device_id", dict(metavar="ID", help=(
        "this daemon's id: topics <prefix>/<ID>/..., the Home Assistant device (default: host name + source, "
        "unique per camera)"))),
    "--ha-discovery": ("mqtt.discovery", dict(action="store_true", default=None, help=(
        "publish Home Assistant MQTT discovery configs (a device with emotion, faces and share sensors)"))),
    "--max-frames": ("run.max_frames", dict(type=int, metavar="N", help="stop after N processed frames")),
    "--annotate": ("run.annotate", dict(metavar="VIDEO", help=(
        "also write the processed frames with boxes, track ids, labels and probability bars to this .webm "
        "(plays in browsers), .mp4 or .avi"))),
    "--overwrite": ("run.overwrite", dict(action="store_true", default=None, help=OVERWRITE_HELP + " (--annotate)")),
    "--log-level": ("run.log_level", dict(choices=["debug", "info", "warning", "error"])),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_runtime", description=textwrap.fill(DESCRIPTION, 79),
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, (_, kw) in FLAGS.items():
        p.add_argument(flag, **kw)
    p.add_argument("--mqtt", metavar="HOST:PORT", help="publish events/stats/availability to this MQTT broker")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any other setting, by its config name (repeatable), e.g. --set detector.full_every=4 "
                        "--set tracker.max_missed=10 --set detector.yunet.score=0.5 (TOML values; text may go "
                        "unquoted)")
    p.add_argument("--config", metavar="TOML", help="config file (e.g. /etc/fer-edge/edge.toml)")
    p.add_argument("--profile", metavar="TOML", help="device profile, e.g. devices/raspberry-pi-5.toml")
    return p.parse_args(argv)


def _put(layer: dict, dotted: str, value, origin: str) -> None:
    *path, key = dotted.split(".")
    for part in path:
        layer = layer.setdefault(part, {})
        if not isinstance(layer, dict):
            raise ConfigError(f"{origin}: {dotted} is not a setting")
    if key in layer:
        raise ConfigError(f"{origin}: {dotted} is given twice")
    layer[key] = value


def _toml_value(text: str):
    """A --set value as TOML reads it (3, 0.5, true, "x", [..]); bare text stays text (a path, a URL)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def flags_to_layer(ns: argparse.Namespace) -> dict:
    """Only the flags actually given, shaped like a config file (build() checks keys, types and bounds)."""
    layer: dict[str, dict] = {}
    if ns.model is not None and ns.artifacts is not None:
        raise ConfigError("--model and --artifacts both name a model: give one (--artifacts replaces the packaged "
                          "model)")
    for flag, (dotted, _) in FLAGS.items():
        v = getattr(ns, flag.lstrip("-").replace("-", "_"))
        if v is not None:
            _put(layer, dotted, v, flag)
    if ns.mqtt:
        host, _, port = ns.mqtt.rpartition(":")
        if not host.strip("[]") or not ascii_digits(port):
            raise ConfigError(f"--mqtt {ns.mqtt!r} should be HOST:PORT (an IPv6 address in brackets)")
        _put(layer, "mqtt.host", host.strip("[]"), "--mqtt")
        _put(layer, "mqtt.port", int(port), "--mqtt")
    for item in ns.set:
        dotted, eq, text = item.partition("=")
        if not eq or "." not in dotted.strip() or not dotted.strip():
            raise ConfigError(f"--set {item!r} should be SECTION.KEY=VALUE, e.g. detector.full_every=4")
        _put(layer, dotted.strip(), _toml_value(text.strip()), f"--set {dotted.strip()}")
    return layer


# Ctrl-C before the loop runs (model load): one line, the shell's 130
@command("edge_runtime", bad_input=(ConfigError, ManifestError, BackendError, DetectorError, OSError))
def main(argv=None) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a log rotation while the model loads must not kill us
    ns = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = build(ns.profile, ns.config, flags_to_layer(ns))
    logging.getLogger().setLevel(cfg.run.log_level.upper())
    from .daemon import Daemon  # after config: a bad flag answers fast
    daemon = Daemon(cfg, read_files=[f for f in (ns.config, ns.profile) if f])
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    signal.signal(signal.SIGHUP, daemon.request_reopen)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
