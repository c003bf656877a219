"""python -m train.grid: real fits on a tiny stratified subset of the shared FER2013 train split."""
import csv
import json
import os
import subprocess
import sys

import pytest

from train import grid
from train.__main__ import build_parser, config_from_args

from .conftest import REPO

TINY = ["--fraction", "0.01", "--epochs", "1", "--cv", "2", "--grid", "row_hidden=8,16", "--grid", "col_hidden=8",
        "--threads", "1", "--quiet"]


def rows_of(out):
    with open(out / "cv_results.csv", newline="") as f:
        return {r["params"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_plain_and_local_dask_cluster_give_the_same_cells(tmp_path, shared_root):
    """The same 2x1 grid, cv=2, run in a plain process and on a LocalCluster of 2 workers."""
    plain, dask = tmp_path / "plain", tmp_path / "dask"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    # the plain run in its own process (so --threads applies), concurrently with the Dask run
    proc = subprocess.Popen([sys.executable, "-m", "train.grid", "--data", str(shared_root), "--out", str(plain),
                             *TINY], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc = grid.main(["--data", str(shared_root), "--out", str(dask), "--dask", "local", "--workers", "2", *TINY])
    stdout, stderr = proc.communicate(timeout=600)
    assert rc == 0
    assert proc.returncode == 0, stderr[-2000:]

    a, b = rows_of(plain), rows_of(dask)
    assert set(a) == set(b) == {json.dumps({"col_hidden": 8, "row_hidden": r}) for r in (8, 16)}
    for key in a:
        for col in ("mean_test_score", "std_test_score", "split0_test_score", "split1_test_score",
                    "mean_test_log_loss"):
            assert a[key][col] == b[key][col], (key, col)  # bit-identical, not approximately equal
        assert float(a[key]["mean_fit_time"]) > 0
        assert 0.0 <= float(a[key]["mean_test_score"]) <= 1.0
        assert 0.5 < float(a[key]["mean_test_log_loss"]) < 10.0  # a real, trained softmax

    # every output is there, and the winner is what `python -m train --params` accepts
    for f in ("cv_results.csv", "results.txt", "heatmap.png", "best_params.json", "search.json"):
        assert (plain / f).is_file() and (plain / f).stat().st_size > 0, f
    text = (plain / "results.txt").read_text().splitlines()
    assert text[0].startswith("Best: ") and " using {" in text[0]
    assert all(" with: {" in line for line in text[1:]) and len(text) == 3
    best = json.loads((plain / "best_params.json").read_text())
    top = min(a.values(), key=lambda r: int(r["rank_test_score"]))
    assert best == {"model": "thesis", **json.loads(top["params"])}
    cfg = config_from_args(build_parser().parse_args(["--params", str(plain / "best_params.json")]))
    assert cfg.model == "thesis" and cfg.params == {"row_hidden": best["row_hidden"], "col_hidden": 8}
    settings = json.loads((plain / "search.json").read_text())
    assert settings["cv"] == 2 and settings["fraction"] == 0.01 and settings["n_images"] > 0

    # resuming a finished search fits nothing and leaves the cells as they were
    before = (plain / "cv_results.csv").read_text()
    r = subprocess.run([sys.executable, "-m", "train.grid", "--data", str(shared_root), "--out", str(plain),
                        *TINY[:-1], "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(2 already done)" in r.stdout and "fit done" not in r.stdout
    assert (plain / "cv_results.csv").read_text() == before


def _fake_search(calls, stop_after=None):
    """Stand-in for run_search: records the cells asked for, reports each as finished."""
    def run(X, y, cells, fixed, cv, seed, threads, batch_cells, on_cell, backend=None, n_jobs=1):
        calls.append([dict(c) for c in cells])
        for k, cell in enumerate(cells):
            if stop_after is not None and k == stop_after:
                raise KeyboardInterrupt
            row = {"params": grid.cell_key(cell), **{f"param_{n}": v for n, v in sorted(cell.items())},
                   "mean_test_score": 0.2 + 0.01 * cell["row_hidden"] / 32, "std_test_score": 0.01,
                   "split0_test_score": 0.2, "split1_test_score": 0.2, "mean_test_log_loss": 1.9,
                   "std_test_log_loss": 0.0, "mean_fit_time": 1.0, "std_fit_time": 0.0,
                   "mean_score_time": 0.1, "std_score_time": 0.0}
            on_cell(cell, row, k + 1, len(cells), 1.0)
    return run


def test_interrupted_search_keeps_finished_cells_and_resume_runs_only_the_rest(tmp_path, shared_root,
                                                                               monkeypatch):
    out = tmp_path / "g"
    base = ["--data", str(shared_root), "--out", str(out), "--fraction", "0.01", "--cv", "2", "--quiet"]
    calls = []
    monkeypatch.setattr(grid, "run_search", _fake_search(calls, stop_after=4))
    assert grid.main(base) == 130  # Ctrl-C: the shell's code, one line, what finished is kept
    assert len(calls[0]) == 9  # the thesis grid by default
    kept = rows_of(out)
    assert len(kept) == 4  # written as they arrived
    assert (out / "heatmap.png").is_file() and (out / "best_params.json").is_file()

    assert grid.main(base) == 2  # refuses to overwrite without --resume
    assert grid.main(base + ["--resume", "--epochs", "7"]) == 2  # refuses to mix settings

    calls.clear()
    monkeypatch.setattr(grid, "run_search", _fake_search(calls))
    assert grid.main(base + ["--resume"]) == 0
    assert [grid.cell_key(c) for c in calls[0]] == [grid.cell_key(c) for c in grid.expand([grid.THESIS_GRID])
                                                    if grid.cell_key(c) not in kept]
    rows = rows_of(out)
    assert len(rows) == 9
    for k, r in kept.items():  # finished cells are kept as they were (only their rank may move)
        assert {c: v for c, v in rows[k].items() if c != "rank_test_score"} == \
            {c: v for c, v in r.items() if c != "rank_test_score"}
    best = json.loads((out / "best_params.json").read_text())
    assert best == {"model": "thesis", "col_hidden": 16, "row_hidden": 128}  # first of the best row_hidden
    lines = (out / "results.txt").read_text().splitlines()
    assert lines[0] == "Best: 0.240000 using {'col_hidden': 16, 'row_hidden': 128}" and len(lines) == 10


def test_grids_from_flags_and_files(tmp_path):
    p = grid.build_parser()
    args = p.parse_args(["--grid", "lr=1e-3,3e-4", "--grid", "model=thesis"])
    assert dict(args.grid) == {"lr": [1e-3, 3e-4], "model": ["thesis"]}
    (tmp_path / "g.toml").write_text('row_hidden = [32, 64]\nbatch_size = [32]\n')
    (tmp_path / "g.json").write_text(json.dumps([{"model": ["cbilstm"], "dropout": [0.2, 0.4]},
                                                 {"model": ["cbilstm"], "lstm_units": [32]}]))
    assert grid.read_grid_file(tmp_path / "g.toml") == [{"row_hidden": [32, 64], "batch_size": [32]}]
    cells = grid.expand(grid.read_grid_file(tmp_path / "g.json"))
    assert len(cells) == 3
    assert grid.check_cells(cells, "thesis").size == 48
    assert grid.route({"model": "thesis", "lr": 1e-3, "row_hidden": 8, "epochs": 2}) == {
        "model__model_name": "thesis", "optimizer__learning_rate": 1e-3, "model__row_hidden": 8, "epochs": 2}
    thesis_file = REPO / "train" / "grids" / "thesis.json"
    assert grid.expand(grid.read_grid_file(thesis_file)) == grid.expand([grid.THESIS_GRID])
    with pytest.raises(grid.DataError, match="no parameter"):
        grid.check_cells([{"dropout": 0.1}], "thesis")
    with pytest.raises(grid.DataError, match="input sizes"):
        grid.check_cells([{"model": "thesis"}, {"model": "cbilstm"}], "thesis")


def test_cli_errors_are_one_line(tmp_path, shared_root, capsys):
    assert grid.main(["--data", str(shared_root), "--grid", "bogus=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m train.grid: error: model 'thesis' has no parameter(s) ['bogus']") and "\n" not in err
    assert grid.main(["--grid-file", str(tmp_path / "missing.json")]) == 2
    assert "cannot read grid file" in capsys.readouterr().err
