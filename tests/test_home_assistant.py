"""Home Assistant through MQTT discovery, against a real Mosquitto broker: the daemon publishes one
device with its sensors (retained), a JSON state that follows the faces, and publishes the configs
again when Home Assistant announces itself. No TensorFlow in the daemon."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.labels import LABELS
from edge_runtime.synthetic import make_video
from tests.conftest import SHARED
from tests.edge_support import mosquitto, no_tf_path, start_daemon, wait_for  # noqa: F401


class Listener:
    """Every message under the given topic filters, in arrival order, with the retain flag."""

    def __init__(self, host, port, *filters):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload, bool(m.retain)))
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe([(f, 1) for f in filters])
        self.c.connect(host, port)
        self.c.loop_start()
        assert ready.wait(10)

    def configs(self) -> dict[str, dict]:
        return {t: json.loads(p) for t, p, _ in self.msgs if t.endswith("/config")}

    def count(self, suffix: str) -> int:
        return sum(t.endswith(suffix) for t, _, _ in self.msgs)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def faces_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("ha") / "three.avi"
    make_video(path, SHARED, n_faces=3, frames=20, face=140, seed=11)
    return path


HA_SENSOR = json.loads((Path(__file__).parent / "data" / "ha_mqtt_sensor_2024.3.3.json").read_text())


def ha_sensor_schema_errors(config: dict) -> list[str]:
    """What Home Assistant 2024.3.3's MQTT sensor schema would refuse in a discovery payload (the keys
    vendored in tests/data: unknown keys, missing required ones, a device without an identifier)."""
    s, errors = HA_SENSOR["sensor"], []
    errors += [f"unknown key {k}" for k in config if k not in s["required"] + s["optional"]]
    errors += [f"missing {k}" for k in s["required"] if k not in config]
    errors += [f"both {a} and {b}" for a, b in s["exclusive"] if a in config and b in config]
    if "state_class" in config and config["state_class"] not in HA_SENSOR["state_class"]:
        errors.append(f"state_class {config['state_class']}")
    device = config.get("device", {})
    errors += [f"unknown device key {k}" for k in device if k not in HA_SENSOR["device"]["optional"]]
    if device and not any(device.get(k) for k in HA_SENSOR["device"]["one_of_required"]):
        errors.append("device without identifiers or connections")
    return errors


def test_the_vendored_schema_refuses_what_home_assistant_would():
    good = {"state_topic": "a/state", "name": "Faces", "unique_id": "u", "device": {"identifiers": ["x"]},
            "state_class": "measurement"}
    assert ha_sensor_schema_errors(good) == []
    assert ha_sensor_schema_errors({**good, "stat_topic": "typo"}) == ["unknown key stat_topic"]
    assert ha_sensor_schema_errors({k: v for k, v in good.items() if k != "state_topic"}) == ["missing state_topic"]
    assert ha_sensor_schema_errors({**good, "device": {"name": "d"}}) == ["device without identifiers or connections"]
    assert ha_sensor_schema_errors({**good, "state_class": "mean"}) == ["state_class mean"]


def test_discovery_configs_state_and_rediscovery(mosquitto, faces_video, no_tf_path, tmp_path):
    host, port = mosquitto
    run = uuid.uuid4().hex[:8]
    prefix, disc = f"fer-{run}", f"ha-{run}"  # this test's own topics on the shared broker
    (tmp_path / "edge.toml").write_text(f'[mqtt]\nstats_interval_s = 0.5\ndiscovery_prefix = "{disc}"\n'
                                        'client_id = "living room"\n')
    sub = Listener(host, port, f"{disc}/#", f"{prefix}/#")
    proc = start_daemon(no_tf_path, "--source", faces_video, "--loop", "--config", tmp_path / "edge.toml",
                        "--mqtt", f"{host}:{port}", "--mqtt-prefix", prefix, "--ha-discovery",
                        "--events", tmp_path / "ev.jsonl", stderr_path=tmp_path / "err")
    try:
        configs = wait_for(lambda: len(c := sub.configs()) == 2 + len(LABELS) and c, 60)
        node = "living_room"
        assert set(configs) == ({f"{disc}/sensor/{node}/{o}/config" for o in ("emotion", "faces")}
                                | {f"{disc}/sensor/{node}/share_{lab}/config" for lab in LABELS})
        ids = [c["unique_id"] for c in configs.values()]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"fer_edge_{node}_") for i in ids)
        for c in configs.values():
            assert {"name", "unique_id", "state_topic", "value_template", "availability_topic", "device"} <= set(c)
            assert c["state_topic"] == f"{prefix}/{node}/state"  # every topic under the device's own id
            assert c["availability_topic"] == f"{prefix}/{node}/availability"
            assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
            assert c["device"]["identifiers"] == [f"fer_edge_{node}"] and c["device"]["name"]
            assert c["value_template"].startswith("{{ value_json.")
        late = Listener(host, port, f"{disc}/#")  # a Home Assistant that connects later still finds them
        wait_for(lambda: len(late.configs()) == len(configs), 10)
        assert all(retain for t, _, retain in late.msgs) and late.configs() == configs
        late.close()
        for topic, c in configs.items():
            assert not ha_sensor_schema_errors(c), (topic, ha_sensor_schema_errors(c))
        shares = configs[f"{disc}/sensor/{node}/share_happy/config"]
        assert shares["unit_of_measurement"] == "%" and shares["value_template"] == "{{ value_json.shares_pct.happy }}"

        # the state follows the events: three faces in view, shares over the window add up to 100 %
        def state():
            states = [json.loads(p) for t, p, _ in sub.msgs if t == f"{prefix}/{node}/state"]
            return states and states[-1]["faces"] == 3 and states[-1]
        s = wait_for(state, 30)
        assert s["dominant"] in LABELS and abs(sum(s["shares_pct"].values()) - 100) < 0.5
        events = [json.loads(p) for t, p, _ in sub.msgs if t == f"{prefix}/{node}/events"]
        labels = {e["label"] for e in events if e["type"] != "end"}
        assert s["dominant"] in labels and {k for k, v in s["shares_pct"].items() if v > 0} <= labels
        assert sub.count(f"{prefix}/{node}/availability") >= 1

        # Home Assistant restarts and says so: the configs come again
        before = sub.count("/config")
        sub.c.publish(f"{disc}/status", "online", qos=1)
        wait_for(lambda: sub.count("/config") >= before + len(configs), 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        sub.close()
    assert rc == 0, (tmp_path / "err").read_text()
    (tmp_path / "discovery-payloads.json").write_text(json.dumps(configs, indent=1))  # kept with the test's outputs


def test_two_daemons_with_default_settings_on_one_host_keep_their_own_devices(mosquitto, no_tf_path, tmp_path):
    """One host, one broker, two cameras, nothing configured but the broker: each daemon has its own
    device id (host name + source), so its own topics and Home Assistant device; stopping one marks
    only that one offline, and the other's state keeps coming from its own frames only."""
    import socket

    from edge_runtime.sinks import default_device_id
    host, port = mosquitto
    one, three = tmp_path / "one.avi", tmp_path / "three.avi"
    make_video(one, SHARED, n_faces=1, frames=20, face=140, seed=21)
    make_video(three, SHARED, n_faces=3, frames=20, face=140, seed=22)
    ids = default_device_id(str(one)), default_device_id(str(three))
    assert ids[0] != ids[1] and ids[0].startswith(socket.gethostname()[:20].replace(".", "_"))
    sub = Listener(host, port, "fer-edge/#", "homeassistant/#")
    procs = [start_daemon(no_tf_path, "--source", video, "--loop", "--mqtt", f"{host}:{port}", "--ha-discovery",
                          "--events", tmp_path / f"ev{i}.jsonl", stderr_path=tmp_path / f"err{i}")
             for i, video in enumerate((one, three))]
    try:
        def states(dev):
            return [json.loads(p) for t, p, _ in sub.msgs if t == f"fer-edge/{dev}/state"]
        wait_for(lambda: any(s["faces"] == 1 for s in states(ids[0])) and any(s["faces"] == 3 for s in states(ids[1])),
                 60)
        configs = sub.configs()
        for dev in ids:  # each device's sensors read its own topics
            mine = [c for t, c in configs.items() if f"/{dev}/" in t]
            assert mine and all(c["state_topic"] == f"fer-edge/{dev}/state" for c in mine)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(15) == 0
        n = len(states(ids[0]))
        wait_for(lambda: len(states(ids[0])) > n + 2, 30)  # the other camera goes on
        avail = {t: p for t, p, _ in sub.msgs if t.endswith("/availability")}
        assert avail[f"fer-edge/{ids[1]}/availability"] == b"offline"
        assert avail[f"fer-edge/{ids[0]}/availability"] == b"online"
        assert {s["faces"] for s in states(ids[0])} <= {0, 1}  # never the three faces of the other camera
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
        sub.close()


def test_a_removed_devices_retained_topics_are_cleared_with_one_command(mosquitto, tmp_path):
    """mqtt_clean lists devices, clears one that is gone (and the un-scoped topics of old versions), refuses
    one that is online, and leaves other integrations' discovery configs alone."""
    import paho.mqtt.client as mqtt

    from edge_runtime.mqtt import discovery_configs
    host, port = mosquitto
    run = uuid.uuid4().hex[:8]
    prefix, disc = f"fer-{run}", f"ha-{run}"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(host, port)
    pub.loop_start()
    state = json.dumps({"faces": 0, "dominant": "none", "window_s": 60, "shares_pct": {}})
    retained = {f"{prefix}/state": json.dumps({"faces": 1, "dominant": "happy", "shares": {}}),  # before device ids
                f"{prefix}/availability": "offline",
                f"{prefix}/old-cam/availability": "offline", f"{prefix}/old-cam/state": state,
                f"{prefix}/live-cam/availability": "online", f"{prefix}/live-cam/state": state,
                # other integrations under the same prefixes: never listed, never cleared
                f"{prefix}/kitchen": "21.5", f"{prefix}/bridge/state": "online", f"{prefix}/bridge/info": "{}",
                f"{disc}/sensor/zigbee_lamp/power/config": json.dumps({"unique_id": "lamp_power", "state_topic": "z"}),
                f"{disc}/sensor/old-cam/power/config": json.dumps({"unique_id": "esphome_power", "state_topic": "z"})}
    for node in ("old-cam", "live-cam"):
        for topic, cfg in discovery_configs(f"{prefix}/{node}", disc, node, {}).items():
            retained[topic] = json.dumps(cfg)
    for topic, payload in retained.items():
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()

    def clean(*args):
        return subprocess.run([sys.executable, "-m", "edge_runtime.mqtt_clean", "--mqtt", f"{host}:{port}",
                               "--mqtt-prefix", prefix, "--discovery-prefix", disc, "--wait", "0.5", *args],
                              capture_output=True, text=True, timeout=60)
    r = clean()
    assert r.returncode == 0, r.stderr
    assert f"old-cam: offline, {2 + 2 + len(LABELS)} retained topic(s)" in r.stdout
    assert "live-cam: online" in r.stdout and "zigbee" not in r.stdout and f"{prefix}/state" in r.stdout
    r = clean("--device", "live-cam")
    assert r.returncode == 2 and "device live-cam is online" in r.stderr
    # under another prefix the device's own availability is not found, but its configs name it: refused
    r = clean("--device", "live-cam", "--mqtt-prefix", "typo")
    assert r.returncode == 2 and f"({prefix}/live-cam/availability)" in r.stderr
    r = clean("--device", "bridge")  # another integration's device under our prefix: not ours, nothing cleared
    assert "device bridge: no retained topics" in r.stdout and "0 retained topic(s) cleared" in r.stdout
    r = clean("--device", "#")
    assert r.returncode == 2 and "not a device id" in r.stderr
    r = clean("--device", "old-cam", "--dry-run")
    assert r.returncode == 0 and "would be cleared" in r.stdout
    r = clean("--device", "old-cam", "--legacy")
    assert r.returncode == 0 and f"{2 + 2 + len(LABELS) + 2} retained topic(s) cleared" in r.stdout, r.stdout
    after = clean().stdout
    assert "old-cam" not in after and f"{prefix}/state" not in after and "live-cam: online" in after
    left = Listener(host, port, f"{prefix}/#", f"{disc}/#")
    wait_for(lambda: len(left.msgs) >= 4, 10)
    topics = {t for t, _, _ in left.msgs}
    left.close()
    assert {f"{prefix}/kitchen", f"{prefix}/bridge/state", f"{prefix}/bridge/info",
            f"{disc}/sensor/old-cam/power/config"} <= topics
    sub = Listener(host, port, f"{disc}/#")  # the other integration's config is still there
    wait_for(lambda: any("zigbee_lamp" in t for t, _, _ in sub.msgs), 10)
    sub.close()
    r = subprocess.run([sys.executable, "-m", "edge_runtime.mqtt_clean", "--mqtt", "127.0.0.1:1", "--wait", "0.2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error: broker 127.0.0.1:1" in r.stderr
