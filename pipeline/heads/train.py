"""Stage two: train one head on cached features and write its run folder.

A stratified hold-out of train (val_fraction) is for model selection; the test split is evaluated
once, at the end, in full. Everything lands in a run folder (runs.py).
"""
from __future__ import annotations

import logging
import os
import time

from ..errors import PipelineError
from .config import RunOptions, refit_for
from .data import TrainingData
from .logreg import LogRegHead
from .runs import evaluate, new_run_dir, summary_table, write_run
from .softmax import SoftmaxHead

log = logging.getLogger(__name__)

REFIT_VALIDATION = 2    # how a refit head's validation is scored (split_proba); a study keys refit rows by it:
                        # 1 the original view only, 2 the head as chosen (before_refit_), views averaged


def make_head(kind: str, params: dict, opts: RunOptions, data: TrainingData):
    """An unfitted head of `kind` with `params`, knowing every class of the cache and its layer blocks;
    refit="auto" decided here (refit_auto)."""
    classes, blocks = list(range(len(data.class_names))), data.blocks()
    refit = refit_auto(data) if params.get("refit") == "auto" else params.get("refit")
    if kind == "softmax":
        return SoftmaxHead(dropout=params["dropout"], lr=params["lr"], l2=params["l2"], epochs=params["epochs"],
                           batch_size=params["batch_size"], standardize=params["standardize"],
                           early_stopping=opts.early_stopping, patience=opts.patience, seed=opts.seed, classes=classes,
                           normalize=params["normalize"], blocks=blocks, init=params["init"],
                           lr_schedule=params["lr_schedule"], hidden=params["hidden"], refit=refit)
    return LogRegHead(C=params["C"], max_iter=params["max_iter"], seed=opts.seed, classes=classes,
                      normalize=params["normalize"], blocks=blocks)


def refit_auto(data: TrainingData) -> bool:
    """What refit="auto" comes to on `data`: by its labelled images (config.refit_for; a head counts rows, and a
    cache's views are rows), never without validation images (as the head itself decides)."""
    return len(data.rows_val) > 0 and refit_for("auto", data.labelled_images())


def fit_head(head, data: TrainingData):
    """Fit on every view of the training images; validation on the original views. A head that refits
    (C or l2 "auto", refit=True: the head knows) refits on every view of the training and validation images."""
    rv = data.rows_val
    try:
        return head.fit(data.X, data.y, data.X[rv], data.y[rv], rows=data.rows_train,
                        refit_rows=data.train_and_val_rows())
    except ValueError as e:      # the estimator's own checks (scikit-learn's InvalidParameterError is one)
        raise PipelineError(f"{str(e).splitlines()[0]}; change the option") from None


def split_proba(head, data: TrainingData, split: str, X, rows, every_row_proba=None, views: dict | None = None):
    """Probabilities of `head` for the original-view `rows` of a split (N x C) and, with views, their
    mean over each image's views (or None). Validation of a head refit on train + validation is
    scored as it was chosen: the head before the refit (before_refit_), with views as any other;
    `views` (a dict), if given, keeps those probabilities per view (N x K x C) under the split's name."""
    if split == "val" and getattr(head, "before_refit_", None) is not None:
        head, every_row_proba = head.before_refit_, None
    if every_row_proba is not None:
        return every_row_proba[rows], data.tta(every_row_proba, rows) if data.views > 1 else None
    p = data.view_proba(head, X, rows)
    if views is not None:
        views[split] = p
    return p[:, 0], p.mean(1) if data.views > 1 else None


def train_head(data: TrainingData, kind: str, params: dict, opts: RunOptions, timings: dict) -> str:
    """Train a `kind` head with `params` on `data`; its run folder (its name checked free before any work)."""
    new_run_dir(opts.runs_dir, opts.name)
    with data.checked():                       # a verified cache is not scanned again
        head = fit_head(make_head(kind, params, opts, data), data)
        timings["train_s"] = head.train_seconds_
        return finish_run(data, kind, params, head, opts, timings)


def evaluate_head(head, data: TrainingData, splits=("train", "val", "test"), views: dict | None = None) -> dict:
    """The one evaluation of a fitted head: per split, its metrics (evaluate) on the original views and,
    with views, `tta` (the mean over each image's views); {"n": 0} for an empty split. `views`: see split_proba."""
    out, proba, n_classes = {}, {}, len(data.class_names)
    for split, (X, y, rows) in data.splits().items():
        if split not in splits:
            continue
        if not len(rows):
            out[split] = {"n": 0}
            continue
        if "train" in splits and id(X) not in proba:  # train and val share one array: one pass over it
            proba[id(X)] = head.predict_proba(X)
        p, tta = split_proba(head, data, split, X, rows, proba.get(id(X)), views)
        out[split] = evaluate(p, y[rows], n_classes)
        if tta is not None:                   # test-time augmentation: the mean over each image's views
            out[split]["tta"] = evaluate(tta, y[rows], n_classes)
    return out


def finish_run(data: TrainingData, kind: str, params: dict, head, opts: RunOptions, timings: dict,
               name: str | None = None, replace: bool = False, more: dict | None = None) -> str:
    """Evaluate a fitted head on train/val/test, write the run folder, print the summary. replace: the
    folder `name` is swapped out if it exists (a study's best); more: more fields for metrics.json."""
    t = time.perf_counter()
    extra = {"early_stopping": opts.early_stopping, "patience": opts.patience, **head.trained_with(),
             "best_epoch": head.best_epoch_} if kind == "softmax" else {}
    metrics = {"head": kind, "views": data.views,
               "hyperparameters": {**params, "seed": opts.seed, "val_fraction": opts.val_fraction,
                                   "train_images": opts.train_images, **extra}}
    views = {}
    metrics.update(evaluate_head(head, data, views=views))
    if getattr(head, "selection_", None):
        metrics["selection"] = head.selection_
    timings["evaluate_s"] = time.perf_counter() - t
    metrics.update(class_names=data.class_names, cache=os.path.abspath(data.cache_path), provenance=data.provenance,
                   timings=timings, **(more or {}))
    name = name or opts.name
    folder = os.path.join(opts.runs_dir, name) if replace else new_run_dir(opts.runs_dir, name)
    chosen = views.get("val") if getattr(head, "before_refit_", None) is not None else None   # not in head.keras
    run_dir = write_run(folder, metrics, head.history_, data.class_names, head.head_file(), auto_name=name is None,
                        replace=replace, val_proba=chosen)
    shown = {**params, **({"epochs": f"auto ({head.epochs_})"} if params.get("epochs") == "auto" else {}),
             **({"lr": f"auto ({head.lr_:.2g})"} if params.get("lr") == "auto" else {}),
             **({"refit": f"auto ({head.before_refit_ is not None})"} if params.get("refit") == "auto" else {})}
    log.info(f"run {run_dir}: {kind} head " + ", ".join(f"{p}={v}" for p, v in shown.items()))
    if not opts.quiet:
        log.info(summary_table(metrics))
    return run_dir
