"""Shared pieces of the edge-runtime tests: artifacts, videos, a TensorFlow-free subprocess, Mosquitto."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

# Makes `import tensorflow` (and keras) raise in any interpreter that has this folder on PYTHONPATH.
BLOCKER = '''
import importlib.abc, sys
class _NoTF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked: the edge runtime must not import TensorFlow")
        return None
sys.meta_path.insert(0, _NoTF())
'''


@pytest.fixture(scope="session")
def edge_artifacts(request) -> Path:
    """The exported tiny model folder (manifest.json + tflite/onnx fp32/int8): conftest's
    `tiny_artifacts`, or any export folder named by $EDGE_TEST_ARTIFACTS (e.g. a real model)."""
    art = os.environ.get("EDGE_TEST_ARTIFACTS") or request.getfixturevalue("tiny_artifacts")
    art = Path(art)
    assert (art / "manifest.json").is_file(), art
    return art


@pytest.fixture(scope="session")
def no_tf_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("no_tf")
    (d / "sitecustomize.py").write_text(BLOCKER)
    return d


def daemon_env(no_tf: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(no_tf), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def daemon_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "edge_runtime", *map(str, args)]


def run_daemon(no_tf: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(daemon_cmd(*args), env=daemon_env(no_tf), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def start_daemon(no_tf: Path, *args, stderr_path: Path) -> subprocess.Popen:
    err = open(stderr_path, "w")
    return subprocess.Popen(daemon_cmd(*args), env=daemon_env(no_tf), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=err, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 30.0, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """A real Mosquitto broker on a loopback port; yields (host, port)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    assert Path(exe).exists(), "mosquitto is not installed (apt-get install mosquitto; .ci/run does it)"
    d = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    (d / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(up, 10)
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(5)

