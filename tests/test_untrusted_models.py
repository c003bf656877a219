"""Every input that can never work is one line and exit 2 (issue 33, class 6): garbage, truncated and
byte-flipped model files under a self-consistent manifest (sha256 recomputed), a TOML nested 3,000 deep,
a camera number that can never exist, an empty source. A flipped weight that loads is caught by the
outputs on the reference faces the export recorded. No TensorFlow; model loads probed in a child."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest

from edge_runtime.backends import BackendError, load_backend
from edge_runtime.manifest import ManifestError, read_manifest
from tests.conftest import REPO
from tests.edge_support import daemon_cmd, daemon_env, edge_artifacts, no_tf_path  # noqa: F401


def _tampered(src, dst, name, change):
    """A copy of the export with one artifact's bytes changed and its sha256 and size recomputed."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    a = m["artifacts"][name]
    p = dst / a["file"]
    data = change(bytearray(p.read_bytes()))
    p.write_bytes(bytes(data))
    a["sha256"], a["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _daemon_refuses(no_tf, art, name):
    r = subprocess.run(daemon_cmd("--artifacts", art, "--backend", name, "--source", "/dev/video97"), cwd=REPO,
                       env=daemon_env(no_tf), capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("edge_runtime: error:"), r.stderr[-1500:]
    return lines[0]


@pytest.mark.parametrize("name", ["tflite-int8", "onnx-int8"])
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_model_file_with_a_recomputed_checksum_is_one_line(edge_artifacts, no_tf_path, tmp_path,  # noqa: F811
                                                                      name, how, monkeypatch):
    change = {"garbage": lambda b: bytearray(np.random.default_rng(0).integers(0, 256, len(b), np.uint8).tobytes()),
              "truncated": lambda b: b[: len(b) // 3]}[how]
    art = _tampered(edge_artifacts, tmp_path / "art", name, change)
    assert name in _daemon_refuses(no_tf_path, art, name)


def test_100_byte_flipped_models_never_crash_and_never_answer_differently(edge_artifacts, tmp_path, monkeypatch):  # noqa: F811
    """Each flipped file (sha256 recomputed, so the checksum cannot help) is refused with one line or
    loads and gives the export's outputs on the reference faces; none kills the process by a signal."""
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path / "cache"))  # probe every file afresh
    rng = np.random.default_rng(33)
    m = read_manifest(edge_artifacts)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(100):
        name = ("tflite-int8", "onnx-int8")[i % 2]
        size = (edge_artifacts / m.artifacts[name].file).stat().st_size
        pos, bit = int(rng.integers(0, size)), int(rng.integers(0, 8))

        def flip(b, pos=pos, bit=bit):
            b[pos] ^= 1 << bit
            return b
        art = _tampered(edge_artifacts, tmp_path / f"a{i}", name, flip)
        man = read_manifest(art)
        try:
            backend = load_backend(man, name)  # probed in a child first: a crash there is an error here
        except (BackendError, ManifestError) as e:
            assert "\n" not in str(e) and name in str(e), str(e)
            outcomes["refused"] += 1
        else:
            from edge_runtime.backends import reference_probs
            want = np.asarray(man.artifacts[name].check["probs"])
            assert np.max(np.abs(reference_probs(backend, man.preprocessing) - want)) <= man.artifacts[name].check["atol"]
            outcomes["loaded"] += 1
        shutil.rmtree(art)
    assert sum(outcomes.values()) == 100 and outcomes["refused"] > 0, outcomes


def test_a_changed_weight_that_loads_is_refused_by_its_reference_outputs(edge_artifacts, tmp_path, monkeypatch):  # noqa: F811
    """The probabilities the export recorded on the reference faces, made different: the file is the
    same, so only the check can tell; it refuses it with one line."""
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path / "cache"))
    art = shutil.copytree(edge_artifacts, tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    probs = m["artifacts"]["tflite-int8"]["check"]["probs"]
    probs[0] = probs[0][1:] + probs[0][:1]  # another model's answer on face 0
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises((BackendError, ManifestError), match="outputs on the reference faces differ"):
        load_backend(read_manifest(art), "tflite-int8")


@pytest.mark.parametrize("args, words", [
    (["--source", ""], "source is empty"),
    (["--source", "999999"], "camera numbers are 0..255"),
    (["--source", "/dev/video4096"], "camera numbers are 0..255"),
])
def test_sources_that_can_never_work_are_one_line(no_tf_path, args, words):  # noqa: F811
    r = subprocess.run(daemon_cmd(*args), cwd=REPO, env=daemon_env(no_tf_path), capture_output=True, text=True,
                       timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr[-1000:]


def test_a_config_nested_3000_deep_is_one_line(no_tf_path, tmp_path):  # noqa: F811
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 3000 + "1" + "]" * 3000 + "\n")
    r = subprocess.run(daemon_cmd("--config", deep, "--source", "/dev/video97"), cwd=REPO,
                       env=daemon_env(no_tf_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("nested too deeply to be a configuration"), r.stderr[-500:]
