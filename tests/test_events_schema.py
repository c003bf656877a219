"""The events' JSON Schema is generated from the typed record, published in docs/, and real output obeys it."""
import json
import subprocess
import sys

import pytest

from edge_runtime.config import build
from edge_runtime.daemon import Daemon
from edge_runtime.events import EVENT_SCHEMA_VERSION, json_schema
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
        assert e["schema"] == EVENT_SCHEMA_VERSION and e["device"] == cfg_device(e)
    end = next(e for e in events if e["type"] == "end")
    # what schema version 1 wrote: shares as fractions under "shares", no media time
    old = {**end, "summary": {**{k: v for k, v in end["summary"].items() if k != "shares_pct"},
                              "shares": {k: v / 100 for k, v in end["summary"]["shares_pct"].items()}}}
    del old["media_s"]
    messages = " ".join(err.message for err in v.iter_errors(old))
    assert "'media_s' is a required property" in messages and "'shares_pct' is a required property" in messages


def cfg_device(event) -> str:
    """Without MQTT settings the device id is still the host name + source (events from several daemons merge)."""
    from edge_runtime.sinks import default_device_id
    return default_device_id("v.avi")
