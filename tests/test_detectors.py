"""Face detectors, crop geometry, the appearance-gated tracker and the pipeline benchmark's scoring,
on real FER faces composited into frames and the real YuNet model files."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_runtime import detectors
from edge_runtime.detectors import PACKAGED, HaarDetector, YuNetDetector, calibrated_crop
from edge_runtime.geometry import CropSpec, Detections, crop_faces, crop_squares, cut_square, iou
from edge_runtime.manifest import sha256_file
from edge_runtime.preprocess import preprocess_batch, PreprocessSpec
from edge_runtime.synthetic import compose, moving_scene, paste, pick_faces
from edge_runtime.tracker import Tracker, thumbnails
from tests.conftest import REPO, SHARED

SHARED_YUNET = REPO.parent / "shared" / "models" / "yunet"


@pytest.fixture(scope="module")
def four():
    return compose((640, 480), pick_faces(SHARED, 4, seed=3), 120, seed=3)


def test_packaged_yunet_is_the_pinned_file_with_its_licence():
    file, sha = PACKAGED["yunet_n"]
    assert sha256_file(detectors.MODELS / file) == sha
    notice = (detectors.MODELS / "NOTICE").read_text()
    assert "Apache License" in notice and "yunet_n_320_320.onnx" in notice and sha in notice
    assert "Apache License" in (detectors.MODELS / "LICENSE-yunet").read_text()


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv"])
def test_yunet_decoding_matches_opencvs_own_face_detector(four, runtime):
    """Our decoding (vectorised numpy) against cv2.FaceDetectorYN on the unmodified shared model."""
    frame, truth = four
    ours = YuNetDetector(size=640, score=0.6, runtime=runtime).detect(frame)
    ref = cv2.FaceDetectorYN.create(str(SHARED_YUNET / "yunet_n_320_320.onnx"), "", (640, 480), 0.6, 0.3, 50)
    _, faces = ref.detect(frame)
    assert len(ours) == len(faces) == 4
    order = np.argsort(-faces[:, -1])
    np.testing.assert_allclose(ours.boxes, faces[order, :4], atol=0.05)
    np.testing.assert_allclose(ours.landmarks.reshape(-1, 10), faces[order, 4:14], atol=0.05)
    np.testing.assert_allclose(ours.scores, faces[order, -1], atol=1e-4)
    for f in truth:  # every pasted face found, landmarks inside its box, eyes above the mouth
        k = int(np.argmax([iou(f["box"], b) for b in ours.boxes]))
        assert iou(f["box"], ours.boxes[k]) >= 0.3  # the benchmark's match rule
        x, y, w, h = f["box"]
        lm = ours.landmarks[k]
        assert ((lm[:, 0] > x) & (lm[:, 0] < x + w) & (lm[:, 1] > y) & (lm[:, 1] < y + h)).all()
        assert lm[:2, 1].max() < lm[3:, 1].min()


def test_yunet_finds_small_and_large_faces_at_any_frame_size():
    faces = pick_faces(SHARED, 6, seed=11)
    det = YuNetDetector()
    for side, size in ((64, (640, 480)), (200, (640, 480)), (90, (333, 251)), (300, (1280, 720))):
        frame, truth = compose(size, faces[:1], side, seed=side)
        got = det.detect(frame)
        assert len(got) >= 1 and iou(truth[0]["box"], got.boxes[0]) > 0.4, (side, size, got.boxes)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert len(det.detect(gray)) == len(got)  # gray frames are accepted
    assert len(det.detect(np.full((480, 640, 3), 90, np.uint8))) == 0


def test_haar_still_available_without_landmarks(four):
    frame, truth = four
    dets = HaarDetector().detect(frame)
    assert len(dets) >= 3 and np.isnan(dets.landmarks).all()


def test_cut_square_is_an_exact_slice_and_replicates_past_the_edge():
    img = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)
    np.testing.assert_array_equal(cut_square(img, 30 + 20, 10 + 20, 40), img[10:50, 30:70])
    edge = cut_square(img, 5, 5, 20)  # 5 px outside: the first row/column repeat
    assert edge.shape == (20, 20)
    np.testing.assert_array_equal(edge[5:, 5:], img[0:15, 0:15])
    np.testing.assert_array_equal(edge[0, 5:], img[0, 0:15])
    np.testing.assert_array_equal(edge[:5, 7], np.full(5, img[0, 2]))


def test_crop_spec_scales_shifts_and_levels():
    dets = Detections.from_boxes([[100, 100, 80, 80]], landmarks=[[[120, 130], [160, 150], [140, 150],
                                                                    [125, 165], [155, 170]]])
    sq = crop_squares(dets, CropSpec(scale=1.25, dx=0.1, dy=-0.05))[0]
    np.testing.assert_allclose(sq[:3], [140 + 8, 140 - 4, 100])
    odd = crop_squares(Detections.from_boxes([[10.3, 20.6, 41, 41]]), CropSpec(scale=1.1))[0]
    assert odd[2] == 45 and (odd[:2] - odd[2] / 2) == pytest.approx([8, 19])  # pixel-aligned
    assert sq[3] == 0
    angle = crop_squares(dets, CropSpec(level=True))[0, 3]
    assert angle == pytest.approx(np.degrees(np.arctan2(20, 40)))
    patches, regions = crop_faces(np.zeros((300, 300), np.uint8), dets, CropSpec(scale=1.25))
    assert patches[0].shape == (100, 100) and list(regions[0]) == [90, 90, 100, 100]
    with pytest.raises(ValueError):
        CropSpec(scale=10)


def test_calibrated_crops_are_shipped_for_every_detector_and_keyed_by_model(caplog):
    table = json.loads(detectors.CROPS_FILE.read_text())
    for name in detectors.DETECTORS:
        spec = calibrated_crop(name, "cbilstm")
        fit = table[name]["cbilstm"]["fit"]
        assert fit["data"]["split"].startswith("validation") and fit["found"] >= 1000, name
        assert spec.to_dict() == table[name]["cbilstm"]["crop"]
    with caplog.at_level("WARNING"):  # a model without its own fit borrows the default's, and says so
        assert calibrated_crop("yunet", "no-such-model") == calibrated_crop("yunet", "cbilstm")
    assert "no crop calibrated for yunet with model no-such-model" in caplog.text


def _faces_at(paths, box, size=(320, 240)):
    """Each face pasted at the same box on one backdrop -> (frames, 48x48 inputs)."""
    x, y, s, _ = box
    frames, inputs = [], []
    for p in paths:
        f = np.full((size[1], size[0], 3), 100, np.uint8)
        paste(f, p, x, y, s)
        frames.append(f)
        inputs.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)[y:y + s, x:x + s])
    return frames, preprocess_batch(inputs, PreprocessSpec())


def test_a_new_face_where_another_just_left_starts_a_new_track():
    (a, _), (b, _) = pick_faces(SHARED, 2, seed=21)
    box = [100, 60, 96, 96]
    _, x = _faces_at([a, b], box)
    looks = thumbnails(x)
    pa, pb = np.eye(7)[3], np.eye(7)[5]
    dets = Detections.from_boxes([box])
    face_a, face_b = (dets.with_fields(regions=dets.boxes, probs=p[None]) for p in (pa, pb))
    t = Tracker(smoothing=0.8, max_missed=5)
    assert t.update(0, face_a, looks[:1])[0][0] == "new"
    assert t.update(1, face_a, looks[:1])[0][0] == "update"
    t.update(2, Detections.empty().with_fields(regions=np.zeros((0, 4)), probs=np.zeros((0, 7))), looks[:0])  # A leaves
    kinds = t.update(3, face_b, looks[1:])  # B appears in A's place
    new = [tr for k, tr in kinds if k == "new"]
    assert len(new) == 1 and new[0].id == 2
    np.testing.assert_allclose(new[0].smooth, pb)  # nothing inherited from A
    # the same face, slightly moved, keeps its track
    _, x2 = _faces_at([b], [104, 62, 96, 96])
    moved = Detections.from_boxes([[104, 62, 96, 96]])
    kinds = t.update(4, moved.with_fields(regions=moved.boxes, probs=pb[None]), thumbnails(x2))
    assert ("update", 2) in [(k, tr.id) for k, tr in kinds]


def test_moving_scene_truth_has_identities_entries_and_exits():
    faces = pick_faces(SHARED, 20, seed=2)
    frames = list(moving_scene(faces, 300, seed=5))
    per_frame = [t for _, t in frames]
    assert all(1 <= len(t) <= 4 for t in per_frame[5:])
    ids = [{f["id"] for f in t} for t in per_frame]
    assert len(set().union(*ids)) > max(len(s) for s in ids)  # faces left and new ones entered
    vis = [f["visible"] for t in per_frame for f in t]
    assert min(vis) < 0.5 and max(vis) == 1.0 and all(0 < v <= 1 for v in vis)


def test_pipeline_score_counts_switches_and_merges():
    from benchmarks.pipeline import score
    f1 = {"box": [0, 0, 50, 50], "label": "happy", "id": 1}
    f2 = {"box": [200, 0, 50, 50], "label": "sad", "id": 2}
    truth = {"per_frame": [[f1, f2], [f1, f2], [f1, f2]]}
    d = lambda box, track, lab: {"box": box, "track": track, "raw_label": lab, "label": lab}  # noqa: E731
    dets = [[d([0, 0, 50, 50], 7, "happy"), d([200, 0, 50, 50], 8, "sad")],
            [d([2, 0, 50, 50], 7, "happy")],                      # f2 missed
            [d([0, 0, 50, 50], 9, "sad"), d([200, 0, 50, 50], 7, "sad"),  # f1 -> track 9; track 7 took f2
             d([400, 300, 50, 50], 10, "sad")]]                   # a false positive
    ceiling = [["happy", "sad"]] * 3
    s = score(truth, dets, ceiling)
    assert s["faces"] == 6 and s["found"] == 5 and s["false_pos"] == 1
    assert s["label_acc"] == 0.8 and s["ceiling_acc"] == 1.0 and s["id_switches"] == 2 and s["merged_tracks"] == 1


def test_yunet_export_makes_the_input_size_free(tmp_path):
    out = tmp_path / "s.onnx"
    r = subprocess.run([sys.executable, "-m", "export.yunet", str(SHARED_YUNET / "yunet_s_320_320.onnx"), str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    frame, truth = compose((480, 352), pick_faces(SHARED, 1, seed=4), 150, seed=4)
    got = YuNetDetector(str(out), size=480, runtime="onnxruntime").detect(frame)
    assert len(got) == 1 and iou(truth[0]["box"], got.boxes[0]) > 0.5


def test_pipeline_score_matches_faces_cut_by_the_frame_edge_by_their_visible_part():
    from benchmarks.pipeline import score
    edge = {"box": [-80, 0, 100, 100], "label": "sad", "id": 1, "visible": 0.2}  # 20 px in view
    det = {"box": [0, 0, 20, 100], "track": 1, "raw_label": "sad", "label": "sad"}
    s = score({"size": [640, 480], "per_frame": [[edge]]}, [[det]], [["sad"]])
    assert s["false_pos"] == 0 and s["faces"] == 0  # matched (not a false positive), too little in view to count
    assert score({"per_frame": [[edge]]}, [[det]], [["sad"]])["false_pos"] == 1  # unclipped IoU is only 0.2


def test_the_gap_s_error_bar_treats_a_face_s_frames_as_one_cluster():
    """Hand count. Face A: 4 frames, the detector crop wrong and the exact crop right in all (gap +1 each);
    face B: 4 frames, both right (gap 0). Per frame the gap is 0.5 with SE 0.19 over 8 "independent"
    samples; as 2 faces, the cluster-robust SE is sqrt(2/1 * ((4*0.5)^2 + (4*-0.5)^2)) / 8 = 0.5."""
    from benchmarks.pipeline import cluster_se, per_cluster_mean
    gaps, faces = [1, 1, 1, 1, 0, 0, 0, 0], ["A"] * 4 + ["B"] * 4
    assert float(np.std(gaps, ddof=1) / np.sqrt(8)) == pytest.approx(0.18898, abs=1e-5)
    assert cluster_se(gaps, faces) == pytest.approx(0.5)
    assert cluster_se(gaps, list(range(8))) == pytest.approx(np.sqrt(8 / 7 * 8 * 0.25) / 8)  # one frame each
    assert cluster_se([1, 0], ["A", "A"]) is None
    # per distinct face: A right in 1 of 4 frames, B in 3 of 3 -> (0.25 + 1) / 2, not 4 / 7
    assert per_cluster_mean([1, 0, 0, 0, 1, 1, 1], ["A"] * 4 + ["B"] * 3) == pytest.approx(0.625)


def test_detection_in_regions_finds_the_tracked_faces_as_the_full_frame_does():
    """detect_regions around known faces: the same boxes (within 2 px) and landmarks as a full-frame
    detection, and nothing outside the regions; overlapping regions are looked at once."""
    from edge_runtime.detectors import merge_regions
    frame, placed = compose((640, 480), pick_faces(SHARED, 3, seed=21), 110, seed=21)
    det = YuNetDetector()
    full = det.detect(frame)
    assert len(full) == 3
    grown = np.array([[x - 0.5 * w, y - 0.5 * h, 2 * w, 2 * h] for x, y, w, h in full.boxes[:2]])
    part = det.detect_regions(frame, grown)
    assert len(part) == 2  # the third face lies outside every region
    for box, lm in zip(part.boxes, part.landmarks):
        k = int(np.argmax([iou(box, b) for b in full.boxes]))
        side = float(full.boxes[k][2])  # the region is resized on its own pixel grid: a pixel or two
        assert np.abs(box - full.boxes[k]).max() <= 0.03 * side and np.abs(lm - full.landmarks[k]).max() <= 0.03 * side
    assert merge_regions(np.array([[0, 0, 100, 100], [50, 50, 100, 100], [300, 300, 50, 50]]), 640, 480) == \
        [(0, 0, 150, 150), (300, 300, 350, 350)]
    assert merge_regions(np.array([[-50, -50, 60, 60], [630, 470, 100, 100]]), 640, 480) == [(0, 0, 10, 10), (630, 470, 640, 480)]


def _daemon_events(video, tmp_path, full_every: int) -> tuple[list[dict], int]:
    """The daemon on ``video`` with ``[detector] full_every``: its events and its region-search frames."""
    from edge_runtime.config import build
    from edge_runtime.daemon import Daemon
    path = tmp_path / f"ev{full_every}.jsonl"
    d = Daemon(build(flags={"source": {"uri": str(video)}, "events": {"path": str(path)},
                            "detector": {"full_every": full_every}}))
    assert d.run() == 0
    return [json.loads(x) for x in path.read_text().splitlines()], d.stats.counters["frames_region_detect"]


def _seen_frames(events: list[dict]) -> set[int]:
    """The frames in which a face was found (not carried over from a miss)."""
    return {e["frame"] for e in events if e["type"] != "end" and e["last_frame"] == e["frame"]}


def test_the_daemon_detects_around_its_tracks_between_full_frames(tmp_path):
    """[detector] full_every = 3: two of three frames are searched only around the tracks, with the
    same tracks in every frame as every-frame detection on a still scene; boxes move by a few pixels
    (the network sees less context), so a label may change only on a near tie."""
    from edge_runtime.synthetic import make_video
    video = tmp_path / "still.avi"
    make_video(video, SHARED, n_faces=3, frames=30, face=120, seed=5, truth_json=False)
    runs = {}
    for n in (1, 3):
        events, regions = _daemon_events(video, tmp_path, n)
        runs[n] = ({(e["frame"], e["track"]): e for e in events if e["type"] != "end"}, regions)
    # frames 1, 2, 4, 5, ... of 30 (20), less any frame after a track was missed (full again)
    assert runs[1][1] == 0 and 18 <= runs[3][1] <= 20
    full, part = runs[1][0], runs[3][0]
    assert set(full) == set(part) and len(full) == 90
    for key, a in full.items():
        b = part[key]
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.06 * a["box"][3], key
        top2 = sorted(a["raw"].values())[-2:]
        assert a["raw_label"] == b["raw_label"] or top2[1] - top2[0] < 0.2, (key, a["raw"], b["raw"])


def test_detector_names_live_in_one_place():
    """config.DETECTOR_SIZES names the detectors; the config's choices, the registry make_detector
    builds from and both CLIs' --detector choices follow it."""
    import dataclasses

    import subprocess
    import sys

    from edge_runtime.batch import parse_args
    from edge_runtime.config import DETECTOR_SIZES, DetectorConfig
    from edge_runtime.detectors import REGISTRY, make_detector
    names = list(DETECTOR_SIZES)
    assert list(REGISTRY) == names
    from edge_runtime.fields import spec_of
    assert list(spec_of(next(f for f in dataclasses.fields(DetectorConfig) if f.name == "type")).choices) == names
    for cmd in ("edge_runtime", "edge_runtime.batch"):
        r = subprocess.run([sys.executable, "-m", cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert "--detector {" + ",".join(names) + "}" in r.stdout, cmd
    assert parse_args(["x", "--out", "y"]).detector == "yunet"
    for name, size in DETECTOR_SIZES.items():
        assert make_detector(DetectorConfig(type=name)).size == size


def test_a_face_replaced_elsewhere_costs_one_full_frame_not_one_per_missed_frame(tmp_path):
    """One face at a time, each replaced by the next somewhere else every 15 frames (the pipeline
    benchmark's small-faces scene): the region search misses the new face once, the same frame is
    searched whole, and the old face's track is then sought in its region while it runs out, not in
    whole frames. Every face is found in the same frames as with every-frame detection."""
    from edge_runtime.synthetic import small_scene, write_scene
    video = tmp_path / "small.avi"
    write_scene(video, small_scene(pick_faces(SHARED, 4, seed=11), 60, sides=(90, 160), seed=2))
    runs = {}
    for n in (1, 8):
        events, regions = _daemon_events(video, tmp_path, n)
        runs[n] = (_seen_frames(events), regions)
    assert runs[1][1] == 0
    assert runs[8][0] == runs[1][0] and len(runs[1][0]) >= 57  # the frames a face was seen in
    # per 15-frame face: frame 0 whole (the region missed it), frame 8 whole (full_every), 13 regions;
    # the rule before this one searched whole frames until the old track ended: about 7 regions
    assert runs[8][1] >= 48, runs[8][1]


def test_with_no_face_seen_last_frame_the_whole_frame_is_searched(tmp_path):
    """A new face in every frame, somewhere else (the benchmark's one-face scene): after a frame where the
    detector found nothing, only a whole-frame search can find the next face, so the same faces are
    found as with every-frame detection."""
    from edge_runtime.synthetic import shuffled_scene, write_scene
    video = tmp_path / "shuffled.avi"
    write_scene(video, itertools.islice(shuffled_scene(pick_faces(SHARED, 80, seed=5), sides=(28, 64), seed=5), 80))
    found = {n: _seen_frames(_daemon_events(video, tmp_path, n)[0]) for n in (1, 8)}
    assert len(found[1]) < 80  # the detector misses some faces: the case this is about
    assert found[8] == found[1]
