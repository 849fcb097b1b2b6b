"""`pipeline runs`: every run folder of a runs dir in one table, best on validation first (never
ranked on test), with the test accuracy and its 95% interval, the head and the parameters it did not
take at their defaults, the cache it trained on and what it cost. Runs are ranked against runs
validated on the same images only: where the folder holds several validation sets (other data, another
seed, val_fraction or train_images), each is a section of its own, the one with the best run first.

Run folders may come from anyone: each metrics.json is read as predict and ensemble read it
(run_files: the folder's own regular file, its size checked first, JSON only); one that cannot be
read is listed with why. Sweep and study folders are listed by kind (their best runs are run
folders of their own: `<name>-best`). Nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import os

from .errors import PipelineError
from .heads.config import DEFAULTS, SPLIT
from .heads.run_files import MAX_COUNT, folder_kind, is_count, read_metrics
from .study_report import wilson
from .text_table import aligned, escaped, minute, utc

NOT_PARAMETERS = {"seed", "val_fraction", "train_images", "early_stopping", "patience", "epochs_trained", "lr_used",
                  "refit_used", "best_epoch"}       # a run's record beside its head parameters


def _score(split: dict) -> float | None:
    """A split's accuracy as the run reports it: the mean over views (TTA) where it has views."""
    if not isinstance(split, dict) or not split.get("n"):
        return None
    tta = split.get("tta")
    value = tta.get("accuracy") if isinstance(tta, dict) else split.get("accuracy")
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


def _count(value, what: str, least: int = 0) -> int:
    """A count a run records (images, views) as run_files.is_count takes it (absent: least); ValueError
    naming it otherwise."""
    if value is None:
        return least
    if not is_count(value, least):
        raise ValueError(f"its {what} is {str(value)[:20]!r} in metrics.json, expected a whole number from {least} "
                         f"to {MAX_COUNT:.0e}")
    return int(value)


def _changed(hp: dict) -> str:
    """The head parameters a run did not leave at their defaults, as `key=value`; the values auto chose beside."""
    out = [f"{k}={v}" for k, v in hp.items() if k in DEFAULTS and k not in NOT_PARAMETERS and v != DEFAULTS[k]]
    if hp.get("train_images"):
        out.append(f"train_images={hp['train_images']}")
    if hp.get("refit") == "auto" and hp.get("refit_used") is True:      # how its test figure was made
        out.append("refit=auto (True)")
    return " ".join(out) or "defaults"


def _run_row(path: str) -> dict:
    row = {"name": os.path.basename(path), "created": utc(os.path.getmtime(path))}
    try:
        m = read_metrics(path, lambda why: PipelineError(why))
        hp = m.get("hyperparameters") if isinstance(m.get("hyperparameters"), dict) else {}
        prov = m["provenance"]
        settings = prov.get("settings") if isinstance(prov.get("settings"), dict) else {}
        test = m.get("test") if isinstance(m.get("test"), dict) else {}
        timings = m.get("timings") if isinstance(m.get("timings"), dict) else {}
        val = m.get("val") if isinstance(m.get("val"), dict) else {}
        val_n = _count(val.get("n"), "validation images")
        row.update(head=str(m["head"]), parameters=_changed(hp) if m["head"] != "ensemble" else
                   f"{len(m.get('members', []))} members", val=_score(val), val_n=val_n,
                   test=_score(test), test_n=_count(test.get("n"), "test images"),
                   views=_count(m.get("views"), "views", 1), key=str(prov.get("key", ""))[:16],
                   layer=str(settings.get("layer", prov.get("dataset", "?"))),
                   train_n=_count((m.get("train") or {}).get("n"), "training images"), seconds=timings.get("train_s"),
                   **_validation_set(prov, hp, val_n))
    except (PipelineError, KeyError, TypeError, ValueError, AttributeError) as e:
        row["unreadable"] = str(e)
    return row


def _validation_set(prov: dict, hp: dict, n: int) -> dict:
    """What decides a run's validation images, as an id (12 hex digits) and in words: the data (the cache's
    dataset fingerprint, or its key without one) and the options that decide its split (SPLIT)."""
    data = str(prov.get("dataset_fingerprint") or prov.get("key", ""))
    split = {k: hp.get(k) for k in SPLIT}
    digest = hashlib.sha256(json.dumps([data, split], sort_keys=True, default=str).encode()).hexdigest()[:12]
    source = str(prov.get("source") or prov.get("dataset") or "a synthetic cache")
    how = f"val_fraction {split['val_fraction']}, seed {split['seed']}" + (
        f", train_images {split['train_images']}" if split["train_images"] else "")
    return {"validation_set": digest,
            "validation_set_is": f"{n:,} images of {source} (data {data[:8]}; {how})"}


def leaderboard(runs_dir: str, cache_key: str | None = None) -> tuple[list, list]:
    """(runs best on validation first, then those without a validation score, newest first among equals;
    other folders: sweeps, studies, unreadable runs), or with `cache_key` only the runs on caches whose key
    starts with it."""
    if not os.path.isdir(runs_dir):
        raise PipelineError(f"runs: {runs_dir} is not a folder; give the --runs-dir train-head wrote to "
                            "(default data/runs)")
    runs, others = [], []
    for entry in sorted(os.scandir(runs_dir), key=lambda e: e.name):
        kind = folder_kind(entry.path) if entry.is_dir(follow_symlinks=False) else None
        if kind == "run":
            row = _run_row(entry.path)
            (others if "unreadable" in row else runs).append(row)
        elif kind in ("sweep", "study"):
            others.append({"name": entry.name, "kind": kind, "created": utc(entry.stat().st_mtime)})
    if cache_key:          # sweeps, studies and unreadable folders are not known to be on that cache
        runs, others = [r for r in runs if r["key"].startswith(cache_key)], []
    runs.sort(key=lambda r: (-1 if r["val"] is None else r["val"], r["created"]), reverse=True)   # ties: newest first
    first = {}
    for i, r in enumerate(runs):                    # each validation set where its best run stands
        first.setdefault(r["validation_set"], i)
    runs.sort(key=lambda r: first[r["validation_set"]])     # stable: the order above within a set
    return runs, others


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(runs: list, others: list) -> list:
    """Aligned text lines: the ranked runs (rank, validation %, test % with its 95% interval, ...), then
    the other folders."""
    head = ["rank", "val % (images)", "test % (95%; images)", "head", "parameters", "cache", "layers", "views", "train images",
            "train s", "created", "run"]
    rows, sections, rank = [head], {}, 0
    for r in runs:
        if r["validation_set"] not in sections:       # a set's ranks start again at 1
            sections[r["validation_set"]], rank = len(rows), 0
        rank += 1
        lo, hi = wilson(r["test"], r["test_n"]) if r["test"] is not None else (None, None)
        test = "-" if lo is None else f"{_pct(r['test'])} ({_pct(lo)}..{_pct(hi)}; {r['test_n']:,})"
        seconds = f"{r['seconds']:.1f}" if isinstance(r["seconds"], (int, float)) else "-"
        val = "-" if r["val"] is None else f"{_pct(r['val'])} ({r['val_n']:,})"
        rows.append([str(rank), val, test, r["head"], r["parameters"], r["key"], r["layer"], str(r["views"]),
                     f"{r['train_n']:,}", seconds, minute(r["created"]), r["name"]])
    lines = aligned(rows)
    if len(sections) > 1:
        sets = {r["validation_set"]: r["validation_set_is"] for r in runs}
        for n, (key, at) in enumerate(reversed(sections.items())):
            lines.insert(at, escaped(f"validation set {len(sections) - n} of {len(sections)}: {sets[key]}"))
    lines.append(f"{len(runs)} run{'' if len(runs) == 1 else 's'}, ranked on validation (the mean over views "
                 "where the cache has them)" + (f", each against the runs of its validation set ({len(sections)})"
                                                if len(sections) > 1 else "") + "; test is scored once per run")
    for o in others:
        lines.append(escaped(f"{o['name']}: " + (f"a {o['kind']} (its results.md ranks its heads)" if "kind" in o
                                                   else f"not listed: {o['unreadable']}")))
    return lines


def report(runs_dir: str, cache_key: str | None = None, as_json: bool = False) -> str:
    """What `runs` prints: the table (or JSON) of `leaderboard(runs_dir, cache_key)`."""
    runs, others = leaderboard(runs_dir, cache_key)
    if as_json:
        return json.dumps({"runs": runs, "others": others}, indent=1)
    if runs or others:
        return "\n".join(table(runs, others))
    return f"no runs in {runs_dir}" + (f" on a cache whose key starts with {cache_key}" if cache_key else "")
