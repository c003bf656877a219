"""The daemon under faults: a full disk, a closed stdout, log rotation, a stalled stream, slow HTTP
clients, a failing sink, and configuration errors that systemd must not restart. Real video files
through OpenCV, a real MJPEG server over TCP, the real systemd unit's settings, no TensorFlow."""
from __future__ import annotations

import configparser
import json
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from edge_runtime import config
from edge_runtime.config import ConfigError
from edge_runtime.synthetic import make_video
from tests.conftest import REPO, SHARED
from tests.edge_support import (daemon_cmd, daemon_env, free_port, no_tf_path,  # noqa: F401
                                read_events, wait_for)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "two.avi"
    make_video(path, SHARED, n_faces=2, frames=10, face=140, seed=5)
    return path


def popen(no_tf, *args, stdout=subprocess.DEVNULL, stderr_path=None):
    err = open(stderr_path, "w") if stderr_path else subprocess.PIPE
    return subprocess.Popen(daemon_cmd(*args), env=daemon_env(no_tf), cwd=REPO, stdout=stdout, stderr=err)


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())
    except OSError:
        return {}


def metric(port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith(f"edge_{name}_total ")))


def stop(proc, timeout=10) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def test_full_disk_for_events_degrades_health_and_the_daemon_goes_on(video, no_tf_path, tmp_path):
    port = free_port()
    proc = popen(no_tf_path, "--source", video, "--loop", "--events", "/dev/full", "--http", f"127.0.0.1:{port}",
                 stderr_path=tmp_path / "err")
    try:
        h = wait_for(lambda: (x := health(port)).get("status") == "degraded" and x, 60)
        assert "No space left on device" in h["reason"]
        n = metric(port, "frames_processed")
        wait_for(lambda: metric(port, "frames_processed") > n + 20, 30)  # still working
        assert metric(port, "sink_errors") > 0
    finally:
        rc = stop(proc)
    err = (tmp_path / "err").read_text()
    assert rc == 0 and "Traceback" not in err, err
    assert err.count("write failed") == 1  # once a minute, not once per event


def test_sighup_reopens_the_events_file_after_rotation(video, no_tf_path, tmp_path):
    events = tmp_path / "ev.jsonl"
    proc = popen(no_tf_path, "--source", video, "--loop", "--events", events, stderr_path=tmp_path / "err")
    try:
        wait_for(lambda: events.is_file() and events.stat().st_size > 0, 60)
        rotated = events.rename(tmp_path / "ev.jsonl.1")
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: events.is_file() and len(read_events(events)) > 5, 30)
    finally:
        rc = stop(proc)
    assert rc == 0, (tmp_path / "err").read_text()
    old, new = read_events(rotated), read_events(events)  # both whole JSON Lines files
    assert old and new and new[-1]["type"] == "end"
    assert "reopened" in (tmp_path / "err").read_text()


def test_a_closed_stdout_stops_the_daemon_with_one_line(video, no_tf_path, tmp_path):
    proc = popen(no_tf_path, "--source", video, "--loop", "--events", "-", stdout=subprocess.PIPE,
                 stderr_path=tmp_path / "err")
    json.loads(proc.stdout.readline())  # the reader takes one event and goes away (as `| head -1` does)
    proc.stdout.close()
    rc = proc.wait(30)
    err = (tmp_path / "err").read_text()
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert lines == ["edge_runtime: error: events output stdout closed (broken pipe)"], err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_a_closed_stdout_with_http_serving_only_degrades(video, no_tf_path, tmp_path):
    port = free_port()
    proc = popen(no_tf_path, "--source", video, "--loop", "--events", "-", "--http", f"127.0.0.1:{port}",
                 stdout=subprocess.PIPE, stderr_path=tmp_path / "err")
    try:
        proc.stdout.readline()
        proc.stdout.close()
        h = wait_for(lambda: (x := health(port)).get("status") == "degraded" and x, 30)
        assert "broken pipe" in h["reason"] and proc.poll() is None
    finally:
        rc = stop(proc)
    assert rc == 0, (tmp_path / "err").read_text()


class _StallingMjpeg(BaseHTTPRequestHandler):
    """An MJPEG camera over HTTP that sends `frames` frames per connection, then stalls with the
    connection open (the case a TCP keepalive cannot see)."""
    frames = 15
    jpg = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
    connections = 0

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        type(self).connections += 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for _ in range(self.frames):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self.jpg)
                                 + self.jpg + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            time.sleep(60)
        except OSError:
            pass


def test_a_stalled_stream_degrades_health_then_reconnects(no_tf_path, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallingMjpeg)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
    (tmp_path / "edge.toml").write_text("[source]\nstall_s = 1.5\n")
    port = free_port()
    proc = popen(no_tf_path, "--source", url, "--config", tmp_path / "edge.toml", "--events", tmp_path / "ev.jsonl",
                 "--http", f"127.0.0.1:{port}", stderr_path=tmp_path / "err")
    try:
        wait_for(lambda: health(port).get("status") == "ok", 60)
        h = wait_for(lambda: (x := health(port)).get("status") == "degraded" and x, 20)
        assert "stalled" in h["reason"] or "source lost" in h["reason"]
        wait_for(lambda: _StallingMjpeg.connections >= 2, 20)  # the read gave up and it reconnected
        assert metric(port, "reconnects") >= 1
    finally:
        t0 = time.monotonic()
        rc = stop(proc)
        server.shutdown()
    err = (tmp_path / "err").read_text()
    assert rc == 0 and time.monotonic() - t0 < 5 and "Traceback" not in err, err
    assert "stalled: no frame for" in err


def test_slow_clients_are_timed_out_and_capped():
    from edge_runtime.http import HttpServer
    from edge_runtime.stats import Stats
    stats = Stats()
    stats.set_health("ok")
    srv = HttpServer("127.0.0.1:0", stats, timeout_s=1.0, max_clients=8)
    port = int(srv.address.rsplit(":", 1)[1])
    socks = []
    try:
        for _ in range(30):  # request headers that never finish
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        wait_for(lambda: stats.counters["http_refused"] >= 22, 5)
        time.sleep(1.5)
        answers = [s.recv(4096) for s in socks]  # every one of them is closed by the server by now
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 22  # the refused ones are told so
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
        assert all(s.recv(10) == b"" for s in socks)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_an_ipv6_loopback_bind_serves():
    from edge_runtime.http import HttpServer
    from edge_runtime.stats import Stats
    stats = Stats()
    stats.set_health("ok")
    srv = HttpServer("[::1]:0", stats)
    try:
        port = int(srv.address.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        srv.close()


def test_a_client_that_drips_its_headers_is_cut_off_at_the_deadline():
    """The socket timeout is per read; a byte now and then must not hold a slot for ever."""
    from edge_runtime.http import HttpServer
    from edge_runtime.stats import Stats
    stats = Stats()
    stats.set_health("ok")
    srv = HttpServer("127.0.0.1:0", stats, timeout_s=1.0, max_clients=2)
    port = int(srv.address.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0, closed = time.monotonic(), False
        while time.monotonic() - t0 < 4:
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                closed = True
                break
            s.settimeout(0.3)
            try:
                if s.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed and time.monotonic() - t0 < 2.5, time.monotonic() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200  # the slot is free again
    finally:
        s.close()
        srv.close()


def test_a_broker_that_is_down_degrades_health(video, no_tf_path, tmp_path):
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    proc = popen(no_tf_path, "--source", video, "--loop", "--events", tmp_path / "ev.jsonl", "--http",
                 f"127.0.0.1:{port}", "--mqtt", f"127.0.0.1:{dead}", stderr_path=tmp_path / "err")
    try:
        h = wait_for(lambda: (x := health(port)).get("status") == "degraded" and x, 60)
        assert f"MQTT broker 127.0.0.1:{dead}" in h["reason"]
    finally:
        rc = stop(proc)
    err = (tmp_path / "err").read_text()
    assert rc == 0 and "Traceback" not in err, err
    assert err.count("events are not published until it is back") == 1  # once, not per retry


def test_a_failing_sink_does_not_stop_the_others(video, tmp_path, caplog):
    from edge_runtime.daemon import Daemon
    from edge_runtime.sinks import JsonlSink, Sink

    class Broken(Sink):
        def emit(self, event):
            raise RuntimeError("sink down")

        def close(self):
            raise RuntimeError("sink down")

    cfg = config.build(flags={"source": {"uri": str(video)}, "events": {"path": str(tmp_path / "ev.jsonl")},
                              "run": {"max_frames": 4}})
    d = Daemon(cfg)
    d.sinks.insert(0, Broken())
    assert d.run() == 0
    events = read_events(tmp_path / "ev.jsonl")
    assert events and events[-1]["type"] == "end"  # the JSONL sink got everything and was closed
    assert "sink down" in caplog.text and d.stats.counters["sink_errors"] > 0
    assert isinstance(d.sinks[1], JsonlSink)


def test_a_sink_s_failing_view_does_not_cost_it_its_events_and_a_plain_emit_object_is_a_sink(video, tmp_path):
    """observe (the view of the present) and emit (delivery) are separate steps: one failing does not
    skip the other; an object with only emit/close (the interface before observe) still gets every event."""
    from edge_runtime.daemon import Daemon
    from edge_runtime.sinks import Sink

    class BlindView(Sink):
        def __init__(self):
            self.got = []

        def observe(self, event):
            raise RuntimeError("view down")

        def emit(self, event):
            self.got.append(event)

    class Plain:  # duck-typed, no observe
        def __init__(self):
            self.got = []

        def emit(self, event):
            self.got.append(event)

        def close(self):
            pass

    blind, plain = BlindView(), Plain()
    cfg = config.build(flags={"source": {"uri": str(video)}, "run": {"max_frames": 4}})
    d = Daemon(cfg, sinks=[blind, plain])
    assert d.run() == 0
    assert plain.got and blind.got == plain.got and plain.got[-1]["type"] == "end"
    assert d.stats.counters["sink_errors"] == len(plain.got)  # every failed observe counted, no emit lost


@pytest.mark.parametrize("layer,message", [
    ({"source": {"stall_s": 0.0}}, "source.stall_s"),
    ({"http": {"timeout_s": float("nan")}}, "http.timeout_s"),
    ({"http": {"max_clients": 0}}, "http.max_clients"),
    ({"mqtt": {"prefix": "home/#"}}, "wildcards"),
    ({"mqtt": {"prefix": "a/+/b"}}, "wildcards"),
    ({"mqtt": {"prefix": "/"}}, "mqtt.prefix"),
    ({"mqtt": {"prefix": "$SYS/x"}}, "broker-reserved"),
    ({"mqtt": {"client_id": "a\x00b"}}, "mqtt.client_id"),
    ({"http": {"bind": "127.0.0.1:8080", "token": "密码€"}}, "http.token"),
    ({"http": {"bind": "127.0.0.1:8080", "token": "two words"}}, "http.token"),
])
def test_new_settings_are_bounded(layer, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config.build(flags=layer)


UNIT = REPO / "devices" / "edge-runtime@.service"


def unit_service() -> dict:
    p = configparser.ConfigParser(interpolation=None, strict=True)
    p.optionxform = str
    p.read(UNIT)
    return dict(p["Service"])


@pytest.fixture
def bad_inputs(tmp_path, video):
    """Each configuration or model error a device can meet, as (name, extra argv)."""
    import shutil

    from edge_runtime.packaged import packaged_dir
    art = shutil.copytree(packaged_dir("cbilstm"), tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    m["artifacts"]["tflite-int8"]["file"] = "../../etc/passwd"
    (art / "manifest.json").write_text(json.dumps(m))
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("not a video")
    cases = {"unknown key": "[model]\nthread = 2\n", "wrong type": "[model]\nthreads = \"two\"\n",
             "too many threads": "[model]\nthreads = 99999\n", "zero interval": "[mqtt]\nstats_interval_s = 0\n",
             "wildcard topic": "[mqtt]\nprefix = \"fer/#\"\n", "not TOML": "[model\n"}
    out = []
    for name, text in cases.items():
        f = tmp_path / f"{name.replace(' ', '-')}.toml"
        f.write_text(text)
        out.append((name, ["--config", f, "--source", video]))
    out += [("missing artifacts", ["--artifacts", tmp_path / "nope", "--source", video]),
            ("manifest escaping its folder", ["--artifacts", art, "--source", video]),
            ("a file that is not a video", ["--source", notvideo]),
            ("a source file that does not exist", ["--source", tmp_path / "gone.mp4"])]
    return out


def test_systemd_does_not_restart_what_can_never_work(bad_inputs, no_tf_path):
    """The unit restarts on failure except for exit 2; every configuration or model error exits 2
    when started the way the unit starts it (a profile and a config file), and a lost output (exit 1)
    stays restartable."""
    svc = unit_service()
    assert svc["Restart"] == "on-failure"
    prevent = {int(c) for c in svc["RestartPreventExitStatus"].split()}
    assert prevent == {2}
    argv = shlex.split(svc["ExecStart"])
    assert argv[1:3] == ["-m", "edge_runtime"] and "--profile" in argv and "--config" in argv
    profile = REPO / "devices" / "raspberry-pi-5.toml"
    for name, extra in bad_inputs:
        r = subprocess.run(daemon_cmd("--profile", profile, *extra), env=daemon_env(no_tf_path), cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert r.returncode in prevent and len(errors) == 1 and "Traceback" not in r.stderr, (name, r.stderr)


def test_the_events_sink_writes_to_a_pipe(tmp_path):
    """A FIFO (or `--events /dev/stdout | jq`) cannot seek: every event still arrives, whole."""
    import os

    from edge_runtime.sinks import JsonlSink
    from edge_runtime.stats import Stats
    import fcntl
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    got = []
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there before the sink opens
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # then reads block
    stats = Stats()
    sink = JsonlSink(str(fifo), stats)  # a writer now exists: the reader's read() waits for data, not EOF
    reader = threading.Thread(target=lambda: got.extend(os.fdopen(fd).read().splitlines()))
    reader.start()
    for i in range(50):
        sink.emit({"type": "update", "i": i})
    sink.close()
    reader.join(10)
    assert [json.loads(x)["i"] for x in got] == list(range(50)) and stats.counters["sink_errors"] == 0


def test_a_short_write_leaves_no_half_line(tmp_path):
    """A file-size limit makes write() stop mid-line, as a filling disk does: the partial line is
    cut back, the event is counted as dropped, and the file stays valid JSON Lines."""
    import subprocess
    import sys
    path = tmp_path / "ev.jsonl"
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
from edge_runtime.sinks import JsonlSink
from edge_runtime.stats import Stats
stats = Stats()
sink = JsonlSink({str(path)!r}, stats)
for i in range(40):
    sink.emit({{"type": "update", "i": i, "pad": "x" * 20}})
sink.close()
print(stats.counters["sink_errors"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) > 0
    lines = path.read_text().splitlines(keepends=True)
    assert lines and all(ln.endswith("\n") for ln in lines)
    assert [json.loads(ln)["i"] for ln in lines] == list(range(len(lines)))


def test_a_plus_in_a_query_token_is_a_plus():
    from edge_runtime.http import query_token
    assert query_token("token=a+b/c%3D&x=1") == "a+b/c="
    assert query_token("x=1") == ""
