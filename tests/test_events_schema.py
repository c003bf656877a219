"""The events' JSON Schema is generated from the typed record, published in docs/, and real output obeys it."""
import json
import subprocess
import sys

import pytest

from edge_runtime.config import DEVICE_ID, build
from edge_runtime.daemon import Daemon
from edge_runtime.events import EVENT_SCHEMA_VERSION, json_schema
from edge_runtime.sinks import default_device_id
from edge_runtime.synthetic import make_video

from .conftest import REPO, SHARED

jsonschema = pytest.importorskip("jsonschema")


def test_the_published_schema_is_the_generated_one():
    """docs/events.schema.json is output, not a second definition: regenerate it with the command below."""
    published = json.loads((REPO / "docs" / "events.schema.json").read_text())
    assert published == json_schema(), "run: python -m edge_runtime.events > docs/events.schema.json"
    r = subprocess.run([sys.executable, "-m", "edge_runtime.events"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and json.loads(r.stdout) == published
    jsonschema.Draft202012Validator.check_schema(published)


def test_real_events_obey_the_schema_and_a_wrong_one_does_not(tmp_path):
    video = tmp_path / "v.avi"
    make_video(video, SHARED, n_faces=2, frames=12, face=140, seed=4)
    cfg = build(flags={"source": {"uri": str(video)}, "events": {"path": str(tmp_path / "ev.jsonl")}})
    assert Daemon(cfg).run() == 0
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert {e["type"] for e in events} == {"new", "update", "end"}
    v = jsonschema.Draft202012Validator(json_schema())
    for e in events:
        errors = [err.message for err in v.iter_errors(e)]
        assert not errors, (e, errors)
        assert e["schema"] == EVENT_SCHEMA_VERSION and e["device"] == default_device_id(str(video))
    end = next(e for e in events if e["type"] == "end")
    # what schema version 1 wrote: shares as fractions under "shares", no media time
    old = {**end, "summary": {**{k: v for k, v in end["summary"].items() if k != "shares_pct"},
                              "shares": {k: v / 100 for k, v in end["summary"]["shares_pct"].items()}}}
    del old["media_s"]
    messages = " ".join(err.message for err in v.iter_errors(old))
    assert "'media_s' is a required property" in messages and "'shares_pct' is a required property" in messages


def test_media_time_keeps_rising_across_loops_of_a_file(tmp_path):
    """--loop: each pass continues from the end of the last (frame k at k / fps), so a track's duration in
    media seconds is right however many passes it spans."""
    video = tmp_path / "short.avi"
    make_video(video, SHARED, n_faces=1, frames=10, face=140, fps=15.0, seed=6)
    cfg = build(flags={"source": {"uri": str(video), "loop": True}, "run": {"max_frames": 25},
                       "events": {"path": str(tmp_path / "ev.jsonl")}})
    assert Daemon(cfg).run() == 0
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    frames = [e for e in events if e["type"] != "end"]
    assert [e["media_s"] for e in frames] == pytest.approx([k / 15 for k in range(25)], abs=1e-3)
    end = next(e for e in events if e["type"] == "end")
    assert end["summary"]["duration_s"] == pytest.approx(24 / 15, abs=1e-3)


def test_default_device_ids_differ_for_every_source_on_one_host():
    """The ids two daemons on one host get by default: never the same for two different sources."""
    sources = ["0", "1", "/dev/video2", "picamera2", "picamera2:1",
               "rtsp://10.0.0.5/cam/realmonitor?channel=1", "rtsp://10.0.0.5/cam/realmonitor?channel=2",
               "rtsp://cam.local:554/live", "rtsp://cam.local:8554/live",
               "rtsp://nvr.local/" + "x" * 80 + "/ch1", "rtsp://nvr.local/" + "x" * 80 + "/ch2",
               "/data/a/door.avi", "/data/b/door.avi", "gst:v4l2src ! videoconvert", "gst:nvarguscamerasrc ! x"]
    ids = [default_device_id(s, host="pi") for s in sources]
    assert len(set(ids)) == len(ids), ids
    assert all(DEVICE_ID.fullmatch(i) for i in ids)
    assert ids[:2] == ["pi-cam0", "pi-cam1"]  # cameras keep their short, readable ids
    # the password is not part of the id: the same stream with other credentials is the same device
    assert default_device_id("rtsp://a:1@cam.local:554/live", "pi") == default_device_id("rtsp://cam.local:554/live", "pi")
