"""`ensemble`: heads trained on one cache as one classifier, the mean of their probabilities (with
views, then the mean over each image's views, as for any head): the last points of accuracy once the
single heads are chosen, for no training at all.

An ensemble is a run folder of its own, self-contained: its members' head files (member_0.keras, ...:
the format of head.keras, read as numbers only), metrics.json (each member's run, kind, parameters and
own scores; the ensemble's scores) and the test confusion plot, so `predict --run` and `--export`
take it as any run. The members must share the cache (its key and checksum) and the validation split
(seed, val_fraction, train_images). Validation is scored as each member's was: a member refit on
train + validation (refit, or a value chosen on validation) has seen those images, so its share is
its head as chosen, before the refit, whose probabilities its run folder keeps (run_files.VAL_PROBA).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..errors import SettingError
from .config import SPLIT, RunOptions, check_param, refits
from .keras_file import input_width, read_head, write_head
from .run_files import VAL_PROBA, read_metrics, read_val_proba, recorded_sha256
from .runs import evaluate, new_run_dir, plot_confusion, summary_table, write_folder, write_metrics

log = logging.getLogger(__name__)

MAX_MEMBERS = 16                 # heads in one ensemble
MEMBER_FILE = "member_{}.keras"  # an ensemble's head files, in its folder


def head_files(run: str, metrics: dict, refuse) -> list[str]:
    """The head files of a run folder whose metrics.json is `metrics`: head.keras, or an ensemble's members."""
    if metrics["head"] != "ensemble":
        return [os.path.join(run, "head.keras")]
    members = metrics.get("members")
    if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
        raise refuse(f"its members are not a list of 2 to {MAX_MEMBERS} heads")
    return [os.path.join(run, MEMBER_FILE.format(i)) for i in range(len(members))]


class EnsembleHead:
    """The mean of fitted heads' probabilities (members: estimators with predict_proba, the same classes_)."""

    def __init__(self, members):
        self.members = members

    @property
    def classes_(self):
        return self.members[0].classes_

    def predict_proba(self, X) -> np.ndarray:
        return sum(m.predict_proba(X) for m in self.members) / len(self.members)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


def read_members(runs: list) -> list[dict]:
    """Each run folder's metrics and head file, checked as predict checks a run (numbers only, sizes first),
    all on one validation split; SettingError (one line) naming the run otherwise."""
    if not 2 <= len(runs) <= MAX_MEMBERS:
        raise SettingError("run", f"expected 2 to {MAX_MEMBERS} run folders, got {len(runs)}; pass --run once per head",
                           "ensemble")
    seen, out = set(), []
    for run in runs:
        def refuse(why, run=run):
            return SettingError("run", f"{run}: {why}; pass run folders of train-head or sweep on one cache", "ensemble")
        if os.path.realpath(run) in seen:
            raise refuse("given twice")
        seen.add(os.path.realpath(run))
        metrics = read_metrics(run, refuse)
        if metrics["head"] not in ("softmax", "logreg"):
            raise refuse(f"its head is {str(metrics['head'])[:40]!r}, expected softmax or logreg (single heads)")
        hp = metrics.get("hyperparameters")
        if not isinstance(hp, dict) or not os.path.isfile(os.path.join(run, "head.keras")):
            raise refuse("no hyperparameters in metrics.json or no head.keras")
        refit = refits(hp) or hp.get("refit_used") is True or bool(metrics.get("selection"))   # refit="auto": as it did
        out.append({"run": os.path.abspath(run), "kind": metrics["head"], "hyperparameters": hp, "refit": refit,
                    "metrics": metrics,
                    "head": read_head(os.path.join(run, "head.keras"), recorded_sha256(metrics, "head.keras", refuse)),
                    "refuse": refuse})
    want = split_of(out[0])
    for m in out[1:]:
        if split_of(m) != want:
            raise m["refuse"](f"its validation split is {split_of(m)}, the first run's {want}; pass runs of one split")
    return out


def split_of(member: dict) -> dict:
    """The run options that decide a member's validation split (SPLIT), checked as the CLI checks them."""
    try:
        return {k: check_param(k, member["hyperparameters"].get(k)) for k in SPLIT}
    except SettingError as e:
        raise member["refuse"](f"its {e.name} in metrics.json: {e.detail[:80]}") from None


def check_members(members: list, data) -> None:
    """Every member trained on `data`'s cache (key and checksum) for its classes and width."""
    prov = data.provenance
    for m in members:
        theirs, refuse = m["metrics"]["provenance"], m["refuse"]
        same = theirs.get("key") == prov.get("key") and theirs.get("checksum") == prov.get("checksum")
        if not same or prov.get("key") is None:
            raise refuse(f"trained on another cache (key {str(theirs.get('key'))[:16]}, this cache's "
                         f"{str(prov.get('key'))[:16]})")
        if m["metrics"]["class_names"] != data.class_names or m["head"]["kernel"].shape[1] != len(data.class_names):
            raise refuse("its classes are not this cache's")
        if input_width(m["head"]) != data.X.shape[1]:
            raise refuse(f"its head takes {input_width(m['head'])} features, this cache has {data.X.shape[1]}")


def _scores(metrics: dict) -> dict:
    """A member's own accuracies (original view, TTA) per split, as its run recorded them."""
    out = {}
    for split in ("val", "test"):
        m = metrics.get(split) if isinstance(metrics.get(split), dict) else {}
        out[split] = {"accuracy": m.get("accuracy"), "tta": (m.get("tta") or {}).get("accuracy")}
    return out


def _validation(heads: list, members: list, data) -> dict:
    """The ensemble's validation metrics: the mean of each member's probabilities on every view of the
    validation images, a refit member's as it was chosen (its run's VAL_PROBA, as its own validation was
    scored); {"n": 0, "not_scored": why} where a refit member's run has none (made before they were kept)."""
    rows, n_classes = data.rows_val, len(data.class_names)
    kept, missing = [], []
    for m in members:
        if m["refit"]:
            p = read_val_proba(m["run"], (len(rows), data.views, n_classes), m["refuse"],
                               recorded_sha256(m["metrics"], VAL_PROBA, m["refuse"]))
            if p is None:
                missing.append(os.path.basename(m["run"]))
            else:
                kept.append(p)
    if missing or not len(rows):
        return {"n": 0, "not_scored": f"refit member(s) {', '.join(missing)[:200]} keep no {VAL_PROBA}" if missing
                else "no validation split"}
    fresh = [h for h, m in zip(heads, members) if not m["refit"]]     # scored here, the validation rows read once
    parts = kept + ([len(fresh) * data.view_proba(EnsembleHead(fresh), data.X, rows)] if fresh else [])
    p, y = sum(parts) / len(members), data.y[rows]
    out = evaluate(p[:, 0], y, n_classes)
    if data.views > 1:
        out["tta"] = evaluate(p.mean(1), y, n_classes)
    return out


def run_ensemble(data, members: list, opts: RunOptions, timings: dict) -> str:
    """Score the mean of `members` (read_members, on data's cache) on validation and test; write its run
    folder; its path."""
    from .softmax import SoftmaxHead
    from .train import evaluate_head
    folder = new_run_dir(opts.runs_dir, opts.name)
    check_members(members, data)
    heads = [SoftmaxHead.from_file(m["head"], np.arange(len(data.class_names))) for m in members]
    t = time.perf_counter()
    with data.checked():
        scores = evaluate_head(EnsembleHead(heads), data, ("test",))
        val = _validation(heads, members, data)
    timings["evaluate_s"] = time.perf_counter() - t
    hp = members[0]["hyperparameters"]
    metrics = {"head": "ensemble", "views": data.views,
               "hyperparameters": {"members": len(members), **{k: hp.get(k) for k in SPLIT}},
               "members": [{"run": m["run"], "head": m["kind"], "hyperparameters": m["hyperparameters"],
                            "refit": m["refit"], **_scores(m["metrics"])} for m in members],
               "train": {"n": 0}, "val": val, "test": scores["test"], "class_names": data.class_names,
               "cache": os.path.abspath(data.cache_path), "provenance": data.provenance, "timings": timings}

    def fill(tmp):
        t = time.perf_counter()
        for i, m in enumerate(members):
            write_head(os.path.join(tmp, MEMBER_FILE.format(i)), **m["head"])
        plot_confusion(os.path.join(tmp, "confusion_matrix.png"), scores["test"]["confusion_matrix"], data.class_names,
                       f"ensemble of {len(members)} heads: test confusion ({scores['test']['n']} images)")
        timings["write_s"] = time.perf_counter() - t
        write_metrics(tmp, metrics, [MEMBER_FILE.format(i) for i in range(len(members))])
    run_dir = write_folder(folder, fill, auto_name=opts.name is None)[0]
    log.info(f"run {run_dir}: ensemble of {len(members)} heads" + (f" (validation not scored: {val['not_scored']})"
                                                                    if "not_scored" in val else ""))
    if not opts.quiet:
        log.info(summary_table(metrics))
    return run_dir
