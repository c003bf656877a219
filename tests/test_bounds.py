"""Every number a user or a file sets is bounded (the daemon's config: test_edge_units.py and
test_faults.py; the benchmark's flags: test_benchmarks.py), and every command that reads images counts the
unreadable and half-truncated ones it skipped: one clear line each. Real data, real commands."""
import json
import subprocess
import sys

import pytest

from .conftest import REPO


def run(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.fixture
def damaged_tree(tiny_tree):
    """A small data tree with one corrupt and one half-truncated JPEG in each split."""
    root = tiny_tree(per_class=4)
    for split in ("train", "test"):
        (root / split / "happy" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        whole = sorted((root / split / "sad").glob("*.jpg"))[0].read_bytes()
        (root / split / "sad" / "zz_half.jpg").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.mark.slow
def test_every_command_that_reads_images_reports_what_it_skipped(damaged_tree, tiny_run, tiny_artifacts, tmp_path):
    r = run("train", "--data", damaged_tree, "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 4 unreadable image(s)" in r.stdout
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert {f for f, _ in report["skipped"]["train"]} == {"train/happy/zz_broken.jpg", "train/sad/zz_half.jpg"}

    r = run("export", "--model", tiny_run, "--data", damaged_tree, "--formats", "tflite-int8", "--max-drop", "100",
            "--out", tmp_path / "art", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: skipped 4 unreadable or truncated image(s) (2 in train, 2 in test)" in r.stderr

    r = run("benchmarks", "--artifacts", tiny_artifacts, "--formats", "tflite-int8", "--test-dir", damaged_tree / "test",
            "--quick", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: 2 unreadable or truncated test image(s) were skipped" in r.stderr
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["split"]["skipped"] == 2

    r = run("train.distill", tiny_run, "--data", damaged_tree, "--out", tmp_path / "soft.npz", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: skipped 2 unreadable or truncated image(s) (2 in train)" in r.stderr


@pytest.mark.parametrize("flag,value,message", [("--lr", "nan", "lr (--lr) = nan must be in [1e-08, 10.0]"),
                                                ("--lr", "-1", "lr (--lr) = -1.0 must be in"),
                                                ("--epochs", "0", "epochs (--epochs) = 0 must be in [1, 10000]"),
                                                ("--batch-size", "0", "batch_size (--batch-size) = 0 must be in"),
                                                ("--val-fraction", "0.9", "--val-fraction must be in"),
                                                ("--fraction", "0", "--fraction in"),
                                                ("--threads", "99999", "--threads must be an integer")])
def test_training_numbers_are_bounded_one_line_exit_2(flag, value, message, tmp_path):
    r = run("train", flag, value, "--out", tmp_path / "x", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [(["--max-drop", "-1"], "--max-drop must be"),
                                          (["--max-drop", "nan"], "--max-drop must be"),
                                          (["--calibration", "0"], "--calibration must be"),
                                          (["--fraction", "2"], "--fraction must be"),
                                          (["--threads", "0"], "--threads must be")])
def test_export_numbers_are_bounded_one_line_exit_2(args, message, tmp_path):
    r = run("export", *args, "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
