"""python -m edge_runtime.mqtt_clean: list this toolkit's retained MQTT topics per device, and clear those of
a removed or renamed device (or the un-scoped topics of versions before device ids).

A broker keeps retained messages (availability, state, Home Assistant discovery configs) until someone
publishes an empty retained message to each topic; Home Assistant keeps showing a device until its
configs are cleared. This does that, for one device at a time, never for a device that is online.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time

from .cli import command, error
from .config import DEFAULTS, DEVICE_ID, ConfigError, ascii_digits, build
from .credentials import MQTT_ENV, CredentialsError, read_credentials
from .mqtt import TOPICS

EXAMPLES = """examples:
  python -m edge_runtime.mqtt_clean --mqtt broker.local:1883                    # list devices and topics
  python -m edge_runtime.mqtt_clean --mqtt broker.local:1883 --device pi-cam1   # clear a removed camera
  python -m edge_runtime.mqtt_clean --mqtt broker.local:1883 --legacy           # fer-edge/state etc. of old versions
  python -m edge_runtime.mqtt_clean --config /etc/fer-edge/edge.toml --device old-name --dry-run

Broker login and TLS come from --config's [mqtt] section (credentials_file, tls, ca_file, ...) or
$FER_EDGE_MQTT_CREDENTIALS, as for the daemon.

exit codes: 0 listed or cleared; 1 the broker could not be reached; 2 bad arguments, or a device that is
online (its daemon would publish it all again: stop it first, or --force)"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m edge_runtime.mqtt_clean", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mqtt", metavar="HOST:PORT", help="the broker (default: --config's [mqtt] host and port)")
    p.add_argument("--config", metavar="TOML", help="the daemon's config file: broker, login, TLS and prefixes")
    p.add_argument("--mqtt-prefix", metavar="P", help=f"topic prefix (default {DEFAULTS['mqtt']['prefix']})")
    p.add_argument("--discovery-prefix", metavar="P",
                   help=f"Home Assistant's discovery prefix (default {DEFAULTS['mqtt']['discovery_prefix']})")
    p.add_argument("--device", action="append", default=[], metavar="ID",
                   help="clear every retained topic of this device id (repeatable)")
    p.add_argument("--legacy", action="store_true",
                   help="clear the un-scoped <prefix>/state, /availability, ... of versions before device ids")
    p.add_argument("--force", action="store_true", help="clear a device even though it says it is online")
    p.add_argument("--dry-run", action="store_true", help="say what would be cleared, clear nothing")
    p.add_argument("--wait", type=float, default=2.0, metavar="S",
                   help="seconds to collect retained messages after subscribing (default 2)")
    return p.parse_args(argv)


def collect(client, topics: list[str], wait_s: float) -> dict[str, bytes]:
    """Retained messages on ``topics`` (wildcards allowed): topic -> payload."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload) if m.retain and m.payload else None
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe([(t, 1) for t in topics])
    if not subscribed.wait(10):
        raise ConnectionError("the broker did not confirm the subscription")
    time.sleep(wait_s)  # the broker sends retained messages right after the subscription
    return got


def by_device(retained: dict[str, bytes], prefix: str, disc: str) -> tuple[dict[str, list[str]], list[str]]:
    """Group this toolkit's retained topics per device id; the second list holds the un-scoped topics of
    versions before device ids. Only topics a daemon publishes count: ``<prefix>/<id>/<one of TOPICS>``
    with a valid id, ``<prefix>/<one of TOPICS>``, and discovery configs whose unique_id is ours;
    another integration's topics under the same prefixes are never listed, so never cleared."""
    devices: dict[str, list[str]] = {}
    for topic in sorted(retained):
        parts = topic.split("/")
        if topic.startswith(disc + "/") and len(parts) >= 4 and _ours(retained[topic], parts[-3]):
            devices.setdefault(parts[-3], []).append(topic)  # <disc>/sensor/<node>/<object>/config
    # a device's own topics count when its state is a daemon's or its discovery configs are ours
    ids = {t[len(prefix) + 1:].split("/")[0] for t in retained if t.startswith(prefix + "/")}
    for dev in sorted(ids):
        if DEVICE_ID.fullmatch(dev) and (dev in devices or _our_state(retained.get(f"{prefix}/{dev}/state"))):
            devices.setdefault(dev, []).extend(t for t in (f"{prefix}/{dev}/{n}" for n in TOPICS) if t in retained)
    legacy = [f"{prefix}/{n}" for n in TOPICS if f"{prefix}/{n}" in retained] \
        if _our_state(retained.get(f"{prefix}/state")) else []
    return devices, legacy


def _our_state(payload: bytes | None) -> bool:
    """A daemon's retained state (Stats.mood): faces, dominant and the shares."""
    try:
        d = json.loads(payload) if payload else None
    except ValueError:
        return False
    return isinstance(d, dict) and {"faces", "dominant"} <= set(d) and ("shares_pct" in d or "shares" in d)


def online(retained: dict[str, bytes], topics: list[str], prefix: str, dev: str) -> str | None:
    """The availability topic that says this device is online: its own, or one its discovery configs name."""
    avail = {f"{prefix}/{dev}/availability"}
    for t in topics:
        try:
            avail.add(str(json.loads(retained[t]).get("availability_topic", "")))
        except (ValueError, AttributeError):
            pass
    return next((a for a in sorted(avail) if retained.get(a) == b"online"), None)


def _ours(payload: bytes, node: str) -> bool:
    """A discovery config this toolkit published for ``node`` (other integrations' sensors share the prefix)."""
    try:
        return str(json.loads(payload).get("unique_id", "")).startswith(f"fer_edge_{node}_")
    except (ValueError, AttributeError):
        return False


PROG = "python -m edge_runtime.mqtt_clean"


def _broker(a):
    """The [mqtt] section the flags and --config give, checked (ConfigError)."""
    layer: dict = {"mqtt": {}}
    if a.mqtt:
        host, _, port = a.mqtt.rpartition(":")
        if not host.strip("[]") or not ascii_digits(port):
            raise ConfigError(f"--mqtt {a.mqtt!r} should be HOST:PORT")
        layer["mqtt"].update(host=host.strip("[]"), port=int(port))
    if a.mqtt_prefix:
        layer["mqtt"]["prefix"] = a.mqtt_prefix
    if a.discovery_prefix:
        layer["mqtt"]["discovery_prefix"] = a.discovery_prefix
    q = build(None, a.config, layer).mqtt
    if not q.host:
        raise ConfigError("no broker: give --mqtt HOST:PORT or a --config with [mqtt] host")
    if not (math.isfinite(a.wait) and 0 < a.wait <= 600):
        raise ConfigError("--wait must be a number of seconds in (0, 600]")
    bad = [d for d in a.device if not DEVICE_ID.fullmatch(d)]
    if bad:
        raise ConfigError(f"--device {bad[0]!r} is not a device id (1-64 letters, digits, _ or -)")
    return q


@command(PROG, bad_input=(ConfigError, CredentialsError))
def main(argv=None) -> int:
    a = parse_args(argv)
    q = _broker(a)
    login = read_credentials(q.credentials_file, MQTT_ENV, "mqtt.credentials_file")
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fer-edge-clean-{int(time.time())}")
    if login:
        client.username_pw_set(*login)
    if q.tls:
        client.tls_set(ca_certs=q.ca_file or None, certfile=q.cert_file or None, keyfile=q.key_file or None,
                       keyfile_password="")
    prefix, disc = q.prefix.rstrip("/"), q.discovery_prefix.rstrip("/")
    answer: dict = {}
    connected = threading.Event()

    def on_connect(c, u, flags, reason_code, properties=None):
        answer["reason"] = reason_code
        connected.set()
    client.on_connect = on_connect
    try:
        rc = client.connect(q.host, q.port, keepalive=30)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(mqtt.error_string(rc))
        client.loop_start()
        if not connected.wait(10):
            raise ConnectionError("no answer to the connection")
        if answer["reason"].is_failure:
            raise ConnectionError(f"connection refused ({answer['reason']})")
        retained = collect(client, [f"{prefix}/#", f"{disc}/sensor/+/+/config"], a.wait)
    except (OSError, ConnectionError) as e:
        error(PROG, f"broker {q.host}:{q.port}: {e}")
        return 1
    try:
        return _list_or_clear(a, client, retained, prefix, disc)
    finally:
        client.disconnect()
        client.loop_stop()


def _list_or_clear(a, client, retained: dict, prefix: str, disc: str) -> int:
    """Without --device/--legacy: list each device's retained topics; with them: clear those topics."""
    devices, legacy = by_device(retained, prefix, disc)
    # the availability topics the configs name (a device may publish under another prefix)
    named = {str(json.loads(retained[t]).get("availability_topic", "")) for ts in devices.values() for t in ts
             if t.startswith(disc + "/")} - set(retained) - {""}
    if named:
        retained.update(collect(client, sorted(named), min(a.wait, 1.0)))
    if not a.device and not a.legacy:
        for dev, topics in devices.items():
            state = retained.get(f"{prefix}/{dev}/availability", b"?").decode(errors="replace")
            print(f"{dev}: {state}, {len(topics)} retained topic(s)")
        if legacy:
            print(f"un-scoped topics of versions before device ids (--legacy clears them): {', '.join(legacy)}")
        if not devices and not legacy:
            print(f"no retained topics under {prefix}/ or {disc}/sensor/")
        return 0
    clear = list(legacy) if a.legacy else []
    for dev in a.device:
        live = online(retained, devices.get(dev, []), prefix, dev)
        if live and not a.force:
            raise ConfigError(f"device {dev} is online ({live}): its daemon would publish everything "
                              "again; stop it first (or --force)")
        if dev not in devices:
            print(f"device {dev}: no retained topics (known: {', '.join(devices) or 'none'})")
        clear += devices.get(dev, [])
    for topic in clear:
        print(("would clear " if a.dry_run else "clearing ") + topic)
        if not a.dry_run:
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    print(f"{len(clear)} retained topic(s) {'would be ' if a.dry_run else ''}cleared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
