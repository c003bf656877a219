"""The wheel on its own: built from the checkout, installed with only the `edge` extra into a fresh
virtual environment (offline, from the wheelhouse `make test` fills), then used from a folder
outside the checkout with `import tensorflow` blocked: the API on a face image and the daemon on a
generated video, on the default model packaged inside the wheel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edge_runtime.synthetic import make_video, pick_faces
from tests.conftest import REPO, SHARED
from tests.edge_support import BLOCKER

WHEELHOUSE = REPO / ".cache" / "wheelhouse"


def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
    return r


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_installs_offline_and_runs_without_tensorflow(tmp_path):
    assert (WHEELHOUSE / ".done").is_file(), "run `make test` (it fills .cache/wheelhouse with the edge extra's wheels)"
    src, dist = tmp_path / "src", tmp_path / "dist"  # build from a copy: setuptools writes build/ in its tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("edge_runtime", "train", "export", "benchmarks"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", WHEELHOUSE, "-q",
        "-w", dist, src)
    wheel = next(dist.glob("fer_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("edge_runtime/models/yunet_n.onnx", "edge_runtime/models/NOTICE", "edge_runtime/crops.json",
                 "edge_runtime/models/cbilstm/manifest.json", "edge_runtime/models/cbilstm-lite/manifest.json",
                 "edge_runtime/web/index.html"):
        assert must in names, must
    for model in ("cbilstm", "cbilstm-lite"):  # both packaged models: the runtime picks one by the CPU
        assert sum(n.startswith(f"edge_runtime/models/{model}/") and n.endswith((".tflite", ".onnx"))
                   for n in names) == 3
    assert not any(n.endswith(".keras") for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    run(py, "-m", "pip", "install", "-q", "--no-index", "--find-links", WHEELHOUSE, f"{wheel}[edge]")
    install_s = time.monotonic() - t0
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    assert not (site / "tensorflow").exists() and not list(site.glob("tensorflow*"))
    before = tree(site)

    work = tmp_path / "elsewhere"  # outside the checkout: nothing may come from REPO
    work.mkdir()
    (work / "no_tf").mkdir()
    (work / "no_tf" / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(work / "no_tf")
    face = pick_faces(SHARED, 1, seed=3)[0][0]
    api = run(py, "-c", f"""
import json, cv2, edge_runtime
from edge_runtime import EmotionRecognizer
assert edge_runtime.__file__.startswith({str(site)!r}), edge_runtime.__file__
face = cv2.imread({str(face)!r})
for model in ("auto", "cbilstm", "cbilstm-lite"):
    er = EmotionRecognizer(model=model)
    p = er.predict_proba([face])
    print(json.dumps({{"model": er.manifest.model, "why": er.model_choice, "labels": er.predict([face]),
                      "sum": float(p.sum()), "runtime": er.runtime, "classes": list(er.classes_)}}))
""", cwd=work, env=env)
    outs = [json.loads(line) for line in api.stdout.strip().splitlines()[-3:]]
    for out in outs:
        assert out["classes"][0] == "angry" and len(out["labels"]) == 1 and abs(out["sum"] - 1) < 0.02
        assert "litert" in out["runtime"]
    assert [o["model"] for o in outs[1:]] == ["cbilstm", "cbilstm-lite"] and outs[0]["why"].startswith("auto")
    # installed, the work folders are the current folder's and the cache is the user's (edge_runtime/paths.py)
    where = run(py, "-c", "from edge_runtime import paths as p; print(p.checkout(), p.work_root(), p.cache_dir('probed'))",
                cwd=work, env={**{k: v for k, v in env.items() if k != "FER_EDGE_CACHE"},
                                        "XDG_CACHE_HOME": str(tmp_path / "xdg")}).stdout.split()
    assert where == ["None", str(work), str(tmp_path / "xdg" / "fer-edge" / "probed")]

    video = work / "clip.avi"
    truth = make_video(video, SHARED, n_faces=2, frames=10, seed=3)
    r = run(py, "-m", "edge_runtime", "--source", video, "--max-frames", 8, "--events", "-", cwd=work, env=env)
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {e["frame"] for e in events if e["type"] != "end"} == set(range(8))
    assert sum(e["type"] == "new" for e in events) == len(truth["faces"])
    assert "edge_runtime/models/cbilstm" in r.stderr or "tflite-int8" in r.stderr

    assert tree(site) == before  # the installed package wrote nothing into site-packages
    assert sorted(p.name for p in work.iterdir()) == ["clip.avi", "clip.json", "no_tf"]
    print(f"wheel {wheel.stat().st_size / 1e6:.2f} MB, install {install_s:.1f} s")
