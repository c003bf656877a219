"""python -m train survives SIGKILL: a checkpoint after every epoch, --resume continues to the same result."""
import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import REPO

TINY = ["--fraction", "0.03", "--epochs", "4", "--threads", "1", "--quiet"]


def _train(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600, **kw)


def _history(run) -> list[dict]:
    rows = list(csv.DictReader(open(run / "history.csv")))
    for r in rows:
        r.pop("seconds")  # the only field that depends on the clock
    return rows


def _weights(run) -> list[np.ndarray]:
    import keras
    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_a_run_killed_after_an_epoch_resumes_to_the_unbroken_result(tmp_path, shared_root):
    data = ["--data", str(shared_root)]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    r = _train(*data, *TINY, "--out", str(unbroken))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / ".unbroken.resume").exists()  # a complete run leaves no checkpoint behind

    state = tmp_path / ".broken.resume" / "state.json"
    p = subprocess.Popen([sys.executable, "-m", "train", *data, *TINY, "--out", str(broken)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if json.loads(state.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not broken.exists()  # the run folder appears only when complete
    epoch = json.loads(state.read_text())["epoch"]
    assert 2 <= epoch < 4

    # a fresh run into the same folder would throw the checkpoint away: refused, with both ways out
    r = _train(*data, *TINY, "--out", str(broken))
    assert r.returncode == 2 and f"--resume {broken}" in r.stderr and "interrupted run" in r.stderr
    # the resumed run takes its settings from the checkpoint: another recipe would not be "the same run"
    r = _train("--resume", str(broken), "--epochs", "9")
    assert r.returncode == 2 and "drop --epochs" in r.stderr
    r = _train("--resume", str(tmp_path / "never-ran"))
    assert r.returncode == 2 and "no interrupted run to resume" in r.stderr

    r = _train("--resume", str(broken), "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming after epoch {epoch}" in r.stdout
    assert not state.parent.exists()
    assert _history(broken) == _history(unbroken)  # every metric of every epoch, to the last digit
    for a, b in zip(_weights(broken), _weights(unbroken)):
        np.testing.assert_array_equal(a, b)
    m_broken, m_unbroken = (json.loads((d / "manifest.json").read_text()) for d in (broken, unbroken))
    assert m_broken["metrics"]["test"] == m_unbroken["metrics"]["test"]
    assert m_broken["metrics"]["best_epoch"] == m_unbroken["metrics"]["best_epoch"]


def test_the_time_budget_goes_on_from_where_it_was():
    """The budget's clock counts the time spent before the interruption; its plan carries over."""
    pytest.importorskip("keras")
    from train.budget import budget_callback
    a = budget_callback(600, 74, 10)
    a.planned, a.epoch_seconds, a.replans = 30, [20.0, 19.0, 19.5], [[3, 30]]
    a.t0 -= 58.5
    b = budget_callback(600, 74, 10)
    b.restore(json.loads(json.dumps(a.state())))
    assert (b.planned, b.epoch_seconds, b.replans) == (30, [20.0, 19.0, 19.5], [[3, 30]])
    assert 58.5 <= time.perf_counter() - b.t0 < 60


def test_a_checkpoint_folder_train_did_not_write_is_never_removed(tmp_path):
    """.<run>.resume made by someone else (no marker): refused, left whole; ours, empty of epochs: replaced."""
    from train.resume import ResumeError, prepare, resume_dir
    theirs = resume_dir(tmp_path / "run")
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ResumeError, match="not a checkpoint train wrote"):
        prepare(tmp_path / "run", resume=False)
    assert (theirs / "notes.txt").read_text() == "mine"
    ours = prepare(tmp_path / "other", resume=False)  # a fresh one carries the marker
    assert prepare(tmp_path / "other", resume=False) == ours and ours.is_dir()
