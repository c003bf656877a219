"""python -m edge_runtime.batch on real videos: the local pool and a real Dask LocalCluster give, frame for
frame, the events the camera daemon writes for each video; tables load in pandas with the container's
times; a SIGKILLed run resumes with every video done exactly once; a corrupt video is a failed row."""
import json
import shutil
import signal
import subprocess
import sys
import time

from pathlib import Path

import cv2
import pytest

from edge_runtime.batch import FRAME_COLUMNS, PERSON_COLUMNS

from edge_runtime.synthetic import make_video

from .conftest import REPO, SHARED

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

# what differs between two runs of the same video and so is not compared: when it ran and how long it took
VOLATILE = ("ts", "latency_ms")
VOLATILE_SUMMARY = ("wall_s",)


def comparable(event: dict) -> dict:
    e = {k: v for k, v in event.items() if k not in VOLATILE}
    if "summary" in e:
        e["summary"] = {k: v for k, v in e["summary"].items() if k not in VOLATILE_SUMMARY}
    return e


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three small videos in two folders, two of them with the same file name."""
    root = tmp_path_factory.mktemp("archive")
    specs = {"lobby/clip.avi": (2, 24, 1), "door/clip.avi": (1, 20, 2), "door/late/third.avi": (3, 16, 3)}
    for rel, (faces, frames, seed) in specs.items():
        make_video(root / rel, SHARED, n_faces=faces, frames=frames, face=130, fps=12.5, seed=seed, truth_json=False)
    return root


def daemon_events(video, tmp_path) -> list[dict]:
    out = tmp_path / f"daemon-{video.parent.name}-{video.stem}.jsonl"
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "--source", str(video), "--threads", "1",
                        "--events", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def container_times(video) -> list[float]:
    cap = cv2.VideoCapture(str(video))
    times = []
    while cap.read()[0]:
        times.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
    return times


@pytest.mark.parametrize("engine", [["--workers", "2"], ["--dask", "local", "--workers", "2"]],
                         ids=["local-pool", "dask-localcluster"])
def test_the_archive_gives_the_daemons_events_and_tables_with_media_times(engine, archive, tmp_path):
    out = tmp_path / "analysis"
    r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(archive), "--out", str(out), "--csv",
                        "--quiet", *engine], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    index = pd.read_parquet(out / "index.parquet")
    names = ["door/clip.avi", "door/late/third.avi", "lobby/clip.avi"]
    # each video's outputs sit under its absolute path: the same however the inputs were spelled
    assert sorted(index["video"]) == [(archive / n).resolve().as_posix().lstrip("/") for n in names]
    assert set(index["status"]) == {"ok"} and index["model_sha256"].nunique() == 1
    for rel, path in zip(index["video"], index["path"]):
        video = Path(path)
        got = [json.loads(line) for line in (out / rel / "events.jsonl").read_text().splitlines()]
        assert [comparable(e) for e in got] == [comparable(e) for e in daemon_events(video, tmp_path)], rel
        frames = pd.read_parquet(out / rel / "frames.parquet")
        assert len(frames) == sum(e["type"] != "end" for e in got)
        assert frames.equals(pd.read_csv(out / rel / "frames.csv")[frames.columns].astype(frames.dtypes))
        times = container_times(video)
        assert frames["media_s"].tolist() == pytest.approx([times[f] for f in frames["frame"]], abs=1e-6)
        people = pd.read_parquet(out / rel / "people.parquet")
        assert len(people) == index.set_index("video").loc[rel, "tracks"] > 0
        assert list(people.columns) == PERSON_COLUMNS and list(frames.columns) == FRAME_COLUMNS
        assert people["duration_s"].tolist() == pytest.approx((people["last_media_s"] - people["first_media_s"]).tolist(),
                                                              abs=1e-3)
        assert people[[c for c in people if c.startswith("share_pct_")]].sum(axis=1).tolist() == \
            pytest.approx([100.0] * len(people), abs=0.05)
        row = index.set_index("video").loc[rel]
        assert row["video_s"] == pytest.approx(len(times) / 12.5, abs=1e-3) and row["frames"] == len(times)


def test_python_api_every_nth_frame_and_a_corrupt_video(archive, tmp_path):
    from edge_runtime.batch import analyze
    (tmp_path / "in").mkdir()
    good = tmp_path / "in" / "good.avi"
    good.write_bytes((archive / "lobby" / "clip.avi").read_bytes())
    bad = tmp_path / "in" / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4000)  # a header and nothing playable
    df = analyze([tmp_path / "in"], tmp_path / "out", workers=1, every=3, as_frame=True)
    assert isinstance(df, pd.DataFrame)
    rows = df.assign(name=[Path(p).name for p in df["path"]]).set_index("name")
    assert rows.loc["bad.mp4", "status"] == "failed" and "not a video" in rows.loc["bad.mp4", "error"]
    assert not (tmp_path / "out" / rows.loc["bad.mp4", "video"]).exists()  # a failed video has a row, no folder
    assert rows.loc["good.avi", "status"] == "ok" and rows.loc["good.avi", "frames"] == 8  # 24 frames, every 3rd
    frames = pd.read_parquet(tmp_path / "out" / rows.loc["good.avi", "video"] / "frames.parquet")
    assert set(frames["frame"]) == {0, 3, 6, 9, 12, 15, 18, 21}  # the source's own frame numbers
    assert frames["media_s"].tolist() == pytest.approx((frames["frame"] / 12.5).tolist(), abs=1e-6)
    r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(tmp_path / "in"), "--out",
                        str(tmp_path / "out"), "--every", "3", "--quiet"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 1 and "bad.mp4: " in r.stderr and "failed:" in r.stderr  # exit 1: some videos failed
    r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "o2")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file or folder" in r.stderr


def test_a_killed_run_resumes_with_every_video_done_exactly_once(tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        make_video(src / f"v{i}.avi", SHARED, n_faces=2, frames=60, face=120, seed=10 + i, truth_json=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edge_runtime.batch", str(src), "--out", str(out), "--workers", "1", "--quiet"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if len(json.loads((out / ".index.json").read_text())) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = {d: d.stat().st_mtime_ns for d in out.rglob("done.json")}
    assert 2 <= len(first) < 6
    for d in first:  # what exists is complete: every file of its done.json is there
        files = json.loads(d.read_text())["files"]
        assert all((d.parent / f).is_file() for f in files)
    orphans = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in orphans if _parent(pid) == 1], "the killed client's workers outlived it"
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    index = pd.read_parquet(out / "index.parquet")
    assert sorted(Path(p).name for p in index["path"]) == [f"v{i}.avi" for i in range(6)]
    assert set(index["status"]) == {"ok"}
    for d, mtime in first.items():  # done before the kill: not redone
        assert d.stat().st_mtime_ns == mtime
    leftovers = [f.name for f in out.rglob(".*") if f.name not in (".fer-edge-owner.json", ".index.json")]
    assert not leftovers, leftovers  # no staging folder or half-written video of the killed run


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_inputs_spelled_twice_annotation_and_what_a_rerun_redoes(archive, tmp_path):
    """A video given twice (and inside a folder given too) is analysed once; --annotate adds a playable
    WebM; a removed output file makes the re-run redo that video; a user's file in a video's folder
    is never deleted (that video fails with the reason instead)."""
    from edge_runtime.batch import analyze
    video = archive / "door" / "clip.avi"
    out = tmp_path / "out"
    rows = analyze([video, str(video), archive / "door"], out, workers=1, annotate=True)
    assert sorted(Path(r["path"]).name for r in rows) == ["clip.avi", "third.avi"]
    folder = out / rows[0]["video"]
    webm = cv2.VideoCapture(str(folder / "annotated.webm"))
    assert webm.get(cv2.CAP_PROP_FRAME_COUNT) == rows[0]["frames"] > 0
    done = (folder / "done.json").stat().st_mtime_ns
    (folder / "people.parquet").unlink()
    rows = analyze([video], out, workers=1, annotate=True)
    assert (folder / "people.parquet").is_file() and (folder / "done.json").stat().st_mtime_ns != done
    (folder / "my-notes.txt").write_text("mine")
    rows = analyze([video], out, workers=1, every=2)  # other settings: the folder would be replaced
    assert rows[0]["status"] == "failed" and "my-notes.txt" in rows[0]["error"]
    assert (folder / "my-notes.txt").read_text() == "mine" and (folder / "annotated.webm").is_file()


def _batch(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edge_runtime.batch", *map(str, args), "--workers", "1", "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_what_a_hostile_probe_broke_stays_fixed(archive, tmp_path):
    """Each finding of the probe of this command (2026-12-07), on real files."""
    import os
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    good = src / "good.avi"
    good.write_bytes((archive / "lobby" / "clip.avi").read_bytes())  # 24 frames at 12.5 fps
    # a frame that does not decode keeps its place: frames after it keep their own numbers and times
    data = bytearray(good.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[10] + 200:starts[10] + 2500] = bytes(2300)
    (src / "sub" / "holed.avi").write_bytes(bytes(data))
    # a symlinked folder is searched; a FIFO named like a video is a failed row, never opened
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.avi").write_bytes(good.read_bytes()[:-1] + b"\x00")
    (src / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    os.mkfifo(src / "pipe.mp4")
    out = tmp_path / "out"
    r = _batch(src, "--out", out)
    assert r.returncode == 1, r.stderr[-2000:]  # the FIFO failed
    index = pd.read_parquet(out / "index.parquet").assign(name=lambda d: [Path(p).name for p in d["path"]])
    rows = index.set_index("name")
    assert set(rows.index) == {"good.avi", "holed.avi", "linked.avi", "pipe.mp4"}
    assert rows.loc["pipe.mp4", "status"] == "failed" and "not a regular file" in rows.loc["pipe.mp4", "error"]
    assert rows.loc["holed.avi", "status"] == "partial" and rows.loc["holed.avi", "frames_undecodable"] == 1
    frames = pd.read_parquet(out / rows.loc["holed.avi", "video"] / "frames.parquet")
    assert 10 not in set(frames["frame"]) and frames["frame"].max() == 23
    assert frames["media_s"].tolist() == pytest.approx((frames["frame"] / 12.5).tolist(), abs=1e-6)
    assert set(rows["detector"]) == {"yunet"} and rows["analysed_at"].str.endswith("Z").all()
    assert "4 video(s): 3 analysed, 0 skipped" in r.stdout
    # a re-run says what it skipped
    r = _batch(src, "--out", out)
    assert "0 analysed, 3 skipped (done before), 1 failed" in r.stdout, r.stdout
    # a kill between a swap's two renames (old folder set aside, new one sealed but not yet in place),
    # then a run on another video: the video's results come back, never both copies removed
    target = out / rows.loc["good.avi", "video"]
    pid = _dead_pid()
    shutil.copytree(target, target.with_name(f".{target.name}.staging-{pid}"))
    os.replace(target, target.with_name(f".{target.name}.replaced-{pid}"))
    other = tmp_path / "other.avi"
    other.write_bytes((archive / "door" / "clip.avi").read_bytes())
    assert _batch(other, "--out", out).returncode == 0
    assert (target / "done.json").is_file() and (target / "frames.parquet").is_file()
    assert not list(target.parent.glob(f".{target.name}.*"))
    # a kill after a video's folder was swapped but before the index was written: the index follows
    # the folder; a stale folder a killed run was removing (out of sight already) is removed
    index_json = out / ".index.json"
    stale = json.loads(index_json.read_text())
    for row in stale:
        row["faces"] = 999 if row["status"] != "failed" else row["faces"]
    index_json.write_text(json.dumps(stale))
    shutil.copytree(target, target.with_name(f".{target.name}.dropped-{pid}"))
    assert _batch(other, "--out", out).returncode == 0
    assert 999 not in set(pd.read_parquet(out / "index.parquet")["faces"])
    assert not list(target.parent.glob(f".{target.name}.*"))
    # an index.csv the user put there is never replaced: refused, kept
    (out / "index.csv").write_text("mine\n")
    r = _batch(other, "--out", out, "--csv")
    assert r.returncode == 2 and "index.csv" in r.stderr and (out / "index.csv").read_text() == "mine\n"
    (out / "index.csv").unlink()
    # a video that fails now has its earlier results removed: no table describes content that is gone
    good.write_bytes(b"not a video any more")
    r = _batch(src, "--out", out)
    assert r.returncode == 1 and not target.exists()
    assert pd.read_parquet(out / "index.parquet").set_index("video").loc[rows.loc["good.avi", "video"], "status"] == "failed"
    # bad numbers say which flag is wrong; a file is not a folder
    for args, words in ((["--every", "0"], "--every = 0 must be in [1, 100000]"), (["--fps", "-1"], "--fps must be"),
                        (["--workers", "0"], "--workers must be")):
        r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(other), "--out", str(tmp_path / "o3"),
                            *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "edge_runtime.batch", str(other), "--out", str(other)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_a_failing_videos_folder_holding_a_users_file_is_kept(archive, tmp_path):
    """A video that fails now loses its earlier results folder only when that folder is wholly this
    command's: a file the user put there keeps the folder, and the file, where they are."""
    src = tmp_path / "in"
    src.mkdir()
    video = src / "v.avi"
    video.write_bytes((archive / "door" / "clip.avi").read_bytes())
    out = tmp_path / "out"
    assert _batch(src, "--out", out).returncode == 0
    folder = next(p.parent for p in out.rglob("done.json"))
    (folder / "my-notes.txt").write_text("mine\n")
    video.write_bytes(b"not a video any more")
    r = _batch(src, "--out", out)
    assert r.returncode == 1
    assert (folder / "my-notes.txt").read_text() == "mine\n" and (folder / "done.json").is_file()
