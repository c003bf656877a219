"""python -m train: train a registered model and write a run folder."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.config import check_threads

from .data import DataError
from edge_runtime.cli import command


def key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def build_parser() -> argparse.ArgumentParser:
    from .models import DEFAULT_MODEL, REGISTRY  # no TensorFlow import until parsing is done
    models = "\n".join(f"  {n:8s} {e.description}" for n, e in REGISTRY.items())
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a facial-emotion model on FER2013 and write a run folder "
                    "(model.keras, manifest.json, history.csv, reports and plots).",
        epilog=f"models:\n{models}\n\nexamples:\n  python -m train --model thesis --epochs 30 --out runs/thesis\n"
               "  python -m train --params runs/grid/best_params.json --out runs/grid-best\n"
               "  python -m train --init models/cbilstm --val-fraction 0 --epochs 10 --lr 3e-4 --set reframe=0.5 "
               "--out runs/cbilstm-device\n"
               "  python -m train --resume runs/cbilstm          # after a reboot, a kill or a lost session\n\n"
               "After every epoch a checkpoint goes to .<run>.resume/ beside the run folder, so a killed run\n"
               "loses at most the epoch in progress.\n\n"
               "exit codes: 0 trained, scored and written; 2 bad arguments or data (one line on stderr); an existing\n"
               "--out folder is replaced only when the new run is complete",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="data root: train/+test/, train/+validation/ or fer2013.csv "
                                                 "(default: $FER_DATA, else ../shared/data/fer2013)")
    p.add_argument("--model", default=None, choices=sorted(REGISTRY),
                   help=f"registered model to train (default: {DEFAULT_MODEL})")
    p.add_argument("--out", help="run folder to write (default: runs/<model>)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the model's recipe)")
    p.add_argument("--time", type=float, metavar="MINUTES",
                   help="time budget for fitting + BatchNorm re-estimation: the epochs that fit are planned "
                        "from the first two, at most --epochs, and the cosine schedule ends there "
                        "(for machines slower than the one the recipe was tuned on)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's recipe)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the model's recipe)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs on validation accuracy")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="architecture override, e.g. --param row_hidden=64 (JSON values; repeatable)")
    p.add_argument("--set", action="append", type=key_value, default=[], metavar="KEY=VALUE", dest="recipe_set",
                   help="training-recipe override, e.g. --set schedule=cosine --set label_smoothing=0.1")
    p.add_argument("--params", type=Path, help="JSON file of overrides, e.g. best_params.json from "
                                               "python -m train.grid (model, architecture and recipe keys)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train/ carved out (stratified) for checkpointing and early stopping "
                        "(default 0.1); 0 = refit on all of train/ for exactly --epochs, keeping the "
                        "final weights (choose the recipe with a validated run first)")
    p.add_argument("--fraction", metavar="SHARE", type=float, default=1.0,
                   help="thin train/ and test/ to this stratified share, for quick runs (default 1.0)")
    p.add_argument("--seed", type=int, default=1337, help="seed for the split, init and augmentation")
    p.add_argument("--init-seed", type=int, help="another seed for init, shuffling and augmentation only: "
                                                 "the same validation split, so runs compare (default: --seed)")
    p.add_argument("--teacher", type=Path, metavar="FILE",
                   help="distil: train on a teacher ensemble's soft labels from python -m train.distill, "
                        "weighted by --set distill=W (default 0.7) against the one-hot labels")
    p.add_argument("--init", type=Path, metavar="RUN",
                   help="fine-tune: start from this run folder's weights (same model and parameters), "
                        "e.g. --init models/cbilstm --epochs 10 --lr 3e-4 --set reframe=0.5")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the interrupted run that was writing the run folder RUN, after its last "
                        "finished epoch, with its own settings (only --threads and --quiet may be given); "
                        "the result is the one the unbroken run would have written")
    p.add_argument("--threads", metavar="N", type=int, help="TensorFlow CPU threads, 1 .. the CPUs (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args):
    from .recipe import TrainConfig
    from .models import DEFAULT_MODEL, REGISTRY, Recipe

    overrides = {}
    if args.params:
        try:
            overrides = json.loads(args.params.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read --params {args.params}: {e}") from e
    model = args.model or overrides.pop("model", None) or DEFAULT_MODEL
    overrides.pop("model", None)
    if model not in REGISTRY:
        raise DataError(f"unknown model {model!r} in --params")
    recipe_keys = set(Recipe.__dataclass_fields__)
    recipe = {k: v for k, v in overrides.items() if k in recipe_keys}
    params = {k: v for k, v in overrides.items() if k not in recipe_keys}
    params.update(dict(args.param))
    recipe.update(dict(args.recipe_set))
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("patience", "patience"),
                      ("time", "time_budget_min")):
        if getattr(args, flag) is not None:
            recipe[key] = getattr(args, flag)
    if args.no_augment:
        recipe["augment"] = {}
    return TrainConfig(model=model, params=params, recipe=recipe, seed=args.seed, init_seed=args.init_seed,
                       val_fraction=args.val_fraction, fraction=args.fraction, progress=not args.quiet,
                       teacher=str(args.teacher) if args.teacher else None,
                       init=str(args.init) if args.init else None)


def resumed_config(args, parser):
    """--resume RUN: the interrupted run's own settings; any other training flag is an error."""
    from .recipe import TrainConfig
    from .resume import read_state
    given = [a for a in vars(args) if a not in ("resume", "threads", "quiet")
             and getattr(args, a) != parser.get_default(a)]
    if given:
        raise ValueError(f"--resume continues a run with its own settings: drop --{given[0].replace('_', '-')}")
    state = read_state(args.resume)
    c = state["settings"]["config"]
    c["holdout"] = tuple(c["holdout"]) if c.get("holdout") else None
    cfg = TrainConfig(**{**c, "progress": not args.quiet})
    return cfg, state["settings"]["data"], state


@command("python -m train", bad_input=(DataError, ValueError, TypeError), tf_log="2")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    state = None
    if args.resume:
        cfg, args.data, state = resumed_config(args, parser)
        args.out = args.resume
    else:
        cfg = config_from_args(args)
    cfg.resolved()  # validate overrides before TensorFlow starts
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    from .fit import train_run
    from .threads import tf_threads
    tf_threads(args.threads)
    if args.out is not None and not args.out.strip():  # an unset $OUT must not mean the default folder
        raise ValueError("--out is empty: name the run folder to write")
    out = Path(args.out or f"runs/{cfg.model}")
    m = train_run(cfg, args.data, out, resume=state)
    t, val = m.metrics["test"], m.metrics["val_accuracy"]
    val = (f"best val accuracy {val:.2%} (epoch {m.metrics['best_epoch']})" if val is not None
           else f"refit, no validation ({m.metrics['epochs_run']} epochs)")
    print(f"\n{m.model}: test accuracy {t['accuracy']:.2%}, macro-F1 {t['macro_f1']:.3f}, {val}, "
          f"trained in {m.train_seconds / 60:.1f} min")
    print(f"run folder: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
