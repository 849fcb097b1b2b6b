"""`python -m pipeline sweep`: many head configurations on features loaded once.

Softmax configurations that share epochs and batch size train together as one batched model
(`heads.SoftmaxHeads`): one pass over the data per epoch for all of them. Results are ranked by
the validation accuracy of the weights each head ends with (its best epoch's with
--early-stopping); the best configuration's head is evaluated on test and written as a normal run.
"""
from __future__ import annotations

import csv
import itertools
import os
import shutil
import sys
import time
import tomllib

import numpy as np

from .config import PipelineError
from .train import HEAD_PARAMS, check_param, check_run_options, finish_run, fit_head, load_features, make_head
from .train import add_arguments as add_train_arguments

TOML_KEYS = {"head", "random", "params"}


def add_arguments(p):
    add_train_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try, e.g. dropout=0.2,0.5 (repeatable)")
    p.add_argument("--random", type=int, default=None, metavar="N", help="sample N configurations instead of the grid")
    p.add_argument("--config", default=None, help="TOML file: head = ..., random = N, [params] key = [values]")


def parse_space(args) -> tuple[str, dict, int | None]:
    """(head, {param: [values]}, random N) from --param options or a TOML file."""
    head, space, rand = args.head, {}, args.random
    if args.config:
        try:
            with open(args.config, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise PipelineError(f"--config {args.config}: cannot read ({e}); fix the TOML") from None
        unknown = set(doc) - TOML_KEYS
        if unknown:
            raise PipelineError(f"--config {args.config}: unknown key(s) {', '.join(sorted(unknown))}; expected "
                                f"{', '.join(sorted(TOML_KEYS))}")
        head, rand = doc.get("head", head), doc.get("random", rand)
        if not isinstance(doc.get("params", {}), dict):
            raise PipelineError(f"--config {args.config}: params must be a table ([params] key = [values]), got "
                                f"{type(doc['params']).__name__}")
        if rand is not None and (isinstance(rand, bool) or not isinstance(rand, int)):
            raise PipelineError(f"--config {args.config}: random must be a whole number of configurations, got {rand!r}")
        space = {k: v if isinstance(v, list) else [v] for k, v in doc.get("params", {}).items()}
    for item in args.param:
        key, sep, values = item.partition("=")
        space[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not space[key.strip()]:
            raise PipelineError(f"--param {item}: expected KEY=V1,V2,..., e.g. dropout=0.2,0.5")
    for key, values in space.items():
        if not values:
            raise PipelineError(f"{key}: no values to try; give at least one, e.g. {key} = [0.5]")
    if head not in HEAD_PARAMS:
        raise PipelineError(f"head: expected softmax or logreg, got {head!r}")
    for key in space:
        if key not in HEAD_PARAMS[head]:
            raise PipelineError(f"--param {key}: unknown for the {head} head; expected one of "
                                f"{', '.join(HEAD_PARAMS[head])}")
    space = {k: [check_param(k, v) for v in vs] for k, vs in space.items()}
    if not space:
        raise PipelineError("nothing to sweep: pass --param KEY=V1,V2 or --config sweep.toml")
    if rand is not None and int(rand) < 1:
        raise PipelineError(f"--random: expected N >= 1, got {rand}")
    return head, space, None if rand is None else int(rand)


def configurations(head: str, space: dict, rand: int | None, seed: int, base: dict) -> list[dict]:
    """The grid (or N random picks of it); parameters not swept keep their `base` value."""
    grid = [dict(base, **dict(zip(space, combo))) for combo in itertools.product(*space.values())]
    if rand is not None and rand < len(grid):
        pick = np.random.default_rng(seed).choice(len(grid), rand, replace=False)
        grid = [grid[i] for i in sorted(pick)]
    return grid


def train_all(head: str, configs: list, data: dict, n_classes: int, args):
    """Yield (config index, fitted head object, index of this config inside it)."""
    if head == "logreg":
        for i, cfg in enumerate(configs):
            yield i, fit_head(make_head("logreg", cfg, args), data, n_classes), 0
        return
    from .heads import SoftmaxHeads
    groups = {}
    for i, cfg in enumerate(configs):
        groups.setdefault((cfg["epochs"], cfg["batch_size"]), []).append(i)
    for (epochs, batch_size), idx in groups.items():
        heads = SoftmaxHeads(dropouts=[configs[i]["dropout"] for i in idx], lrs=[configs[i]["lr"] for i in idx],
                             epochs=epochs, batch_size=batch_size, early_stopping=args.early_stopping,
                             patience=args.patience, seed=args.seed)
        fit_head(heads, data, n_classes)
        for k, i in enumerate(idx):
            yield i, heads, k


def write_table(folder: str, rows: list, keys: list):
    cols = keys + ["val_accuracy", "val_loss", "train_accuracy", "best_epoch"]
    with open(os.path.join(folder, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rank"] + cols)
        w.writeheader()
        w.writerows({"rank": r + 1, **{c: row.get(c) for c in cols}} for r, row in enumerate(rows))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| rank | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {r + 1} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for r, row in enumerate(rows)]
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines[:12])


def plot_sweep(path: str, rows: list, keys: list):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [", ".join(f"{k}={r[k]}" for k in keys) for r in rows]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(rows) + 1)))
    ax.barh(range(len(rows)), [r["val_accuracy"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    lo = min(r["val_accuracy"] for r in rows)
    ax.set_xlim(max(0, lo - 0.05), min(1, max(r["val_accuracy"] for r in rows) + 0.02))
    ax.set_xlabel("validation accuracy")
    ax.set_title(f"sweep: {len(rows)} configurations, best first")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args):
    from .runs import new_run_dir, process_age
    timings = {"startup_s": process_age()}
    check_run_options(args)
    head, space, rand = parse_space(args)
    base = {k: check_param(k, getattr(args, k)) for k in HEAD_PARAMS[head]}
    configs = configurations(head, space, rand, args.seed, base)
    folder = new_run_dir(args.runs_dir, args.name)             # both names checked free before any work
    best_dir = new_run_dir(args.runs_dir, os.path.basename(folder) + "-best")
    t = time.perf_counter()
    data, class_names, cache_path, prov = load_features(args)
    timings["load_s"] = time.perf_counter() - t
    if not len(data["val"][2]):
        raise PipelineError("--val-fraction 0: a sweep ranks configurations on validation data; pass --val-fraction > 0")
    t = time.perf_counter()
    trained, rows = {}, []
    for i, heads, k in train_all(head, configs, data, len(class_names), args):
        trained[i] = (heads, k)
        last = heads.history_[k][-1]
        best = heads.best_epoch_[k] if head == "softmax" else last["epoch"]
        kept = heads.history_[k][best - 1] if head == "softmax" and args.early_stopping else last
        rows.append({**configs[i], "val_accuracy": kept["val_accuracy"], "val_loss": kept["val_loss"],
                     "train_accuracy": kept["train_accuracy"], "best_epoch": best, "_i": i})
    timings["train_s"] = time.perf_counter() - t
    rows.sort(key=lambda r: (-r["val_accuracy"], r["val_loss"]))
    keys = list(space)
    shutil.rmtree(folder + ".tmp", ignore_errors=True)
    os.makedirs(folder + ".tmp")
    table = write_table(folder + ".tmp", rows, keys)
    plot_sweep(os.path.join(folder + ".tmp", "sweep.png"), rows, keys)
    os.replace(folder + ".tmp", folder)
    print(f"sweep {folder}: {len(configs)} {head} configurations in {timings['train_s']:.1f} s\n{table}", file=sys.stderr)
    best = rows[0]
    heads, k = trained[best["_i"]]
    params = {p: best[p] for p in HEAD_PARAMS[head]}
    run = finish_run(args, head, params, heads, k, data, class_names, cache_path, prov, timings,
                     name=os.path.basename(best_dir))
    print(run)
