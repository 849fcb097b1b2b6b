"""Stage two: `python -m pipeline train-head` trains one head on cached features.

Features are loaded once; a stratified hold-out of train (--val-fraction) is for model selection;
the test split is evaluated once, at the end, in full. Everything lands in a run folder.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from .cache import load_cache
from .config import PipelineError

# --- defaults: the notebook's head --------------------------------------------------------------
HEAD = "softmax"        # softmax (Dropout -> Dense softmax, Keras) | logreg (scikit-learn)
DROPOUT = 0.5           # dropout rate before the softmax layer
LR = 1e-3               # Adam learning rate
BATCH_SIZE = 250        # head training batch size
EPOCHS = 20             # passes over the training features
PATIENCE = 3            # --early-stopping: epochs without a better val loss before stopping
C = 1.0                 # logreg inverse regularisation strength
MAX_ITER = 200          # logreg solver iterations
VAL_FRACTION = 0.1      # stratified hold-out of train for model selection
SEED = 0                # makes a run reproducible
RUNS_DIR = "data/runs"  # where run folders go
# ---------------------------------------------------------------------------------------------------

RANGES = {  # name: (type, check, what the check means)
    "dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"), "lr": (float, lambda v: 0 < v < math.inf, "> 0 and finite"),
    "epochs": (int, lambda v: v >= 1, ">= 1"), "batch_size": (int, lambda v: v >= 1, ">= 1"),
    "C": (float, lambda v: 0 < v < math.inf, "> 0 and finite"), "max_iter": (int, lambda v: v >= 1, ">= 1"),
    "val_fraction": (float, lambda v: 0 <= v < 1, "in [0, 1)"), "patience": (int, lambda v: v >= 1, ">= 1"),
    "seed": (int, lambda v: 0 <= v < 2 ** 63, ">= 0"),
}
HEAD_PARAMS = {"softmax": ("dropout", "lr", "epochs", "batch_size"), "logreg": ("C", "max_iter")}


def check_param(name: str, value):
    kind, ok, what = RANGES[name]
    try:
        if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
            raise ValueError
        v = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise PipelineError(f"{name}: expected a {kind.__name__} {what}, got {value!r}") from None
    if not ok(v):
        raise PipelineError(f"{name}: expected {what}, got {v}; pick a value {what}")
    return v


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--cache", default=None, help="cache file (default: the one the feature options select)")
    p.add_argument("--head", default=HEAD, choices=("softmax", "logreg"))
    p.add_argument("--dropout", type=float, default=DROPOUT)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--early-stopping", action="store_true", help="stop on validation loss, keep the best epoch")
    p.add_argument("--patience", type=int, default=PATIENCE)
    p.add_argument("--C", type=float, default=C, dest="C")
    p.add_argument("--max-iter", type=int, default=MAX_ITER)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--seed", type=int, default=SEED, help="seed of the head (and of --weights random)")
    p.add_argument("--name", default=None, help="run folder name (default: a timestamp)")
    p.add_argument("--runs-dir", default=RUNS_DIR)


def resolve_cache(args) -> str:
    """--cache PATH, or the cache the feature options select (which says how to build it if missing)."""
    if args.cache:
        return args.cache
    from . import find_cache
    from .cli import feature_config
    return find_cache(feature_config(args))


def stratified_split(y: np.ndarray, fraction: float, seed: int):
    """(train rows, val rows): `fraction` of each class held out, at random, reproducibly."""
    rng = np.random.default_rng(seed)
    val = [rng.choice(np.flatnonzero(y == c), int(round((y == c).sum() * fraction)), replace=False)
           for c in np.unique(y)]
    val = np.sort(np.concatenate(val)) if val else np.array([], np.int64)
    return np.setdiff1d(np.arange(len(y)), val), val


def load_features(args):
    """(data, class_names, cache_path, provenance); data = {split: (X, y, rows)}: train and val are
    row subsets of the cached train split (no copy of the big array), test is whole."""
    path = resolve_cache(args)
    cache = load_cache(path, splits=["train", "test"])
    Xtr, ytr, meta = cache["train"]
    Xte, yte, _ = cache["test"]
    Xtr, Xte = Xtr.astype(np.float32, copy=False), Xte.astype(np.float32, copy=False)
    rows_tr, rows_val = stratified_split(ytr, check_param("val_fraction", args.val_fraction), args.seed)
    if len(np.unique(ytr[rows_tr])) < 2:
        raise PipelineError(f"--val-fraction {args.val_fraction}: leaves {len(rows_tr)} training rows of "
                            f"{len(np.unique(ytr[rows_tr]))} class(es) out of {len(ytr)}; lower it (a head needs two "
                            "classes to train on)")
    data = {"train": (Xtr, ytr, rows_tr), "val": (Xtr, ytr, rows_val), "test": (Xte, yte, np.arange(len(yte)))}
    prov = {k: v for k, v in meta.items() if k not in ("ids", "split")}
    return data, list(meta["class_names"]), path, prov


def fit_head(head, data, n_classes):
    X, y, rows = data["train"]
    Xv, yv, rv = data["val"]
    return head.fit(X, y, Xv[rv], yv[rv], n_classes=n_classes, rows=rows)


def make_head(head: str, params: dict, args):
    from .heads import LogRegHead, SoftmaxHeads
    if head == "softmax":
        return SoftmaxHeads(dropouts=(params["dropout"],), lrs=(params["lr"],), epochs=params["epochs"],
                            batch_size=params["batch_size"], early_stopping=args.early_stopping,
                            patience=args.patience, seed=args.seed)
    return LogRegHead(C=params["C"], max_iter=params["max_iter"], seed=args.seed)


def save_head_fn(head, k: int = 0):
    """Both heads are saved as head.keras (plain numbers: nothing in a run folder is ever unpickled)."""
    def save(folder):
        from .keras_file import write_head
        write_head(os.path.join(folder, "head.keras"), **head.head_file(k))
    return save


def finish_run(args, kind, params, head, k, data, class_names, cache_path, prov, timings, name=None) -> str:
    """Evaluate head k on train/val/test, write the run folder, print the summary."""
    from .runs import evaluate, new_run_dir, summary_table, write_run
    t = time.perf_counter()
    n_classes = len(class_names)
    metrics = {"head": kind, "hyperparameters": {**params, "seed": args.seed, "val_fraction": args.val_fraction,
                                                 **({"early_stopping": args.early_stopping, "patience": args.patience,
                                                     "best_epoch": head.best_epoch_[k]} if kind == "softmax" else {})}}
    proba = {}
    for split, (X, y, rows) in data.items():
        if id(X) not in proba:  # train and val share one array: one pass over it
            proba[id(X)] = head.head_proba(X, k)
        metrics[split] = evaluate(proba[id(X)][rows], y[rows], n_classes) if len(rows) else {"n": 0}
    timings["evaluate_s"] = time.perf_counter() - t
    metrics.update(class_names=class_names, cache=os.path.abspath(cache_path), provenance=prov, timings=timings)
    run_dir = write_run(new_run_dir(args.runs_dir, name or args.name), metrics, head.history_[k], class_names,
                        save_head_fn(head, k))
    print(f"run {run_dir}: {kind} head " + ", ".join(f"{p}={v}" for p, v in params.items()), file=sys.stderr)
    print(summary_table(metrics), file=sys.stderr)
    return run_dir


def check_run_options(args):
    """The options every head command shares, checked before any work."""
    for name in ("seed", "val_fraction", "patience"):
        check_param(name, getattr(args, name))
    if os.path.exists(args.runs_dir) and not os.path.isdir(args.runs_dir):
        raise PipelineError(f"--runs-dir {args.runs_dir}: is a file, not a folder; pass a folder (created if missing)")
    if args.name is not None and (not args.name.strip() or os.sep in args.name or args.name in (".", "..")):
        raise PipelineError(f"--name {args.name!r}: expected a plain folder name (no {os.sep})")


def main(args):
    from .runs import process_age
    timings = {"startup_s": process_age()}
    check_run_options(args)
    params = {p: check_param(p, getattr(args, p)) for p in HEAD_PARAMS[args.head]}
    t = time.perf_counter()
    data, class_names, cache_path, prov = load_features(args)
    timings["load_s"] = time.perf_counter() - t
    head = fit_head(make_head(args.head, params, args), data, len(class_names))
    timings["train_s"] = head.train_seconds_
    run_dir = finish_run(args, args.head, params, head, 0, data, class_names, cache_path, prov, timings)
    print(run_dir)
