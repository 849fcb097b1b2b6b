"""Sweep: many head configurations on features loaded once, ranked on validation accuracy.

Softmax configurations that share epochs and batch size train together as one `JointSoftmax`: one
pass over the data per epoch for all of them. Results are ranked by the validation accuracy of the
weights each head ends with (its best epoch's with early stopping); the best configuration's head
is evaluated on test and written as a normal run folder `<sweep>-best`; with refit_best, after it is
trained again on train + validation (the protocol's second half for the one chosen head).
"""
from __future__ import annotations

import logging
import os
import stat
import time
import tomllib


from ..errors import PipelineError, SettingError
from .config import AUTO_REFIT_IMAGES, HEAD_PARAMS, PROGRESS, Heartbeat, RunOptions, check_param, key_values, refits
from .data import TrainingData
from ..durable import write_json
from .run_files import KIND_FILE
from .runs import new_run_dir, png_figure, write_folder, write_results
from .joint import JointSoftmax
from .softmax import SoftmaxHead
from .train import finish_run, fit_head, make_head, refit_auto, split_proba

log = logging.getLogger(__name__)

TOML_KEYS = {"head", "random", "params"}
MAX_CONFIG_BYTES = 1 << 20     # a sweep's TOML file (a space of values is a few hundred bytes)


def read_space(head: str, params: list, config: str | None, rand: int | None) -> tuple[str, dict, int | None]:
    """(head, {param: [checked values]}, random N) from `KEY=V1,V2` strings and/or a TOML file
    (head = ..., random = N, [params] key = [values]); every value checked here, before any work."""
    space = {}
    if config:
        try:
            st = os.stat(config)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CONFIG_BYTES:
                raise SettingError("config", f"{config}: not a regular file of at most {MAX_CONFIG_BYTES:,} bytes (a FIFO "
                                   "would be waited on for ever); pass the TOML file itself", "sweep")
            with open(config, "rb") as f:
                doc = tomllib.load(f)
        except RecursionError:
            raise SettingError("config", f"{config}: nested too deeply; fix the TOML", "sweep") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingError("config", f"{config}: not TOML ({e}); expected e.g. `[params]` and under it "
                               "`dropout = [0.2, 0.5]` (the README's sweep.toml)", "sweep") from None
        except OSError as e:
            raise SettingError("config", f"{config}: cannot read ({e.strerror or e}); pass a readable TOML file",
                               "sweep") from None
        unknown = set(doc) - TOML_KEYS
        if unknown:
            raise SettingError("config", f"{config}: unknown key(s) {', '.join(sorted(unknown))}; expected "
                               f"{', '.join(sorted(TOML_KEYS))}", "sweep")
        head, rand = doc.get("head", head), doc.get("random", rand)
        if not isinstance(doc.get("params", {}), dict):
            raise SettingError("config", f"{config}: params must be a table ([params] key = [values]), got "
                               f"{type(doc['params']).__name__}", "sweep")
        if rand is not None and (isinstance(rand, bool) or not isinstance(rand, int)):
            raise SettingError("config", f"{config}: random must be a whole number of configurations, got {rand!r}",
                               "sweep")
        space = {k: v if isinstance(v, list) else [v] for k, v in doc.get("params", {}).items()}
    for item in params:
        key, values = key_values(item, "param")
        space[key] = values
    if head not in HEAD_PARAMS:
        raise SettingError("head", f"expected softmax or logreg, got {head!r}", "sweep")
    for key, values in space.items():
        if key not in HEAD_PARAMS[head]:
            raise SettingError("param", f"{key}: unknown for the {head} head; expected one of "
                               f"{', '.join(HEAD_PARAMS[head])}", "sweep")
        if not values:
            raise PipelineError(f"{key}: no values to try; give at least one, e.g. {key} = [0.5]")
    space = {k: list(dict.fromkeys(check_param(k, v) for v in vs)) for k, vs in space.items()}
    if not space:
        raise SettingError("param", "nothing to sweep: give KEY=V1,V2 values to try, or a sweep.toml config", "sweep")
    if rand is not None and int(rand) < 1:
        raise SettingError("random", f"expected N >= 1, got {rand}", "sweep")
    return head, space, None if rand is None else int(rand)


def configurations(space: dict, rand: int | None, seed: int, base: dict) -> list[dict]:
    """The grid (or `rand` random picks of it, without repeats); unswept parameters keep their `base` value."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler
    grid = list(ParameterGrid(space))
    if rand is not None and rand < len(grid):
        grid = list(ParameterSampler(space, rand, random_state=seed))
    return [dict(base, **point) for point in grid]


def train_all(head: str, configs: list, data: TrainingData, opts: RunOptions):
    """Yield (config index, fitted head)."""
    n_classes = len(data.class_names)
    if head == "logreg":
        for i, cfg in enumerate(configs):
            yield i, fit_head(make_head("logreg", cfg, opts, data), data)
        return
    groups = {}
    for i, cfg in enumerate(configs):
        if refits(cfg) or cfg["hidden"]:             # a refit, or Keras' train step: trained alone (refit="auto"
            alone = dict(cfg, refit=False) if cfg["refit"] == "auto" else cfg     # refits the one chosen: _sweep)
            yield i, fit_head(make_head("softmax", alone, opts, data), data)
            continue
        groups.setdefault((cfg["epochs"], cfg["batch_size"], cfg["standardize"], cfg["normalize"]), []).append(i)
    rv = data.rows_val
    for (epochs, batch_size, standardize, normalize), idx in groups.items():
        sweep = JointSoftmax(dropouts=[configs[i]["dropout"] for i in idx], lrs=[configs[i]["lr"] for i in idx],
                             l2s=[configs[i]["l2"] for i in idx], inits=[configs[i]["init"] for i in idx],
                             schedules=[configs[i]["lr_schedule"] for i in idx],
                             epochs=epochs, batch_size=batch_size, early_stopping=opts.early_stopping,
                             patience=opts.patience, standardize=standardize, seed=opts.seed,
                             normalize=normalize, blocks=data.blocks())
        sweep.fit(data.X, data.y, data.X[rv], data.y[rv], n_classes=n_classes, rows=data.rows_train)
        for k, i in enumerate(idx):
            yield i, SoftmaxHead.from_joint(sweep, k, list(range(n_classes)))


def write_table(folder: str, rows: list, keys: list) -> str:
    """results.csv and results.md of a sweep; the first ten rows of the markdown (for the terminal)."""
    cols = keys + [c for c in ("val_tta_accuracy",) if c in rows[0]] + ["val_accuracy", "val_loss", "train_accuracy",
                                                                         "best_epoch"] + \
        [c for c in ("epochs_trained", "lr_used") if c in rows[0]]
    md = write_results(folder, rows, cols, lambda c, v: f"{v:.4f}" if isinstance(v, float) else str(v))
    return "\n".join(md.splitlines()[:12])


def plot_sweep(path: str, rows: list, keys: list):
    with png_figure(path, figsize=(8, max(3, 0.28 * len(rows) + 1)), layout="tight") as fig:
        _sweep_bars(fig, rows, keys)


def _sweep_bars(fig, rows: list, keys: list):
    labels = [", ".join(f"{k}={r[k]}" for k in keys) for r in rows]
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["val_accuracy"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    lo = min(r["val_accuracy"] for r in rows)
    ax.set_xlim(max(0, lo - 0.05), min(1, max(r["val_accuracy"] for r in rows) + 0.02))
    ax.set_xlabel("validation accuracy")
    ax.set_title(f"sweep: {len(rows)} configurations, best first")


def run_sweep(data: TrainingData, head: str, space: dict, rand: int | None, base: dict, opts: RunOptions,
              timings: dict, refit_best: bool = False) -> tuple[str, str]:
    """Train every configuration, write the ranked table and plot; (sweep folder, best run folder).
    refit_best: the best configuration (unless it refits already) is trained again on train +
    validation before its test score (the head's refit_on)."""
    with data.checked():                       # a verified cache is not scanned again
        return _sweep(data, head, space, rand, base, opts, timings, refit_best)


def _sweep(data, head, space, rand, base, opts, timings, refit_best):
    if not len(data.rows_val):
        raise SettingError("val_fraction", "0: a sweep ranks configurations on validation data; use a fraction > 0",
                          "RunOptions")
    configs = configurations(space, rand, opts.seed, base)
    folder = new_run_dir(opts.runs_dir, opts.name)              # both names checked free before any work
    best_dir = new_run_dir(opts.runs_dir, os.path.basename(folder) + "-best")
    t, beat = time.perf_counter(), Heartbeat(len(configs))
    trained, rows = {}, []
    for i, fitted in train_all(head, configs, data, opts):
        trained[i] = fitted
        if pace := beat.due(len(trained)):                    # a long sweep's line at most every PROGRESS_EVERY_S
            PROGRESS.info(f"sweep: {len(trained)}/{len(configs)} configurations trained in {pace[0]:.0f} s, "
                          f"ETA {pace[1]:.0f} s")
        last = fitted.history_[-1]
        best = fitted.best_epoch_ if head == "softmax" else last["epoch"]
        kept = fitted.history_[best - 1] if head == "softmax" and opts.early_stopping else last
        rows.append({**configs[i], "val_accuracy": kept["val_accuracy"], "val_loss": kept["val_loss"],
                     "train_accuracy": kept["train_accuracy"], "best_epoch": best, "_i": i,
                     **(fitted.trained_with() if head == "softmax" else {})})
        if data.views > 1:       # ranked as it will be reported: with test-time augmentation (a refit
            tta = split_proba(fitted, data, "val", data.X, data.rows_val)[1]      # head: as it was chosen)
            rows[-1]["val_tta_accuracy"] = float((tta.argmax(1) == data.y[data.rows_val]).mean())
    timings["train_s"] = time.perf_counter() - t
    rank = "val_tta_accuracy" if data.views > 1 else "val_accuracy"
    rows.sort(key=lambda r: (-r[rank], r["val_loss"], not refits(r)))   # a refit row ties with its twin that is
    # not refit (the same first fit, scored before the refit) and wins the tie: it learned from more images
    keys = list(space)
    def fill(tmp):
        table = write_table(tmp, rows, keys)
        plot_sweep(os.path.join(tmp, "sweep.png"), rows, keys)
        write_json(os.path.join(tmp, KIND_FILE), {"kind": "sweep", "head": head, "space": space})
        return table
    folder, table = write_folder(folder, fill, auto_name=opts.name is None)
    best_dir = folder + "-best"
    log.info(f"sweep {folder}: {len(configs)} {head} configurations in {timings['train_s']:.1f} s\n{table}")
    best = rows[0]
    params, chosen, more = {p: best[p] for p in HEAD_PARAMS[head]}, trained[best["_i"]], None
    auto = head == "softmax" and params["refit"] == "auto" and refit_auto(data)
    if (refit_best or auto) and not refits(params):
        t = time.perf_counter()
        log.info(f"{head} head: the configuration best on validation, refit on train + validation")
        chosen = chosen.refit_on(data.X, data.y, rows=data.train_and_val_rows())
        timings["refit_s"] = time.perf_counter() - t
        params = dict(params, refit=True) if head == "softmax" else params
        more = {"refit": "the configuration best on validation, trained again on train + validation after the sweep"
                + ("" if refit_best else f" (refit=auto: at most {AUTO_REFIT_IMAGES:,} labelled images)")}
    run = finish_run(data, head, params, chosen, opts, timings, name=os.path.basename(best_dir), more=more)
    return folder, run
