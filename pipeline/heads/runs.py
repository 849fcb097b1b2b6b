"""Run folders: metrics, history, plots and the terminal summary of one trained head.

A run folder is written in a hidden folder of its own and renamed into place when complete: two
runs never share a temp folder, and a name already taken is never half-overwritten.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import shutil
import time

import numpy as np

from ..durable import atomic_file, claim_dir, incomplete_dir, make_folder, write_text, writing
from ..errors import SettingError
from .keras_file import write_head
from .run_files import FILE_SHA256, VAL_PROBA, file_digests


def process_age() -> float:
    """Seconds since this process started (Linux /proc), for honest start-up timings."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return float("nan")


RERUN = "re-run the command"       # what a failed write of a run folder leaves to do (nothing was kept)


def new_run_dir(runs_dir: str, name: str | None) -> str:
    make_folder(runs_dir, "runs_dir", "RunOptions")
    if name:
        path = os.path.join(runs_dir, name)
        if os.path.exists(path):
            raise SettingError("name", f"{name}: run folder {path} exists; pass another name (runs are never "
                               "overwritten)", "RunOptions")
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = os.path.join(runs_dir, stamp), 1
    while os.path.exists(path):
        i += 1
        path = os.path.join(runs_dir, f"{stamp}-{i}")
    return path


@contextlib.contextmanager
def png_figure(path: str, **figure_kw):
    """A Matplotlib figure for a PNG, drawn without pyplot (no backend chosen, no figure kept: nothing
    of the caller's process changes) with every label plain text (a class folder named `$\\foo$` is a
    name, not mathtext to parse); saved to `path` through a temp file when the block ends."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    with rc_context({"text.parse_math": False}):
        fig = Figure(**figure_kw)
        yield fig
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_scale() in ("log", "symlog"):
                    _plain_log_labels(axis)
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")


def _plain_log_labels(axis):
    """Plain-number tick labels (1e-04, 100, 200) on a log or symlog axis: Matplotlib's own are mathtext
    (`$\\mathdefault{10^{2}}$`), which plain text would print as typed."""
    from matplotlib.ticker import LogFormatter
    linthresh = getattr(axis.get_transform(), "linthresh", None)      # symlog's linear range
    axis.set_major_formatter(LogFormatter(linthresh=linthresh))
    axis.set_minor_formatter(LogFormatter(linthresh=linthresh))


def evaluate(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Accuracy, log loss, per-class accuracy and confusion matrix of N x C probabilities against y."""
    from sklearn.metrics import confusion_matrix, log_loss
    pred, labels = proba.argmax(1), np.arange(n_classes)
    cm = confusion_matrix(y, pred, labels=labels)
    support = cm.sum(1)
    per_class = np.divide(np.diag(cm), support, out=np.full(n_classes, np.nan), where=support > 0)
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            "loss": float(log_loss(y, proba.astype(np.float64), labels=labels)) if len(y) else float("nan"),
            "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
            "confusion_matrix": cm.tolist()}


def write_results(folder: str, rows: list, columns: list, fmt=str, header=lambda c: c) -> str:
    """The one results-table writer (sweeps and studies), rows best first: results.csv with every field
    of every row, results.md with `columns` (each value through `fmt(column, value)`, each header through
    `header`). Returns the markdown."""
    import io
    keys = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["rank"] + keys, extrasaction="ignore")
    w.writeheader()
    w.writerows({"rank": i + 1, **r} for i, r in enumerate(rows))
    write_text(os.path.join(folder, "results.csv"), buf.getvalue())
    lines = ["| rank | " + " | ".join(header(c) for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {i + 1} | " + " | ".join(fmt(c, r.get(c)) for c in columns) + " |" for i, r in enumerate(rows)]
    md = "\n".join(lines) + "\n"
    write_text(os.path.join(folder, "results.md"), md)
    return md


def write_history(path: str, history: list):
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_learning_curves(path: str, history: list, title: str):
    with png_figure(path, figsize=(10, 4)) as fig:
        _learning_curves(fig, history, title)


def _learning_curves(fig, history: list, title: str):
    epochs = [r["epoch"] for r in history]
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            vals = [r.get(f"{split}_{what}") for r in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, vals, style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.25)   # tight_layout costs a draw


def plot_validation_curve(path: str, selection: dict):
    """Validation accuracy and loss against the regularisation (logreg's C, softmax's l2; log scale),
    the chosen value marked: how the protocol chose."""
    with png_figure(path, figsize=(7, 4)) as fig:
        _validation_curve(fig, selection)


def _validation_curve(fig, selection: dict):
    param = "C" if "chosen_C" in selection else "l2"
    curve, chosen = selection["curve"], selection[f"chosen_{param}"]
    cs = [r[param] for r in curve]
    ax = fig.subplots()
    ax.plot(cs, [r["val_accuracy"] for r in curve], "-o", markersize=3, label="validation accuracy")
    ax.axvline(chosen, color="tab:red", ls="--", label=f"chosen {param} = {chosen:.3g}")
    if param == "C":
        ax.set_xscale("log")
    else:                                   # the penalty grid starts at 0
        ax.set_xscale("symlog", linthresh=min(c for c in cs if c > 0))
    ax.set_xlabel("C (inverse L2 strength)" if param == "C" else "l2 (L2 penalty on the kernel)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    loss = ax.twinx()
    loss.plot(cs, [r["val_loss"] for r in curve], "-s", color="tab:gray", markersize=3, alpha=0.6, label="validation loss")
    loss.set_ylabel("loss")
    ax.legend(loc="lower center", fontsize=8)
    ax.set_title(f"{param} chosen on validation, then refit on train + validation")
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.14, top=0.9)


def plot_confusion(path: str, cm, class_names: list, title: str):
    n = len(class_names)
    with png_figure(path, figsize=(max(5, 0.55 * n + 2), max(4.5, 0.5 * n + 1.5))) as fig:
        _confusion(fig, np.asarray(cm), class_names, title)


def _confusion(fig, cm: np.ndarray, class_names: list, title: str):
    n = len(class_names)
    ax = fig.subplots()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.subplots_adjust(left=0.18, right=0.86, bottom=0.22, top=0.92)   # tight_layout costs a draw


def write_run(run_dir: str, metrics: dict, history: list, class_names: list, head: dict, auto_name: bool = False,
              replace: bool = False, val_proba=None) -> str:
    """Write everything in a temp folder of this run's own, then claim `run_dir` (durably); `head`:
    write_head's arguments. auto_name: `run_dir` is a timestamp, so if another run took it meanwhile
    this one takes `<run_dir>-2`, ...; replace: swap out what `run_dir` holds (a study's best).
    val_proba: a refit head's validation probabilities as it was chosen (images x views x classes), kept
    as VAL_PROBA for an ensemble's validation (run_files.read_val_proba). Nothing in a run folder is a pickle: the
    head is plain numbers in head.keras."""
    def fill(tmp):
        t = time.perf_counter()
        write_head(os.path.join(tmp, "head.keras"), **head)
        write_history(os.path.join(tmp, "history.csv"), history)
        title = f"{metrics['head']} head — test accuracy {metrics['test']['accuracy']:.1%}"
        plot_learning_curves(os.path.join(tmp, "learning_curves.png"), history, title)
        plot_confusion(os.path.join(tmp, "confusion_matrix.png"), metrics["test"]["confusion_matrix"], class_names,
                       f"test confusion ({metrics['test']['n']} images)")
        if metrics.get("selection"):
            plot_validation_curve(os.path.join(tmp, "validation_curve.png"), metrics["selection"])
        if val_proba is not None:
            with open(os.path.join(tmp, VAL_PROBA), "wb") as f:
                np.save(f, np.asarray(val_proba, np.float32), allow_pickle=False)
        metrics["timings"]["write_s"] = time.perf_counter() - t
        write_metrics(tmp, metrics, ["head.keras"] + ([VAL_PROBA] if val_proba is not None else []))
    return write_folder(run_dir, fill, auto_name, replace)[0]


def write_metrics(folder: str, metrics: dict, hashed: list):
    """A run's metrics.json (run_files.read_metrics reads it), last into its temp folder: claim_dir fsyncs the files.
    hashed: the folder's files its readers use, whose SHA-256 it records (FILE_SHA256) for them to check."""
    metrics[FILE_SHA256] = file_digests(folder, hashed)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=str)


def write_folder(folder: str, fill, auto_name: bool = False, replace: bool = False) -> tuple:
    """(the folder claimed, what fill returned): fill(tmp) writes a temp folder of this writer's own, removed
    if it fails, then `folder` is claimed (see claim); a failed write is one line (write_error)."""
    with writing(folder, "runs_dir", RERUN):
        tmp = incomplete_dir(folder)
        try:
            out = fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return claim(tmp, folder, auto_name, replace), out


def claim(tmp: str, folder: str, auto_name: bool = False, replace: bool = False) -> str:
    """Publish the finished `tmp` as `folder` (or, auto_name, the next free `<folder>-N`)."""
    final, i = folder, 1
    while True:
        try:
            claim_dir(tmp, final, replace)
            return final
        except FileExistsError:
            if not auto_name:
                raise SettingError("name", f"{folder} was created by another run while this one worked; this one's "
                                   f"results are kept in {tmp} (rename it to keep them), or pass another name",
                                   "RunOptions") from None
            i += 1
            final = f"{folder}-{i}"


def summary_table(metrics: dict) -> str:
    tta = any((metrics.get(s) or {}).get("tta") for s in ("train", "val", "test"))
    lines = [f"{'split':<6} {'images':>7} {'loss':>8} {'accuracy':>9}" + (f" {'TTA acc':>8}" if tta else "")]
    for split in ("train", "val", "test"):
        m = metrics.get(split)
        if m and m["n"]:
            lines.append(f"{split:<6} {m['n']:>7} {m['loss']:>8.4f} {m['accuracy']:>9.2%}"
                         + (f" {m['tta']['accuracy']:>8.2%}" if m.get("tta") else ""))
    t = metrics["timings"]
    lines.append("timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in t.items()))
    return "\n".join(lines)
