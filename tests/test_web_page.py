"""GET / in a real headless browser (Debian's Chromium): the self-contained page shows the live
view and a table of the tracks the daemon sees, refreshed in place, behind the same token as the
other endpoints. The screenshot is kept with the test's outputs (tmp_path/page.png)."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge_runtime.labels import LABELS
from edge_runtime.synthetic import make_video
from tests.conftest import SHARED
from tests.edge_support import free_port, no_tf_path, run_daemon, start_daemon, wait_for  # noqa: F401

TOKEN = "s3cret-token"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Chromium is not installed (apt-get install chromium; make test does it)"
    return exe


def browse(url: str, tmp_path: Path, *extra: str, budget_ms: int = 3000) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1150,720",
                           f"--virtual-time-budget={budget_ms}", *extra, url],
                          capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def page_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "two.avi"
    make_video(path, SHARED, n_faces=2, frames=30, face=150, seed=8)
    return path


def test_the_page_shows_the_live_tracks_in_a_real_browser(page_video, no_tf_path, tmp_path):
    port = free_port()
    proc = start_daemon(no_tf_path, "--source", page_video, "--loop", "--http", f"127.0.0.1:{port}",
                        "--token", TOKEN, "--events", tmp_path / "ev.jsonl", stderr_path=tmp_path / "err")
    base = f"http://127.0.0.1:{port}/"
    try:
        def status(url):
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, b""
            except OSError:
                return None, b""
        wait_for(lambda: status(f"{base}healthz?token={TOKEN}")[0] == 200, 60)
        assert status(base)[0] == 401  # the page is behind the token like every endpoint
        code, html = status(f"{base}?token={TOKEN}")
        assert code == 200 and b"<table" in html
        assert not re.search(rb'(src|href)=["\']?(https?:)?//', html)  # self-contained: no external assets

        r = browse(f"{base}?token={TOKEN}", tmp_path, "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        rows = re.findall(r'<tr data-track="(\d+)"( class="ended")?><td>\d+</td><td>(\w+)</td>', r.stdout)
        live = [(int(t), lab) for t, ended, lab in rows if not ended]
        assert len(live) == 2 and all(lab in LABELS for _, lab in live), r.stdout[-3000:]
        assert re.search(r'id="health" class="ok">ok<', r.stdout)
        assert re.search(r'<img id="view"[^>]*src="stream\.mjpg\?token=', r.stdout)

        shot = tmp_path / "page.png"
        r = browse(f"{base}?token={TOKEN}", tmp_path, f"--screenshot={shot}")
        assert r.returncode == 0 and shot.stat().st_size > 20_000, r.stderr[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, (tmp_path / "err").read_text()


def test_annotate_writes_the_processed_frames_with_boxes_and_a_contact_sheet(page_video, no_tf_path, tmp_path):
    import sys

    import cv2
    import numpy as np

    from tests.edge_support import read_events, run_daemon
    out = tmp_path / "seen.mp4"
    r = run_daemon(no_tf_path, "--source", page_video, "--events", tmp_path / "ev.jsonl", "--annotate", out)
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    ok, frame = cap.read()
    cap.release()
    events = [e for e in read_events(tmp_path / "ev.jsonl") if e["frame"] == 0]
    assert len(events) == 2
    green = (frame[:, :, 1] > 180) & (frame[:, :, 0] < 140) & (frame[:, :, 2] < 140)
    for e in events:  # each face's box is drawn where the event says it is
        x, y, w, h = e["box"]
        edge = green[max(0, y - 2):y + 3, x:x + w]
        assert edge.mean() > 0.5, (e["box"], edge.mean())
    bad = run_daemon(no_tf_path, "--source", page_video, "--annotate", tmp_path / "seen.gif")
    assert bad.returncode == 2 and "use a .webm (plays in browsers), .mp4 or .avi" in bad.stderr
    (tmp_path / "folder.avi").mkdir()
    bad = run_daemon(no_tf_path, "--source", page_video, "--annotate", tmp_path / "folder.avi")
    assert bad.returncode == 2 and "is a folder: name a file" in bad.stderr and "Traceback" not in bad.stderr

    sheet = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, "-m", "edge_runtime.annotate", "sheet", str(out), str(sheet), "--frames", "6"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    bad = subprocess.run([sys.executable, "-m", "edge_runtime.annotate", "sheet", str(out), str(tmp_path / "s.txt")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "name it .png" in bad.stderr and "Traceback" not in bad.stderr
    img = cv2.imread(str(sheet))
    assert img.shape == (2 * 240, 4 * 320, 3) and np.count_nonzero(img) > 0  # 6 frames on a 4-wide grid


@pytest.fixture(scope="module")
def moving_video(tmp_path_factory):
    from edge_runtime.synthetic import moving_scene, pick_faces, write_scene
    path = tmp_path_factory.mktemp("page") / "moving.avi"
    write_scene(path, moving_scene(pick_faces(SHARED, 10, seed=4), 120, seed=4, max_faces=3))
    return path


@pytest.mark.parametrize("width, height", [(390, 844), (1280, 800)])
def test_the_page_fits_a_phone_and_a_desktop_and_agrees_with_latest(moving_video, no_tf_path, tmp_path, width, height):
    """Asserted, not only screenshotted: no horizontal overflow, the header's stats filled, and an ended
    track's row showing its dominant emotion with that emotion's share, as /latest says."""
    import json
    port = free_port()
    proc = start_daemon(no_tf_path, "--source", moving_video, "--loop", "--http", f"127.0.0.1:{port}",
                        "--events", tmp_path / "ev.jsonl", stderr_path=tmp_path / "err")
    base = f"http://127.0.0.1:{port}/"

    def latest():
        try:
            with urllib.request.urlopen(base + "latest", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return []
    try:
        wait_for(lambda: any(e["type"] == "end" for e in latest()), 90)
        r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                            "--virtual-time-budget=3000", "--dump-dom", base], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr[-2000:]
        ended = {e["track"]: e["summary"] for e in latest() if e["type"] == "end"}
        shot = tmp_path / f"page-{width}.png"
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp_path / 'profile2'}", f"--window-size={width},{height}",
                        "--virtual-time-budget=3000", f"--screenshot={shot}", base], capture_output=True, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    dom = r.stdout
    assert 'data-fits="true"' in dom, dom[:300]
    assert re.search(r'id="stats" class="muted">\d+\.\d fps · \d+ faces? · up \d+ s<', dom), dom[-3000:]
    rows = re.findall(r'<tr data-track="(\d+)" class="ended"><td>\d+</td><td>(\w+)</td><td>([\d.]+)</td>', dom)
    checked = [(int(t), lab, float(sc)) for t, lab, sc in rows if int(t) in ended]
    assert checked, (rows, sorted(ended))
    for track, label, share in checked:
        assert label == ended[track]["dominant"] and share == round(ended[track]["dominant_pct"] / 100, 2)
    assert shot.stat().st_size > 10_000


def test_the_annotated_webm_plays_in_chromium(tmp_path, no_tf_path):
    """--annotate out.webm: headless Chromium decodes it to readyState 4 (HAVE_ENOUGH_DATA) with its real
    size and length; the .mp4 the daemon also writes is refused by the same browser, as the log says."""
    video = tmp_path / "three.avi"
    make_video(video, SHARED, n_faces=3, frames=45, face=120, seed=5)
    for name in ("out.webm", "out.mp4"):
        r = run_daemon(no_tf_path, "--threads", "1", "--source", video, "--events", tmp_path / f"{name}.jsonl",
                       "--annotate", tmp_path / name)
        assert r.returncode == 0, r.stderr[-2000:]
    assert "MPEG-4 Part 2 plays in desktop players but not in browsers" in r.stderr

    def play(name):
        page = tmp_path / f"{name}.html"
        page.write_text(f"""<!doctype html><body data-state="none"><video id="v" src="{name}" muted preload="auto"></video>
<script>const v = document.getElementById("v");
const say = () => document.body.dataset.state = `${{v.readyState}} ${{v.videoWidth}}x${{v.videoHeight}} ${{v.duration}}`;
for (const e of ["loadedmetadata", "canplay", "canplaythrough", "error"]) v.addEventListener(e, say);
v.addEventListener("error", () => document.body.dataset.error = v.error ? v.error.code : "?");</script></body>""")
        r = browse(page.as_uri(), tmp_path, "--allow-file-access-from-files", "--dump-dom", budget_ms=5000)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout
    dom = play("out.webm")
    state = re.search(r'data-state="(\d) (\d+)x(\d+) ([\d.]+)"', dom)
    assert state, dom[:500]
    assert state.group(1) == "4" and state.groups()[1:3] == ("640", "480")
    assert float(state.group(4)) == pytest.approx(45 / 15, abs=0.1)  # 45 frames at the source's 15 fps
    assert "data-error" in play("out.mp4")  # MPEG-4 Part 2: what the hint is about


def test_labels_and_panels_stay_in_the_frame_and_off_each_other():
    """Faces side by side, at every edge and in a corner: no label or panel leaves the frame, and no
    two of them overlap (a panel with no free side is left out rather than drawn over another face's)."""
    import numpy as np

    from edge_runtime.annotate import _hits, draw, layout

    class T:
        def __init__(self, i, box):
            self.id, self.box = i, box
            self.smooth = np.eye(len(LABELS))[i % len(LABELS)] * 0.7 + 0.3 / len(LABELS)
    w, h = 640, 480
    scenes = [[T(1, (200, 200, 60, 60)), T(2, (270, 205, 60, 60)), T(3, (340, 200, 60, 60))],  # a row of faces
              [T(1, (0, 0, 80, 80)), T(2, (w - 80, 0, 80, 80)), T(3, (0, h - 80, 80, 80)), T(4, (w - 80, h - 80, 80, 80))],
              [T(1, (-20, -10, 100, 100)), T(2, (w - 60, h - 40, 100, 100))],  # partly outside the frame
              [T(i, (40 * i, 100, 44, 44)) for i in range(1, 14)]]  # crowded
    for tracks in scenes:
        rects = []
        for text, lab, panel in layout(tracks, w, h):
            for r in (lab, panel):
                if r is not None:
                    assert 0 <= r[0] < r[2] <= w and 0 <= r[1] < r[3] <= h, (text, r)
                    assert not _hits(r, rects), (text, r, rects)
                    rects.append(r)
        draw(np.zeros((h, w, 3), np.uint8), tracks)  # and it draws
    # every face keeps at least its id in view, and the row of three shows every full label
    assert all(lab is not None for tracks in scenes for _, lab, _ in layout(tracks, w, h))
    assert all("%" in text for text, _, _ in layout(scenes[0], w, h))


def test_the_annotated_video_keeps_the_sources_pace_and_every_frame(tmp_path, no_tf_path):
    """A 7.5 fps file gives a 7.5 fps annotated video of the same length; an image folder whose images
    change size gives one frame per image (fitted, not dropped); --events and --annotate on one file is
    refused before either is created."""
    import cv2
    import numpy as np
    video = tmp_path / "slow.avi"
    make_video(video, SHARED, n_faces=1, frames=12, face=140, fps=7.5, seed=2)
    r = run_daemon(no_tf_path, "--source", video, "--events", tmp_path / "a.jsonl", "--annotate", tmp_path / "a.webm")
    assert r.returncode == 0, r.stderr[-1500:]
    cap = cv2.VideoCapture(str(tmp_path / "a.webm"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.5, abs=0.01) and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        size = (640, 480) if i % 2 == 0 else (320, 240)
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.full((size[1], size[0], 3), 40 * i, np.uint8))
    r = run_daemon(no_tf_path, "--source", folder, "--events", tmp_path / "b.jsonl", "--annotate", tmp_path / "b.avi")
    assert r.returncode == 0, r.stderr[-1500:]
    n = 0
    cap = cv2.VideoCapture(str(tmp_path / "b.avi"))
    while cap.read()[0]:
        n += 1
    assert n == 6 and "(6 frames)" in r.stderr
    same = tmp_path / "same.webm"
    r = run_daemon(no_tf_path, "--source", video, "--events", same, "--annotate", same, "--overwrite")
    assert r.returncode == 2 and "both name" in r.stderr and not same.exists()
