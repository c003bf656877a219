"""Training within a time budget: ``python -m train --time MINUTES`` (as Ultralytics' ``time``).

The recipe's epoch count was tuned on one machine (74 epochs in 58 min with native bf16); on a CPU
without bf16 or AVX512 the same epochs take hours. With a budget, the first two epochs are timed,
the number of epochs that fit is planned from them (``--epochs`` stays the upper limit), and the
cosine schedule is stretched or shrunk to end exactly there, so a shorter run still anneals to its
floor instead of being cut off at a high learning rate. After that the plan follows the epochs' pace
(``epoch_pace``: a slow epoch, from a busy machine or a suspended VM, counts at most twice the
median), shrinks when the pace says the planned epochs no longer fit, grows only early and on a
real change, and the schedule's end moves with every plan. One slow epoch costs about the time it
took; a lasting slowdown can overrun by about one slow epoch. The budget covers what
``train_seconds`` counts: fitting plus the BatchNorm re-estimation that follows it.
"""
from __future__ import annotations

import math
import statistics
import time

# The BatchNorm re-estimation is one forward pass over the training faces: measured at 0.55-0.6 of a
# training epoch (26 s vs 47 s with bf16; 104 s vs ~171 s in float32 on AVX2).
BN_PASS_EPOCHS = 0.6
PLANNING_EPOCHS = 2  # the plan is set after each of these; the first includes graph tracing
# later plans use the mean epoch time of the last few, each counted at most twice their median: one
# outlier cannot end a run, and alternating fast and slow epochs cannot swing the plan
RATE_EPOCHS = 15
EXTEND_UNTIL = 0.8  # the plan may grow only before this share of it: late growth would raise the LR again


def plan_epochs(budget_s: float, elapsed_s: float, epoch_s: float, done: int, max_epochs: int,
                reserve_s: float = 0.0) -> int:
    """How many epochs the run should have in all: the ``done`` ones, plus as many more of
    ``epoch_s`` seconds as fit in what is left of ``budget_s`` after ``elapsed_s`` and ``reserve_s``
    (work still to come after fitting); never fewer than ``done``, never more than ``max_epochs``."""
    more = math.floor((budget_s - elapsed_s - reserve_s) / max(epoch_s, 1e-9))
    return max(done, min(max_epochs, done + more))


def stretchable_cosine(initial_lr: float, peak_lr: float, warmup_steps: int, decay_steps: int, alpha: float):
    """Keras' ``CosineDecay`` with linear warm-up (the default recipe's schedule, same formula),
    with the decay length in a variable, so a plan made during training can move its end."""
    warm = float(max(1, warmup_steps))
    import keras
    from keras import ops

    class StretchableCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self):
            self.decay_steps = keras.Variable(float(max(1, decay_steps)), dtype="float32", trainable=False,
                                              name="cosine_decay_steps")

        def set_total_steps(self, steps: int) -> None:
            """End the schedule (at its floor) after ``steps`` optimizer steps, warm-up included."""
            self.decay_steps.assign(float(max(1, steps - warmup_steps)))

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm_lr = initial_lr + (peak_lr - initial_lr) * step / warm
            done = ops.clip((step - warmup_steps) / self.decay_steps, 0.0, 1.0)
            decayed = peak_lr * ((1 - alpha) * 0.5 * (1 + ops.cos(math.pi * done)) + alpha)
            return ops.where(step < warmup_steps, warm_lr, decayed)

        def get_config(self):
            return {"initial_lr": initial_lr, "peak_lr": peak_lr, "warmup_steps": warmup_steps,
                    "decay_steps": float(ops.convert_to_numpy(self.decay_steps)), "alpha": alpha}

    return StretchableCosine()


def epoch_pace(epoch_seconds: list[float]) -> float:
    """Expected seconds per epoch: the mean of the last ones, each counted at most twice their median.
    The first epoch also traces the graphs, so it counts only while it is the only one."""
    recent = epoch_seconds[1:][-RATE_EPOCHS:] or epoch_seconds
    cap = 2 * statistics.median(recent)
    return sum(min(t, cap) for t in recent) / len(recent)


def budget_callback(budget_s: float, max_epochs: int, steps_per_epoch: int, schedule=None,
                    bn_pass: bool = False):
    """A Keras callback that plans the epoch count from the timed first epochs, moves the end of
    ``schedule`` (a ``stretchable_cosine``) to it, and stops training there. Make it right before
    ``fit()``: its clock starts when it is made. ``.report()`` says what was planned, for the manifest."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.planned, self.epoch_seconds, self.replans = max_epochs, [], []
            # the clock starts here, just before fit(), as train_seconds' does: fit() spends seconds
            # building its input pipeline before the first callback
            self.t0 = self.t_last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # an epoch's time is from the previous one's end: validation, checkpoints and logs included
            now = time.perf_counter()
            self.epoch_seconds.append(now - self.t_last)
            self.t_last = now
            done, latest = epoch + 1, self.epoch_seconds[-1]
            epoch_s = epoch_pace(self.epoch_seconds)
            reserve = BN_PASS_EPOCHS * epoch_s if bn_pass else 0.0
            fits = plan_epochs(budget_s, now - self.t0, epoch_s, done, max_epochs, reserve)
            grow = fits >= self.planned + max(2, self.planned // 20) and done < EXTEND_UNTIL * self.planned
            if done <= PLANNING_EPOCHS or fits < self.planned or grow:
                what = f"epoch {done} took {latest:.0f} s" if done <= PLANNING_EPOCHS else \
                    f"epochs now take {epoch_s:.0f} s"
                print(f"time budget {budget_s / 60:g} min: {what} -> {fits} epoch(s) planned "
                      f"(at most {max_epochs})", flush=True)
                if done > PLANNING_EPOCHS:
                    self.replans.append([done, fits])
                self.planned = fits
                if schedule is not None:  # the cosine's end moves with every plan
                    schedule.set_total_steps(self.planned * steps_per_epoch)
            if done >= self.planned:
                self.model.stop_training = True

        def state(self) -> dict:
            """What a resumed run needs to go on with the same plan (train/resume.py)."""
            return {"planned": self.planned, "epoch_seconds": self.epoch_seconds, "replans": self.replans,
                    "elapsed": time.perf_counter() - self.t0}

        def restore(self, state: dict) -> None:
            """Go on from ``state()``: the time already spent counts against the budget."""
            self.planned, self.epoch_seconds = int(state["planned"]), list(state["epoch_seconds"])
            self.replans = [list(r) for r in state["replans"]]
            self.t_last = time.perf_counter()
            self.t0 = self.t_last - float(state["elapsed"])

        def report(self) -> dict:
            """The plan (where the schedule ends), its revisions [epoch, planned] and every epoch's time."""
            return {"minutes": budget_s / 60, "planned_epochs": self.planned, "max_epochs": max_epochs,
                    "replans": self.replans, "epoch_seconds": [round(s, 1) for s in self.epoch_seconds]}

    return TimeBudget()
