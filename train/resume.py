"""Training that survives being killed: a checkpoint after every epoch, ``python -m train --resume RUN``.

The checkpoint lives beside the run folder, in ``.<run>.resume/`` (the run folder itself is written
only when the run is complete). It holds what an unbroken run would carry into the next epoch: every
model variable (weights, BatchNorm statistics, the dropout layers' seed states), every optimizer
variable (step count, Adam moments, the weight EMA), the learning-rate schedule's planned end, the
best-so-far model and the callbacks' state (early stopping, checkpointing, the time budget, the epoch
log), plus the run's settings. On resume the input pipeline skips the batches already seen (its
shuffling and augmentation are seeded), so a resumed run computes what the unbroken one would have
(``tests/test_resume.py`` checks the weights are equal). The folder is removed when the run completes.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_runtime.manifest import atomic_write_json
from edge_runtime.outputs import pid_alive, read_ledger, staging_dir

STATE = "state.json"
FORMAT = 1


class ResumeError(ValueError):
    pass


def resume_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.resume"


def read_state(out_dir) -> dict:
    """The checkpoint of an interrupted run of ``out_dir`` (ResumeError if there is none to resume)."""
    d = resume_dir(out_dir)
    try:
        state = json.loads((d / STATE).read_text())
    except FileNotFoundError:
        raise ResumeError(f"--resume {out_dir}: no interrupted run to resume (no checkpoint in {d})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"--resume {out_dir}: cannot read its checkpoint {d / STATE}: {e}") from None
    if read_ledger(d) is None or state.get("format") != FORMAT:
        raise ResumeError(f"--resume {out_dir}: {d} is not a checkpoint this version of train wrote")
    if pid_alive(int(state.get("pid", 0))) and int(state["pid"]) != os.getpid():
        raise ResumeError(f"--resume {out_dir}: process {state['pid']} is still training it")
    return state


def prepare(out_dir, resume: bool) -> Path:
    """The checkpoint folder for a run of ``out_dir``: kept (``resume``) or new. A fresh run never
    discards another run's checkpoint: it says how to resume it or how to start over."""
    d = resume_dir(out_dir)
    if resume:
        return d
    if d.exists():
        if read_ledger(d) is None:
            raise ResumeError(f"{d} exists and is not a checkpoint train wrote: move it away")
        try:
            state = json.loads((d / STATE).read_text())
            epoch, pid = state["epoch"], int(state["pid"])
        except (OSError, ValueError, KeyError):
            epoch, pid = 0, 0
        if pid and pid_alive(pid):
            raise ResumeError(f"--out {out_dir} is being trained by process {pid}")
        if epoch:
            raise ResumeError(f"--out {out_dir} has an interrupted run (checkpoint after epoch {epoch} in {d}): "
                              f"continue it with --resume {out_dir}, or remove {d} to start over")
        shutil.rmtree(d)  # a checkpoint folder from a run killed before its first epoch ended
    d.parent.mkdir(parents=True, exist_ok=True)
    return staging_dir(d.parent, d.name)


def finish(out_dir) -> None:
    d = resume_dir(out_dir)
    if d.is_dir() and read_ledger(d) is not None:
        shutil.rmtree(d, ignore_errors=True)


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def _assign(variables, values, what: str) -> None:
    variables = list(variables)
    if len(variables) != len(values):
        raise ResumeError(f"the checkpoint's {what} has {len(values)} variables, the model {len(variables)}")
    for v, x in zip(variables, values):
        if tuple(v.shape) != tuple(x.shape):
            raise ResumeError(f"the checkpoint's {what} variable {v.path} has shape {x.shape}, not {tuple(v.shape)}")
        v.assign(x)


def checkpoint_callback(folder: Path, settings: dict, *, epoch_log, budget=None, schedule=None, early=None,
                        best=None, best_path: Path | None = None, swap=None, restore: dict | None = None):
    """A Keras callback, last in the list: after each epoch it writes the state the next epoch needs;
    with ``restore`` (a read checkpoint) it first puts that state back, at the start of training."""
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if restore is not None:  # after the other callbacks reset themselves
                self.restore()

        def restore(self) -> None:
            state = restore
            arrays = np.load(folder / state["arrays"])
            n_model, n_opt = state["counts"]["model"], state["counts"]["optimizer"]
            opt = self.model.optimizer
            opt.build(self.model.trainable_variables)
            _assign(self.model.variables, [arrays[f"m{i}"] for i in range(n_model)], "model")
            _assign(opt.variables, [arrays[f"o{i}"] for i in range(n_opt)], "optimizer")
            if schedule is not None:
                schedule.decay_steps.assign(float(arrays["schedule"]))
            epoch_log.rows = list(state["history_rows"])
            self.history = {k: list(v) for k, v in state["history"].items()}
            cb = state["callbacks"]
            if early is not None:
                early.wait, early.best, early.best_epoch = cb["early"]["wait"], cb["early"]["best"], cb["early"]["best_epoch"]
            if best is not None:
                best.best = cb["best"]
                if state.get("best_model"):
                    shutil.copyfile(folder / state["best_model"], best_path)
            if budget is not None:
                budget.restore(cb["budget"])
            if swap is not None:  # the variables were saved with the EMA swapped in (or not): say which
                swap._ema_weights_in_model = bool(cb["ema_in_model"])

        history: dict[str, list[float]] = {}  # every epoch's logs, the resumed ones included

        def on_epoch_end(self, epoch, logs=None):
            done = epoch + 1
            for k, v in (logs or {}).items():
                self.history.setdefault(k, []).append(float(v))
            opt = self.model.optimizer
            arrays = {f"m{i}": x for i, x in enumerate(_values(self.model.variables))}
            arrays.update({f"o{i}": x for i, x in enumerate(_values(opt.variables))})
            if schedule is not None:
                arrays["schedule"] = np.asarray(float(schedule.decay_steps.numpy()))
            name = f"state-{done}.npz"
            with open(folder / f".{name}.tmp", "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(folder / f".{name}.tmp", folder / name)
            best_model = None
            if best_path is not None and best_path.exists():
                best_model = f"best-{done}.keras"
                shutil.copyfile(best_path, folder / best_model)
            state = {"format": FORMAT, "pid": os.getpid(), "epoch": done, "saved": time.time(),
                     # early stopping, the budget or the last epoch ended it: nothing is left to fit
                     "stopped": bool(self.model.stop_training) or done >= int(self.params.get("epochs") or 0),
                     "settings": settings, "arrays": name, "best_model": best_model,
                     "counts": {"model": len(self.model.variables), "optimizer": len(opt.variables)},
                     "history_rows": epoch_log.rows, "history": self.history,
                     "callbacks": {
                         "early": {"wait": early.wait, "best": _plain(early.best), "best_epoch": early.best_epoch}
                         if early is not None else None,
                         "best": _plain(best.best) if best is not None else None,
                         "budget": budget.state() if budget is not None else None,
                         "ema_in_model": bool(getattr(swap, "_ema_weights_in_model", False))}}
            atomic_write_json(folder / STATE, state)
            for old in folder.iterdir():  # the previous epoch's files, now superseded
                if old.name.startswith(("state-", "best-")) and old.name not in (name, best_model):
                    old.unlink(missing_ok=True)

    return EpochCheckpoint()


def _plain(x):
    return None if x is None else float(x)  # +-inf (nothing seen yet) goes to JSON as +-Infinity


def settings_of(cfg, data_root) -> dict:
    """What --resume needs to rebuild the run: the TrainConfig and the data root."""
    from .data import resolve_root
    return {"config": asdict(cfg), "data": str(Path(resolve_root(data_root)).resolve())}


__all__ = ["ResumeError", "resume_dir", "read_state", "prepare", "finish", "checkpoint_callback", "settings_of"]
