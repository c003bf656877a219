"""python -m edge_runtime: the facial-emotion camera daemon (see --help)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap

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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_runtime", description=textwrap.fill(DESCRIPTION, 79),
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", choices=MODEL_CHOICES, help="which model shipped in this package: auto (default) picks "
                                             f"{DENSE} on CPUs with int8 dot products, {LIGHT} on CPUs without them "
                                             "(a Raspberry Pi 4 or 3); the choice is logged and in /healthz")
    a("--artifacts", metavar="DIR", help="instead, an exported model folder with manifest.json (python -m export)")
    a("--backend", metavar="B", help="auto (int8 TFLite if LiteRT is installed, else ONNX) | tflite | onnx | "
                                     "an artifact name such as onnx-fp32")
    a("--precision", metavar="P", help="restrict --backend to one precision: int8, fp32, ... (as in the manifest)")
    a("--threads", type=int, metavar="N", help="inference, detector and OpenCV threads, 1 .. the CPUs (default 1)")
    a("--source", metavar="SRC", help="camera index (0), /dev/videoN, picamera2[:N] (Raspberry Pi camera module), "
                                      "gst:PIPELINE (GStreamer, e.g. a Jetson CSI camera), video file, rtsp://... "
                                      "or image folder")
    a("--loop", action="store_true", default=None, help="restart a file/folder at its end instead of exiting")
    a("--detector", choices=list(DETECTOR_SIZES), help="face detector (default yunet: shipped with the package)")
    a("--config", metavar="TOML", help="config file (e.g. /etc/fer-edge/edge.toml)")
    a("--profile", metavar="TOML", help="device profile, e.g. devices/raspberry-pi-5.toml")
    a("--events", metavar="FILE|-", help="JSON Lines events file, '-' for stdout (default)")
    a("--http", metavar="HOST:PORT", help="serve HTTP, e.g. 127.0.0.1:8080 (other hosts need --token)")
    a("--token", metavar="T", help="bearer token required by HTTP when bound beyond loopback")
    a("--mqtt", metavar="HOST:PORT", help="publish events/stats/availability to this MQTT broker")
    a("--mqtt-prefix", metavar="P", help=f"MQTT topic prefix (default {DEFAULTS['mqtt']['prefix']})")
    a("--device-id", metavar="ID", help="this daemon's id: topics <prefix>/<ID>/..., the Home Assistant device "
                                        "(default: host name + source, unique per camera)")
    a("--ha-discovery", action="store_true", default=None,
      help="publish Home Assistant MQTT discovery configs (a device with emotion, faces and share sensors)")
    a("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    a("--annotate", metavar="VIDEO", help="also write the processed frames with boxes, track ids, labels and "
                                          "probability bars to this .webm (plays in browsers), .mp4 or .avi")
    a("--overwrite", action="store_true", default=None, help=OVERWRITE_HELP + " (--annotate)")
    a("--log-level", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def flags_to_layer(ns: argparse.Namespace) -> dict:
    """Only the flags actually given, shaped like a config file."""
    table = {"model": ("model", "name"), "artifacts": ("model", "artifacts"), "backend": ("model", "backend"),
             "precision": ("model", "precision"), "threads": ("model", "threads"),
             "source": ("source", "uri"), "loop": ("source", "loop"), "detector": ("detector", "type"),
             "events": ("events", "path"), "http": ("http", "bind"), "token": ("http", "token"),
             "mqtt_prefix": ("mqtt", "prefix"), "device_id": ("mqtt", "device_id"),
             "ha_discovery": ("mqtt", "discovery"), "max_frames": ("run", "max_frames"),
             "log_level": ("run", "log_level"), "annotate": ("run", "annotate"), "overwrite": ("run", "overwrite")}
    layer: dict[str, dict] = {}
    for attr, (section, key) in table.items():
        v = getattr(ns, attr)
        if v is not None:
            layer.setdefault(section, {})[key] = v
    if ns.mqtt:
        host, _, port = ns.mqtt.rpartition(":")
        if not host.strip("[]") or not ascii_digits(port):
            raise ConfigError(f"--mqtt {ns.mqtt!r} should be HOST:PORT (an IPv6 address in brackets)")
        layer.setdefault("mqtt", {}).update(host=host.strip("[]"), port=int(port))
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
