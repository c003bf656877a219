"""Never lose a user's files (issue 33, class 1): every flag that writes, refused where it would replace
or delete what the toolkit did not write, or write into its own input. The inventory:

| command | flag | kind |
|---|---|---|
| python -m train | --out | run folder (replaced whole) |
| python -m train.recalibrate | --out | run folder (replaced whole) |
| python -m train.grid | --out | search folder |
| python -m train.kfold teach / assemble | --dir (fold file) / --out | file |
| python -m train.distill | --out | file |
| python -m export | --out, --packaged | export folder (prunes only its own files) |
| python -m export.study | --json | file |
| python -m benchmarks | --json, --md, --plots, --results | files, folder |
| python -m benchmarks.cost | --json | file |
| python -m benchmarks.calibrate | --write FILE, --packaged | file |
| python -m edge_runtime | --annotate, --events | file (events: appended) |
| python -m edge_runtime.synthetic | OUT (+ OUT.json) | files |
| python -m edge_runtime.annotate sheet | OUT | file |

(`devices/aarch64_check.py probe --out` is internal: the check runs it inside its own temp folder.)
Each command refuses before it loads data or a model, so these run in seconds.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.outputs import MARKER, OutputError, OwnedDir, check_target, claim_file, read_ledger

from .conftest import REPO, SHARED

def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _refused(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert lines and all(w in lines[-1] for w in words), lines[-3:]


@pytest.fixture
def user_folder(tmp_path):
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "thesis.pdf").write_bytes(b"%PDF-1.4 years of work")
    (d / "photos").mkdir()
    (d / "photos" / "a.jpg").write_bytes(b"\xff\xd8 a photo")
    return d


@pytest.fixture
def user_file(tmp_path):
    f = tmp_path / "notes.json"
    f.write_text('{"mine": true}')
    return f


@pytest.fixture
def clip(tmp_path, shared_root):
    from edge_runtime.synthetic import make_video
    path = tmp_path / "clip.avi"
    make_video(path, shared_root, n_faces=1, frames=6)
    return path


# ---------------------------------------------------------------- the rule itself
def test_rule_refuses_root_home_and_inputs(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    for target, why in (("/", "filesystem root"), (Path.home(), "home folder"), (data, "is this command's input"),
                        (tmp_path, "contains this command's input"), (data / "train" / "x", "inside the input folder")):
        with pytest.raises(OutputError, match=why):
            check_target(target, data=[data])
    model = tmp_path / "model"
    model.mkdir()
    assert check_target(model / "benchmark.md", [model]) == (model / "benchmark.md").resolve()  # beside a model: fine
    with pytest.raises(OutputError, match="is this command's input"):
        check_target(model, [model])
    with pytest.raises(OutputError, match="empty"):
        check_target("", [])


def test_an_owned_folder_deletes_only_what_it_recorded(tmp_path, user_folder):
    with pytest.raises(OutputError, match="not written by this toolkit"):
        OwnedDir.claim(user_folder, "export")
    d = OwnedDir.claim(tmp_path / "new", "export")
    (d.path / "a.12345678.onnx").write_bytes(b"ours")
    d.record("a.12345678.onnx")
    (d.path / "b.12345678.onnx").write_bytes(b"someone else's, named like ours")
    assert not d.remove("b.12345678.onnx") and d.remove("a.12345678.onnx")
    assert (d.path / "b.12345678.onnx").read_bytes().startswith(b"someone") and not (d.path / "a.12345678.onnx").exists()
    assert d.foreign() == ["b.12345678.onnx"]
    with pytest.raises(OutputError, match="output of 'export', not of 'train'"):
        OwnedDir.claim(d.path, "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert OwnedDir.claim(empty, "train").owned() == set() and read_ledger(empty)["owner"] == "train"


def test_a_folder_from_an_earlier_version_owns_only_what_its_manifest_names(tmp_path):
    old = tmp_path / "old-export"
    old.mkdir()
    for name in ("manifest.json", "m.0123abcd.tflite", "mine.txt"):
        (old / name).write_text("x")
    d = OwnedDir.claim(old, "export", legacy=["manifest.json", "m.0123abcd.tflite", "export_report.md"])
    assert d.owned() == {"manifest.json", "m.0123abcd.tflite"} and d.foreign() == ["mine.txt"]


def test_a_file_output_is_replaced_only_by_the_command_that_wrote_it(tmp_path, user_file):
    with pytest.raises(OutputError, match="--overwrite"):
        claim_file(user_file, writer="bench", flag="--json")
    assert claim_file(user_file, writer="bench", flag="--json", overwrite=True) == user_file.resolve()
    d = OwnedDir.claim(tmp_path / "owned", "export")
    (d.path / "benchmark.md").write_text("old table")
    d.record("benchmark.md", writer="bench")
    assert claim_file(d.path / "benchmark.md", writer="bench", flag="--md")  # its own earlier output
    with pytest.raises(OutputError, match="it is bench's"):  # another command's output is not this one's
        claim_file(d.path / "benchmark.md", writer="cost", flag="--json")
    (d.path / "export_report.json").write_text("{}")
    d.record("export_report.json")  # the folder owner's file, no file writer: nobody's to replace
    with pytest.raises(OutputError, match="--overwrite"):
        claim_file(d.path / "export_report.json", writer="cost", flag="--json")
    with pytest.raises(OutputError, match="is this command's input"):
        claim_file(user_file, writer="bench", inputs=[user_file], flag="--json", overwrite=True)


def test_a_forged_ledger_cannot_reach_outside_its_folder(tmp_path):
    import json
    d = tmp_path / "out"
    d.mkdir()
    victim = tmp_path / "victim.deadbeef.keras"
    victim.write_text("precious")
    (tmp_path / "dir").mkdir()
    (d / MARKER).write_text(json.dumps({"owner": "export", "files": ["../victim.deadbeef.keras", "/etc/passwd",
                                                                    "..", "../dir"]}))
    owned = OwnedDir(d, "export")
    assert owned.owned() == set()
    assert not owned.remove("../victim.deadbeef.keras") and victim.read_text() == "precious"
    assert (tmp_path / "dir").is_dir()


# ---------------------------------------------------------------- each command and flag
def test_train_never_replaces_its_data_or_a_user_folder(tiny_tree, user_folder):
    data = tiny_tree(per_class=2)
    before = _tree_hash(data)
    _refused(_run("train", "--data", data, "--out", data, "--epochs", "1"), "--out", "is this command's input")
    _refused(_run("train", "--data", data, "--out", data / "train", "--epochs", "1"), "inside the input folder")
    assert _tree_hash(data) == before
    before = _tree_hash(user_folder)
    _refused(_run("train", "--data", data, "--out", user_folder, "--epochs", "1"), "not written by this toolkit")
    _refused(_run("train", "--data", data, "--out", "/", "--epochs", "1"), "filesystem root")
    assert _tree_hash(user_folder) == before


def test_recalibrate_grid_kfold_distill_refuse(tiny_run, tiny_tree, user_folder, user_file):
    data = tiny_tree(per_class=2)
    before, fbefore = _tree_hash(user_folder), user_file.read_bytes()
    _refused(_run("train.recalibrate", tiny_run, "--data", data, "--out", user_folder), "not written by this toolkit")
    _refused(_run("train.recalibrate", tiny_run, "--data", data, "--out", tiny_run), "is this command's input")
    _refused(_run("train.grid", "--data", data, "--out", user_folder), "not written by this toolkit")
    _refused(_run("train.distill", tiny_run, "--data", data, "--out", user_file), "--overwrite")
    _refused(_run("train.distill", tiny_run, "--data", data, "--out", tiny_run / "model.keras", "--overwrite"),
             "is this command's input")
    _refused(_run("train.kfold", "assemble", "--data", data, "--out", user_file), "--overwrite")
    folds = user_file.parent / "folds"
    folds.mkdir()
    (folds / "k4-fold0.npz").write_bytes(b"a fold file someone made")
    _refused(_run("train.kfold", "teach", "--fold", "0", "--data", data, "--dir", folds), "--overwrite")
    assert _tree_hash(user_folder) == before and user_file.read_bytes() == fbefore
    assert (folds / "k4-fold0.npz").read_bytes() == b"a fold file someone made"


def test_export_refuses_root_data_user_folders_and_the_packaged_model(tiny_run, tiny_tree, user_folder):
    from export.pipeline import PACKAGED_DIR
    data = tiny_tree(per_class=2)
    packaged = _tree_hash(PACKAGED_DIR)
    before = _tree_hash(user_folder)
    for out, words in ((user_folder, "not written by this toolkit"), ("/", "filesystem root"),
                       (data, "is this command's input"), (PACKAGED_DIR / "cbilstm", "make artifacts")):
        _refused(_run("export", "--model", tiny_run, "--data", data, "--out", out, "--quiet"), *words.split(" | "))
    assert _tree_hash(user_folder) == before and _tree_hash(PACKAGED_DIR) == packaged


def test_export_prunes_only_files_an_export_wrote(tiny_artifacts, tmp_path):
    """A live export folder holding a user's file named like a generated artifact: a new export commits
    and prunes the old artifacts it wrote, never that file."""
    import shutil

    from edge_runtime.manifest import read_manifest
    from export.pipeline import _commit
    out = shutil.copytree(tiny_artifacts, tmp_path / "live")
    (out / "mine.deadbeef.onnx").write_bytes(b"a user's model")
    owned = OwnedDir.claim(out, "export")
    old = read_manifest(out)
    staging = tmp_path / "staging"
    staging.mkdir()
    renamed = {}
    for name, a in old.artifacts.items():  # a "new export": the same files under new sha-style names
        if a.file:
            new = a.file.rsplit(".", 2)[0] + ".0badf00d." + a.file.rsplit(".", 1)[1]
            shutil.copy(out / a.file, staging / new)
            renamed[name] = new
    import dataclasses
    m = dataclasses.replace(old, artifacts={n: dataclasses.replace(a, file=renamed.get(n, a.file))
                                            for n, a in old.artifacts.items()})
    _commit(staging, owned, m)
    assert (out / "mine.deadbeef.onnx").read_bytes() == b"a user's model"
    for name, a in old.artifacts.items():
        if a.file:
            assert not (out / a.file).exists() and (out / renamed[name]).is_file()


def test_benchmarks_refuse_existing_user_files_and_their_inputs(tiny_artifacts, user_file, user_folder):
    before = user_file.read_bytes()
    _refused(_run("benchmarks", "--artifacts", tiny_artifacts, "--json", user_file), "--json", "--overwrite")
    _refused(_run("benchmarks", "--artifacts", tiny_artifacts, "--md", user_file), "--md", "--overwrite")
    _refused(_run("benchmarks", "--artifacts", tiny_artifacts, "--plots", user_folder), "--plots")
    _refused(_run("benchmarks", "--artifacts", tiny_artifacts, "--json", tiny_artifacts, "--overwrite"),
             "is this command's input")
    _refused(_run("benchmarks", "--artifacts", tiny_artifacts, "--json", tiny_artifacts / "manifest.json"),
             "is this command's input")  # in the export's ledger, but what the benchmark reads
    _refused(_run("benchmarks.cost", "--json", user_file), "--overwrite")
    _refused(_run("benchmarks.calibrate", "--artifacts", tiny_artifacts, "--write", user_file), "--overwrite")
    _refused(_run("export.study", "--model", "models/thesis", "--json", user_file), "--overwrite")
    assert user_file.read_bytes() == before


def test_one_command_never_replaces_another_command_s_output(tiny_artifacts, tmp_path, shared_root):
    import shutil
    art = shutil.copytree(tiny_artifacts, tmp_path / "art")
    before = (art / "export_report.json").read_bytes(), (art / "manifest.json").read_bytes()
    _refused(_run("benchmarks.cost", "--json", art / "export_report.json"), "--overwrite")
    _refused(_run("edge_runtime.synthetic", art / "manifest.avi", "--data", shared_root, "--frames", "3"),
             "--overwrite")  # its truth file would be the export's manifest.json
    assert ((art / "export_report.json").read_bytes(), (art / "manifest.json").read_bytes()) == before


def test_the_default_data_set_is_protected_like_a_given_one(tiny_tree, monkeypatch):
    data = tiny_tree(per_class=2)
    monkeypatch.setenv("FER_DATA", str(data))
    img = next((data / "test").rglob("*.jpg"))
    before = img.read_bytes()
    _refused(_run("benchmarks.cost", "--json", img, "--overwrite"), "inside the input folder")
    assert img.read_bytes() == before


def test_the_daemon_never_writes_into_what_it_reads(clip, tmp_path):
    import shutil
    before = clip.read_bytes()
    _refused(_run("edge_runtime", "--source", f"file://{clip}", "--annotate", clip, "--overwrite"), "input")
    _refused(_run("edge_runtime", "--source", f"file://{clip}", "--events", clip), "input")
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(next((SHARED / "test" / "happy").glob("*.jpg")), folder / "a.jpg")
    _refused(_run("edge_runtime", "--source", folder, "--events", folder / "a.jpg"), "inside the input folder")
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[run]\nmax_frames = 1\n")
    _refused(_run("edge_runtime", "--source", clip, "--config", cfg, "--events", cfg), "input")
    assert clip.read_bytes() == before and cfg.read_text() == "[run]\nmax_frames = 1\n"
    r = _run("edge_runtime", "--source", f"file://{clip}", "--events", tmp_path / "e.jsonl")
    assert r.returncode == 0 and "end of source" in r.stderr  # a file:// source ends like a file


def test_an_empty_out_is_refused_not_the_default_folder():
    _refused(_run("train", "--out", "", "--epochs", "1"), "--out is empty")
    _refused(_run("export", "--out", "", "--quiet"), "--out is empty")


def test_calibrate_has_no_default_that_replaces_the_packaged_table():
    r = _run("benchmarks.calibrate", "--help")
    assert "--packaged" in r.stdout and "--write FILE" in r.stdout
    r = _run("benchmarks.calibrate", "--write")
    assert r.returncode == 2 and "expected one argument" in r.stderr


def test_the_daemon_never_truncates_its_source_or_a_user_file(clip, user_file, tmp_path):
    before = clip.read_bytes()
    for flag in ("--annotate", "--events"):
        _refused(_run("edge_runtime", "--source", clip, flag, clip, "--overwrite"), flag, "is this command's input")
    assert clip.read_bytes() == before
    video = tmp_path / "mine.mp4"
    video.write_bytes(b"a user's video")
    _refused(_run("edge_runtime", "--source", clip, "--annotate", video), "--annotate", "--overwrite")
    assert video.read_bytes() == b"a user's video"
    r = _run("edge_runtime", "--source", clip, "--annotate", video, "--overwrite", "--events", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr[-1500:]
    assert video.stat().st_size > 1000 and not list(tmp_path.glob(".mine.partial-*"))


def test_synthetic_and_sheet_refuse_then_replace_what_they_wrote(clip, shared_root, tmp_path, user_file):
    _refused(_run("edge_runtime.synthetic", clip, "--data", shared_root, "--frames", "3"), "--overwrite")
    _refused(_run("edge_runtime.synthetic", shared_root / "x.avi", "--data", shared_root, "--frames", "3"),
             "inside the input folder")
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"a user's picture")
    _refused(_run("edge_runtime.annotate", "sheet", clip, sheet), "--overwrite")
    assert sheet.read_bytes() == b"a user's picture"
    before = clip.read_bytes()
    _refused(_run("edge_runtime.annotate", "sheet", clip, clip, "--overwrite"), "the sheet is an image")
    assert clip.read_bytes() == before
    # in a folder the toolkit owns (the demo's), each writer replaces its own earlier output: make demo twice
    owned = OwnedDir.claim(tmp_path / "demo", "export")
    for _ in range(2):
        r = _run("edge_runtime.synthetic", owned.path / "demo.avi", "--data", shared_root, "--frames", "3")
        assert r.returncode == 0, r.stderr[-1500:]
        r = _run("edge_runtime.annotate", "sheet", owned.path / "demo.avi", owned.path / "demo-sheet.png")
        assert r.returncode == 0, r.stderr[-1500:]
    assert {"demo.avi", "demo.json", "demo-sheet.png"} <= owned.owned()
    assert MARKER in os.listdir(owned.path)


def test_a_second_export_into_a_folder_being_exported_is_refused(tiny_artifacts, tiny_run, tmp_path, shared_root):
    """Two exports into one folder would interleave their commits and prunes (the live manifest could
    name files the other pruned): the second is refused at once, the folder as it was."""
    import shutil

    from edge_runtime.outputs import exclusive
    out = shutil.copytree(tiny_artifacts, tmp_path / "live")
    before = _tree_hash(out)
    with exclusive(out, "export"):  # as a running export holds it
        _refused(_run("export", "--model", tiny_run, "--data", shared_root, "--out", out, "--quiet"),
                 "another export is writing into")
    assert _tree_hash(out) == before
