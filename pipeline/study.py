"""`python -m pipeline study`: a grid over stage-one settings (interpolation x image size x layers and
pooling x views ...) and head settings, each distinct cache built once (or a hit; caches that differ
only in layers or pooling share one forward pass), every head configuration trained on it, and one
table (results.csv, results.md) and one plot (study.png): validation and test accuracy with a 95%
interval against cost (extraction img/s, cache MB, head seconds).

The best configuration is chosen on validation (with test-time augmentation when the cache has
views), never on test; its head is written as a run folder `<study>-best`. A killed study resumes:
built caches are hits and every finished (cache, head) row is kept in `<study>/rows/`. Two run
options are axes too: train_images=N1,N2 (a learning curve) and seed=S1,S2 (repeats: other validation
splits, subsets, initial weights and dropout draws), where a configuration is ranked by its mean over the
seeds and every row carries that mean and spread.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time

import numpy as np

from .durable import make_folder, read_json, write_json, writing
from .hashing import tag
from .errors import SettingError
from .features import FeatureConfig
from .features.cache import read_provenance
from .features.config import axes, validate
from .features.extract import extract_many
from .heads import logreg, softmax
from .heads.config import HEAD_PARAMS, RunOptions, auto_rules, check_param, key_values, refits
from .heads.data import load_training_data
from .heads.run_files import KIND_FILE, folder_kind
from .heads.train import REFIT_VALIDATION, finish_run
from .study_report import accuracy, describe, head_settings, plot_learning_curve, plot_study, wilson, write_tables
from .study_rows import ROWS, finished_row, write_row

log = logging.getLogger(__name__)

FEATURE_AXES = tuple(axes())   # the stage-one settings a grid may vary, as features/config.py declares them
RUN_AXES = ("train_images", "seed")   # run options a grid may vary: the training-set size, the seed (repeats)
RESUME = "re-run the same command: built caches and finished rows are kept"   # after a failed write


def parse_grid(items: list, heads: list) -> tuple[dict, dict, dict]:
    """({stage-one setting: [values]}, {head: {param: [values]}}, {run option: [values]}) from `KEY=V1,V2`
    items; `heads` the kinds. train_images=N1,N2 is a learning curve (heads on stratified subsets, smallest
    first), seed=S1,S2 repeats every row with each seed (in the order given)."""
    if not heads:
        raise SettingError("heads", "expected softmax and/or logreg, got none", "study")
    for h in heads:
        if h not in HEAD_PARAMS:
            raise SettingError("heads", f"expected softmax and/or logreg, got {h!r}", "study")
    features, params, runs, settings = {}, {}, {}, axes()
    for item in items:
        key, values = key_values(item, "grid", lambda k: settings[k].metadata["comma_list"] if k in settings else False)
        if key in RUN_AXES:
            runs[key] = list(dict.fromkeys(check_param(key, v) for v in values))
            if key == "train_images":
                runs[key].sort()
        elif key in settings:
            parse = settings[key].metadata["parse"]
            try:
                features[key] = [parse(v) for v in values]
            except ValueError:
                raise SettingError("grid", f"{item}: expected {parse.__name__} values for {key}", "study") from None
        elif any(key in HEAD_PARAMS[h] for h in heads):
            params[key] = values
        else:
            raise SettingError("grid", f"{key}: unknown; expected a stage-one setting ({', '.join(FEATURE_AXES)}), "
                               f"{' or '.join(RUN_AXES)}, or a parameter of the {'/'.join(heads)} head(s)", "study")
    head_grids = {h: {k: list(dict.fromkeys(check_param(k, v) for v in vs))    # 0.5 and .5 are one value
                      for k, vs in params.items() if k in HEAD_PARAMS[h]} for h in heads}
    return features, head_grids, runs


def feature_configs(base: FeatureConfig, axes: dict) -> list:
    """Every combination of the stage-one axes on top of `base`, each validated (one line if not)."""
    from sklearn.model_selection import ParameterGrid
    cfgs = [validate(dataclasses.replace(base, **point)) for point in ParameterGrid(axes)] if axes else [validate(base)]
    return list({tag(dataclasses.asdict(c)): c for c in cfgs}.values())    # spellings of one setting: once


def head_configs(head_grids: dict, base_params: dict) -> list:
    from sklearn.model_selection import ParameterGrid
    out = []
    for kind, grid in head_grids.items():
        base = {p: base_params[p] for p in HEAD_PARAMS[kind]}
        out += [(kind, {**base, **point}) for point in ParameterGrid(grid)] if grid else [(kind, base)]
    return list({tag(c): c for c in out}.values())


def row_settings(kind: str, opts: RunOptions) -> dict:
    """The run options that change a head's row: the validation split and seed, and for softmax early stopping."""
    out = {"seed": opts.seed, "val_fraction": opts.val_fraction}
    if opts.train_images is not None:      # a subset of the train split, validation carved from it
        out["train_images"] = {"n": opts.train_images, "of": "train split, before validation"}
    if kind == "softmax":
        out.update(early_stopping=opts.early_stopping, patience=opts.patience if opts.early_stopping else None)
    return out


def row_tag(cache: str, kind: str, params: dict, opts: RunOptions) -> str:
    """A finished row's key: the cache (its file name holds its key), the head and everything that changes it,
    for a value chosen on validation ("auto") the search that chose it (its grid, ...), for a setting "auto"
    the constants of its rule, for a head refit after it was chosen how its validation is scored."""
    searches = {name: module.search_settings() for name, module in (("C", logreg), ("l2", softmax))
                if params.get(name) == "auto"}
    rules = auto_rules(params) if kind == "softmax" else {}
    refit = [{"refit_validation": REFIT_VALIDATION}] if refits(params) or params.get("refit") == "auto" else []
    return tag([cache, kind, params, row_settings(kind, opts)] + ([searches] if searches else [])
               + ([{"rules": rules}] if rules else []) + refit)


def run_head(data, kind: str, params: dict, opts: RunOptions) -> tuple[dict, object]:
    """Train one head; its row of metrics (val and test, original view and averaged over views)."""
    from .heads.train import evaluate_head, fit_head, make_head
    t = time.perf_counter()
    with data.checked():                       # a verified cache is not scanned again
        head = fit_head(make_head(kind, params, opts, data), data)
        seconds = time.perf_counter() - t
        scores = evaluate_head(head, data, ("val", "test"))
    row = {"head": kind, **{f"head_{k}": v for k, v in params.items()}, "head_s": round(seconds, 2)}
    for split, m in scores.items():
        if not m["n"]:
            continue
        row.update({f"{split}_n": m["n"], f"{split}_accuracy": m["accuracy"], f"{split}_loss": m["loss"]})
        if "tta" in m:
            row[f"{split}_tta_accuracy"] = m["tta"]["accuracy"]
    for name in ("C", "l2"):
        if (getattr(head, "selection_", None) or {}).get(f"chosen_{name}") is not None:
            row[f"{name}_chosen"] = head.selection_[f"chosen_{name}"]
    if kind == "softmax":                               # what its "auto" settings came to
        row.update(head.trained_with())
    return row, head


def _cache_row(path: str, cfg: FeatureConfig) -> dict:
    meta = read_provenance(path)
    cost = meta.get("extraction") or {}
    n = sum(meta["split_sizes"].values())
    return {**{k: getattr(cfg, k) for k in FEATURE_AXES}, "cache": os.path.basename(path),
            "cache_mb": round(os.path.getsize(path) / 1e6, 1), "features": meta.get("key_payload", {}).get("layer"),
            "extract_img_per_s": round(cost["images"] / cost["seconds"], 2) if cost.get("seconds") and cost.get("images") == n
            else None, "caches_in_pass": cost.get("caches_in_pass")}


def _check_folders(folder: str, best_dir: str, name: str):
    """Refuse, before any work, names that hold something other than this study (a sweep, a run)."""
    kind = folder_kind(folder)
    if kind not in (None, "study"):
        raise SettingError("name", f"{name}: {folder} holds a {kind if kind != 'other' else 'folder'} that is not a "
                           "study; pass another name", "RunOptions")
    best = folder_kind(best_dir)
    if best not in (None, "run") or (best == "run" and _study_of(best_dir)[0] != name):
        raise SettingError("name", f"{name}: {best_dir} exists and is not this study's best run; pass another name",
                           "RunOptions")


def _study_of(run_dir: str):
    m = read_json(os.path.join(run_dir, "metrics.json"))
    return (m.get("study"), m.get("study_row")) if m is not None else (None, None)


def run_study(base: FeatureConfig, axes: dict, heads: dict, base_params: dict, opts: RunOptions, quiet=False,
              runs: dict | None = None) -> str:
    """Build (or hit) every cache of the grid, train every head on each (with each value of the run axes
    in `runs`: every training-set size of runs["train_images"], a learning curve; every seed of
    runs["seed"]), write the table and plots."""
    if opts.val_fraction == 0:
        raise SettingError("val_fraction", "0: a study chooses its best configuration on validation data; use a "
                           "fraction > 0", "RunOptions")
    cfgs = feature_configs(base, axes)
    configs = head_configs(heads, base_params)
    runs = runs or {}
    sizes, seeds = runs.get("train_images") or [opts.train_images], runs.get("seed") or [opts.seed]
    name = opts.name or "study-" + tag([[dataclasses.asdict(c) for c in cfgs], configs,
                                         sorted(row_settings("softmax", opts).items())]
                                        + ([sizes] if "train_images" in runs else [])
                                        + ([{"seeds": seeds}] if "seed" in runs else []))
    folder, best_dir = os.path.join(opts.runs_dir, name), os.path.join(opts.runs_dir, f"{name}-best")
    _check_folders(folder, best_dir, name)
    make_folder(os.path.join(folder, ROWS), "runs_dir", "RunOptions")
    with writing(folder, "runs_dir", RESUME):
        write_json(os.path.join(folder, KIND_FILE), {"kind": "study"})
    log.info(f"study {folder}: {len(cfgs)} cache(s) x {len(configs)} head configuration(s)"
             + (f" x {len(sizes)} training-set sizes" if "train_images" in runs else "")
             + (f" x {len(seeds)} seeds" if "seed" in runs else ""))
    paths = extract_many(cfgs, quiet=quiet)                 # each distinct cache once; shared passes together
    rows, kept = [], {}    # kept: the best configuration's first-seed head trained in this run (the best run's)
    for i, (cfg, path) in enumerate(zip(cfgs, paths), 1):
        log.info(f"study: heads on cache {i}/{len(cfgs)} {os.path.basename(path)}")
        crow, data = _cache_row(path, cfg), None
        for size, (kind, params) in itertools.product(sizes, configs):      # a configuration's seeds together
            group, first = [], None
            for seed in seeds:
                o = dataclasses.replace(opts, train_images=size, seed=seed)
                row_id = row_tag(crow["cache"], kind, params, o)
                settings = {**crow, "head": kind, **{f"head_{k}": v for k, v in params.items()}, "train_images": size,
                            "row": row_id}                    # what the row id is a hash of: never read back
                row = finished_row(folder, row_id, settings)
                if row is None:
                    data = data or load_training_data(path, opts.val_fraction, opts.seed)
                    part = data.with_train_images(size, seed, opts.val_fraction)      # the split and subset of this seed
                    row, head = run_head(part, kind, params, o)
                    row = {**settings, **row, "views_k": data.views, "train_n": len(part.originals(part.rows_train)),
                           "labelled_n": len(part.originals(part.rows_train)) + len(part.rows_val)}
                    with writing(folder, "runs_dir", RESUME):
                        write_row(folder, row_id, row)
                    if seed == seeds[0]:
                        first = {"row": row, "head": head, "data": part}
                group.append({**row, "seed": seed})
            rows += group
            rank = _rank(group[0], _mean_val(group))                 # as rank_over_seeds ranks its configuration
            if first and (not kept or rank > kept["rank"]):
                kept = {**first, "rank": rank}
    rank_over_seeds(rows, seeds)                          # selected as it is reported
    for r in rows:
        for split in ("val", "test"):
            r[f"{split}_ci95"] = [round(v, 4) for v in wilson(accuracy(r, split), r[f"{split}_n"])]
    with writing(folder, "runs_dir", RESUME):
        write_tables(folder, rows)
        plot_study(os.path.join(folder, "study.png"), rows)
        if len(sizes) > 1:
            plot_learning_curve(os.path.join(folder, "learning_curve.png"), rows)
    best = rows[0]
    if _study_of(best_dir) != (name, best["row"]):   # the best head as a run folder, ready for predict
        opts = dataclasses.replace(opts, train_images=best.get("train_images"), seed=best["seed"])
        params = {k.removeprefix("head_"): v for k, v in head_settings(best).items()}
        if kept and kept["row"]["row"] == best["row"]:
            data, head = kept["data"], kept["head"]
        else:                                        # trained in an earlier run of the study: train it again
            data = load_training_data(os.path.join(base.cache_dir, best["cache"]), opts.val_fraction, opts.seed,
                                      opts.train_images)
            _, head = run_head(data, best["head"], params, opts)
        with data.checked():
            finish_run(data, best["head"], params, head, opts, {"train_s": best["head_s"]}, name=f"{name}-best",
                       replace=True, more={"study": name, "study_row": best["row"]})
    log.info(f"study: best on validation: {describe(best)} -> {best_dir}")
    return folder


def rank_over_seeds(rows: list, seeds: list):
    """Sort `rows` best on validation first: each configuration (cache, head, its settings, training-set size)
    by its validation accuracy averaged over `seeds`, its rows in the order of `seeds`; with several seeds
    every row gets its configuration's seeds_n and the mean and standard deviation over them (val_seeds_mean,
    test_seeds_mean, test_seeds_sd). One seed: the rows ranked on their own validation accuracy. Equal
    validation: a head refit on train + validation first (it shares its un-refit twin's validation by
    construction; over three seeds it gained +0.1..+0.4 test points at every size measured:
    docs/full-cifar10.md, "Refit on small data"), then the configurations' order; a configuration's rows
    stay together."""
    groups, place = {}, {}               # row -> (its configuration's mean validation, the configuration's index)
    for r in rows:
        groups.setdefault(json.dumps([r["cache"], r["head"], r.get("train_images"), head_settings(r)],
                                     sort_keys=True), []).append(r)
    for i, g in enumerate(groups.values()):
        val = _mean_val(g)
        place.update((id(r), (val, i)) for r in g)
        if len(seeds) > 1:                 # every configuration has a row per seed
            test = [accuracy(r, "test") for r in g]
            for r in g:
                r.update(seeds_n=len(g), val_seeds_mean=val, test_seeds_mean=float(np.mean(test)),
                         test_seeds_sd=float(np.std(test, ddof=1)))
    rows.sort(key=lambda r: (tuple(-v for v in _rank(r, place[id(r)][0])), place[id(r)][1], seeds.index(r["seed"])))


def _mean_val(group: list) -> float:
    """A configuration's validation accuracy: the mean over its rows (one per seed)."""
    return float(np.mean([accuracy(r, "val") for r in group]))


def _rank(row: dict, val: float) -> tuple:
    """How a row ranks given its validation accuracy `val`, higher first: then a refit head above its un-refit twin."""
    return val, bool(row.get("refit_used"))
