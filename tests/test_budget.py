"""Training within a time budget (train/budget.py, python -m train --time)."""
import numpy as np
import pytest

from edge_runtime.manifest import read_manifest
from train.budget import plan_epochs

from .test_train import train_cli


def test_plan_counts_what_is_left_and_stays_within_limits():
    # 100 s used, 50 s per epoch, 30 s of re-estimation to come: (360 - 100 - 30) // 50 = 4 more
    assert plan_epochs(360, 100, 50, done=2, max_epochs=10, reserve_s=30) == 6
    assert plan_epochs(360, 100, 50, done=2, max_epochs=5, reserve_s=30) == 5  # --epochs caps it
    assert plan_epochs(60, 100, 50, done=2, max_epochs=10) == 2  # over budget: stop now, never undo epochs
    assert plan_epochs(3600, 0, 49.9, done=0, max_epochs=1000) == 72


def test_stretchable_cosine_is_the_recipe_schedule_and_moves_its_end():
    import keras

    from train.budget import stretchable_cosine
    warm, total, peak, alpha = 20, 180, 2e-3, 0.01
    ref = keras.optimizers.schedules.CosineDecay(peak / 10, total, alpha=alpha, warmup_target=peak, warmup_steps=warm)
    s = stretchable_cosine(peak / 10, peak, warm, total, alpha)
    for step in (0, 7, 20, 21, 90, 199, 200, 400):
        assert float(s(step)) == pytest.approx(float(ref(step)), rel=1e-5), step
    s.set_total_steps(80)  # a plan of fewer epochs: the floor comes at step 80, halfway at 50
    assert float(s(80)) == pytest.approx(alpha * peak, rel=1e-5)
    assert float(s(50)) == pytest.approx(peak * ((1 - alpha) / 2 + alpha), rel=1e-5)


@pytest.mark.parametrize("budget_s, max_epochs, ticks, epochs, end, overrun_s", [
    # epoch 1 (with tracing) 80 s -> 1 + (360 - 80 - 48) // 80 = 3 planned; epoch 2 50 s -> 2 + 200 // 50 = 6
    (360, 10, [80] + [50] * 20, 6, 6, 0),
    # 50 s epochs plan 6; from epoch 3 they take 120 s: the plan, and the schedule, end at 4; a lasting
    # slowdown can overrun by about one slow epoch (340 s + 0.6 x 120 s)
    (360, 10, [50, 50] + [120] * 20, 4, 4, 52),
    # the pace rises in the run's last epoch: the plan can only end there, one epoch before its schedule
    (360, 10, [50, 50] + [58] * 20, 5, 6, 0),
    # one 2x epoch near the end of a short run: it costs one epoch, and the schedule ends with the run
    (90, 20, [26] + [6] * 6 + [12] + [6] * 20, 9, 9, 0),
    # one 600 s epoch among 50 s ones (a suspended VM), counted as 100 s: the old planner projected
    # 600 s onto the rest and stopped at epoch 4, un-annealed; now the run loses about that epoch's time
    (1200, 30, [50, 50, 50, 600] + [50] * 30, 10, 10, 0),
    # one 2x epoch in mid-run
    (530, 30, [50] * 6 + [100] + [50] * 30, 8, 8, 0),
])
def test_budget_plans_from_the_epochs_pace_and_moves_the_schedule_end(monkeypatch, budget_s, max_epochs,
                                                                      ticks, epochs, end, overrun_s):
    """A fake clock gives each epoch its time; 0.6 epoch is reserved for BatchNorm re-estimation.
    The plan is set after epochs 1 and 2, then follows the epochs' pace; the cosine schedule's end
    moves with every plan. ``end``: where the schedule ended while the last epoch trained."""
    import keras

    from train import budget
    from train.optimize import COSINE_ALPHA, make_optimizer, warmup_steps
    from train.models import Recipe

    clock = iter(np.cumsum([0.0, *ticks]))
    monkeypatch.setattr(budget.time, "perf_counter", lambda: float(next(clock)))
    recipe = Recipe(epochs=max_epochs, lr=1e-2, schedule="cosine", time_budget_min=budget_s / 60)
    steps = 5
    warm = warmup_steps(recipe, steps)
    schedule = budget.stretchable_cosine(recipe.lr / 10, recipe.lr, warm, recipe.epochs * steps - warm, COSINE_ALPHA)
    ends = []  # the schedule's end in force while each epoch trains (this callback runs first)
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: ends.append(
        (float(keras.ops.convert_to_numpy(schedule.decay_steps)) + warm) / steps))
    cb = budget.budget_callback(budget_s, recipe.epochs, steps, schedule, bn_pass=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=make_optimizer(recipe, steps, schedule), loss="categorical_crossentropy")
    x = np.random.default_rng(0).random((40, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(40) % 3, 3)
    hist = model.fit(x, y, batch_size=8, epochs=recipe.epochs, callbacks=[record, cb], verbose=0)
    assert len(hist.history["loss"]) == epochs and int(model.optimizer.iterations) == epochs * steps
    assert ends[-1] == end
    report = cb.report()
    assert report["planned_epochs"] == epochs and report["epoch_seconds"] == [float(t) for t in ticks[:epochs]]
    assert sum(ticks[:epochs]) + budget.BN_PASS_EPOCHS * ticks[epochs - 1] <= budget_s + overrun_s
    assert all(e > budget.PLANNING_EPOCHS and 1 <= n <= max_epochs for e, n in report["replans"])


@pytest.mark.slow
def test_time_flag_stops_a_run_at_its_budget(tmp_path, shared_root):
    """A budget smaller than one epoch: the run keeps its first epoch, not the three asked for, and says so."""
    out = tmp_path / "run"
    r = train_cli(shared_root, out, "--model", "thesis", "--epochs", "3", "--time", "0.01")
    assert "time budget 0.01 min: epoch 1 took" in r.stdout and "-> 1 epoch(s) planned (at most 3)" in r.stdout
    m = read_manifest(out).to_dict()
    assert m["recipe"]["time_budget_min"] == 0.01 and m["metrics"]["epochs_run"] == 1
    assert m["time_budget"]["planned_epochs"] == 1 and len(m["time_budget"]["epoch_seconds"]) == 1


def test_negative_budget_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO
    r = subprocess.run([sys.executable, "-m", "train", "--time", "-5", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "python -m train: error: time_budget_min (--time, minutes) = -5.0 must be in [0.0, 100000.0]"]
