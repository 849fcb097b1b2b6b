"""The study's report: results.csv and results.md (best on validation first), study.png (accuracy
with 95% intervals against cost) and, for a grid over training-set sizes, learning_curve.png."""
from __future__ import annotations

import json

import numpy as np

from .heads.runs import png_figure, write_results

Z95 = 1.959964


def wilson(acc: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy measured on n images."""
    if not n:
        return float("nan"), float("nan")
    centre = (acc + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * np.sqrt(acc * (1 - acc) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return float(centre - half), float(centre + half)


def accuracy(row: dict, split: str) -> float:
    """A row's accuracy as it is reported: averaged over views where the cache has them."""
    tta = row.get(f"{split}_tta_accuracy")
    return row[f"{split}_accuracy"] if tta is None else tta      # 0.0 is an accuracy too


def head_settings(row: dict) -> dict:
    """A row's head parameters as its columns hold them (head_dropout, ...; head_s is its time, not a setting)."""
    return {k: v for k, v in row.items() if k.startswith("head_") and k != "head_s"}


def describe(row: dict) -> str:
    acc = accuracy(row, "test")
    lo, hi = row["test_ci95"]
    seeds = (f"; over {row['seeds_n']} seeds: validation {row['val_seeds_mean']:.1%}, test {row['test_seeds_mean']:.1%}"
             f" +- {row['test_seeds_sd']:.1%} (SD)" if row.get("seeds_n") else "")
    return (f"{row['head']} on {row['cache']}: test {acc:.1%} (95% {lo:.1%}..{hi:.1%}"
            f"{', TTA' if row.get('test_tta_accuracy') else ''}{seeds})")


COLUMNS = ["interpolation", "image_size", "layer", "views", "head", "labelled_n", "train_n", "seed", "val_accuracy",
           "val_tta_accuracy", "test_accuracy", "test_tta_accuracy", "test_ci95", "seeds_n", "val_seeds_mean",
           "test_seeds_mean", "test_seeds_sd", "C_chosen", "l2_chosen", "epochs_trained", "lr_used", "refit_used",
           "extract_img_per_s", "cache_mb", "head_s"]


def _fmt(col: str, v) -> str:
    if v is None or v == "":
        return ""
    if col.endswith(("accuracy", "_seeds_mean", "_seeds_sd")):
        return f"{v:.1%}"
    if col.endswith("ci95"):
        return f"{v[0]:.1%}..{v[1]:.1%}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def write_tables(folder: str, rows: list):
    """results.csv (every field) and results.md (the columns people compare), best on validation first."""
    params = sorted(k for k in {k for r in rows for k in head_settings(r)}
                    if len({json.dumps(r.get(k)) for r in rows if k in r}) > 1 or k == "head_C")
    cols = [c for c in COLUMNS[:5] + params + COLUMNS[5:] if any(r.get(c) not in (None, "") for r in rows)
            and (c != "seed" or len({r.get(c) for r in rows}) > 1)]              # the seed where it varies
    write_results(folder, rows, cols, _fmt, lambda c: c.removeprefix("head_") if c in params else c)


def plot_study(path: str, rows: list):
    """Validation (hollow) and test (filled) accuracy with 95% intervals against cost: extraction speed
    coloured by interpolation, cache size coloured by layers; marker: head (o softmax, s logreg)."""
    with png_figure(path, figsize=(14, 6), layout="tight") as fig:
        _study_points(fig, rows)


def _study_points(fig, rows: list):
    from matplotlib import colormaps
    acc, tab20 = accuracy, colormaps["tab20"]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, xkey, group, xlabel in ((axes[0], "extract_img_per_s", "interpolation", "extraction, images/s (log)"),
                                    (axes[1], "cache_mb", "layer", "cache size, MB (log)")):
        names = list(dict.fromkeys(str(r[group]) for r in rows))
        colours = {n: tab20(i % 20) for i, n in enumerate(names)}     # any number of values
        for i, r in enumerate(rows):
            if not r.get(xkey):
                continue
            c, m = colours[str(r[group])], "o" if r["head"] == "softmax" else "s"
            for split, face, off in (("val", "none", 0.985), ("test", c, 1.0)):
                y, (lo, hi) = acc(r, split), r[f"{split}_ci95"]
                ax.errorbar(r[xkey] * _jitter(i) * off, y, yerr=[[y - lo], [hi - y]], fmt=m, mfc=face, mec=c, ecolor=c,
                            alpha=0.6, capsize=2, ms=5)
        for name in names:
            ax.plot([], [], "o", color=colours[name], label=f"{group} {name}"[:60])
        ax.plot([], [], "ko", mfc="none", label="validation (hollow)")
        ax.plot([], [], "ks", label="logreg (square)")
        best = rows[0]
        if best.get(xkey):
            ax.annotate("best on validation", (best[xkey] * _jitter(0), acc(best, "test")), textcoords="offset points",
                        xytext=(-20, 14), fontsize=8, arrowprops={"arrowstyle": "->"})
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("accuracy (mean over views where the cache has them), 95% interval")
    seeds = len({r.get("seed") for r in rows})
    fig.suptitle(f"study: {len(rows) // seeds} configurations" + (f" x {seeds} seeds" if seeds > 1 else "")
                 + f" ({rows[0]['test_n']} test images)")


def _jitter(i: int) -> float:
    """Row i's x factor on the study plot: points that share x stay apart."""
    return 1 + 0.04 * (i % 7 - 3) / 3


def plot_learning_curve(path: str, rows: list):
    """Test accuracy (95% interval) against the number of training images, a line per cache and head
    configuration: what more data buys. With several seeds a point is their mean, its bar their range."""
    with png_figure(path, figsize=(8, 5), layout="tight") as fig:
        _learning_lines(fig, rows)


def line_labels(keys: list) -> list:
    """A legend label per (cache, head, head settings as JSON) line: the head, the settings that tell it from
    the other lines of that head (e.g. "softmax epochs=auto"), and the cache where the lines have several."""
    several = len({cache for cache, _, _ in keys}) > 1
    out = []
    for cache, head, params in keys:
        mine, others = json.loads(params), [json.loads(q) for _, h, q in keys if h == head and q != params]
        differ = sorted((k.removeprefix("head_"), v) for k, v in mine.items() if any(o.get(k) != v for o in others))
        out.append(" ".join([head, *(f"{k}={v}" for k, v in differ), *([cache] if several else [])])[:90])
    return out


def _learning_lines(fig, rows: list):
    from matplotlib import colormaps
    lines = {}
    for r in rows:
        key = (r["cache"], r["head"], json.dumps(head_settings(r), sort_keys=True))
        lines.setdefault(key, []).append(r)
    ax = fig.subplots()
    for i, (label, pts) in enumerate(zip(line_labels(list(lines)), lines.values())):
        by_x = {}
        for r in pts:
            by_x.setdefault(r.get("labelled_n", r["train_n"]), []).append(r)
        x = sorted(by_x)
        y, lo, hi = [], [], []
        for n in x:
            accs = [accuracy(r, "test") for r in by_x[n]]
            y.append(float(np.mean(accs)))
            low, high = (by_x[n][0]["test_ci95"] if len(accs) == 1 else (min(accs), max(accs)))
            lo.append(y[-1] - low)
            hi.append(high - y[-1])
        ax.errorbar(x, y, yerr=[lo, hi], fmt="-o", ms=4, capsize=2, color=colormaps["tab20"](i % 20), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images of the train split used, validation included (log)")
    n_seeds = len({r.get("seed") for r in rows})
    ax.set_ylabel("test accuracy, " + ("mean and range over seeds" if n_seeds > 1 else "95% interval")
                  + " (views averaged)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"learning curve ({rows[0]['test_n']} test images" + (f", {n_seeds} seeds)" if n_seeds > 1 else ")"))
