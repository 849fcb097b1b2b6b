"""Reading a run folder, which may come from anyone (predict, ensemble): each file is opened as the
folder's own regular file, never through a link (a link in a crafted folder could lead to any file
this user can read), its size checked before a byte is read, and parsed as JSON or numbers only.
The files a run's readers use (its head files, VAL_PROBA) are hashed as the run writes them, their
SHA-256 kept in its metrics.json (FILE_SHA256), and each is read once into memory and used only if
those bytes hash to it: a file changed after the run wrote it is refused, not used.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os

import numpy as np

from ..durable import open_own, read_json
from ..hashing import file_sha256, is_sha256
from .config import RUNS_DIR

MAX_METRICS_BYTES = 64 << 20     # a run's metrics.json (confusion matrix and provenance: ~100 KB for 100 classes)
VAL_PROBA = "val_proba.npy"      # a refit run's validation probabilities before the refit (runs.write_run)
FILE_SHA256 = "file_sha256"      # in metrics.json: {file name: SHA-256} of the files readers use, as written
MAX_COUNT = 10 ** 12             # images, views or passes a run can have counted (1e300 would overflow an interval)
KIND_FILE = "kind.json"          # in a sweep's or a study's folder: {"kind": "sweep"|"study", ...}


def is_count(value, least: int = 0) -> bool:
    """Whether a count a run or a study row records (images, views, epochs) is a whole number from least
    to MAX_COUNT (JSON may hold Infinity, NaN, -1, 2.5 or 1e300 there)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and value == int(value) and least <= value <= MAX_COUNT


def folder_kind(path: str) -> str | None:
    """What a folder in the runs dir holds: "sweep" or "study" (its kind.json), "run" (metrics.json),
    "other" (anything else), None when it does not exist or is empty."""
    if not os.path.isdir(path):
        return "other" if os.path.exists(path) else None
    marker = read_json(os.path.join(path, KIND_FILE))
    if marker is not None:
        return marker.get("kind") if marker.get("kind") in ("sweep", "study") else "other"
    if os.path.isfile(os.path.join(path, "metrics.json")):
        return "run"
    return "other" if os.listdir(path) else None


def file_digests(folder: str, names: list) -> dict:
    """{name: SHA-256} of the files `names` in `folder` (a run being written), for its metrics.json."""
    return {name: file_sha256(os.path.join(folder, name)) for name in names}


def recorded_sha256(metrics: dict, name: str, refuse) -> str | None:
    """The SHA-256 a run's metrics.json records for its file `name`; None for a run that records none
    (written before runs recorded them); refuse(why) when what it records is not digests."""
    digests = metrics.get(FILE_SHA256)
    if digests is None:
        return None
    if not isinstance(digests, dict) or not all(is_sha256(v) for v in digests.values()):
        raise refuse(f"its {FILE_SHA256} in metrics.json is not an object of SHA-256 digests")
    return digests.get(name)


def read_metrics(run: str, refuse) -> dict:
    """A run folder's metrics.json as predict and ensemble need it: a JSON object with a head kind
    (checked by the caller), printable class names and a provenance object; anything else is refuse(why)."""
    try:
        with open_own(os.path.join(run, "metrics.json"), refuse, MAX_METRICS_BYTES) as f:
            metrics = json.load(f)
        names, prov, _ = metrics["class_names"], metrics["provenance"], metrics["head"]   # a kind: callers check which
    except FileNotFoundError:
        raise refuse(_no_metrics(run) if os.path.isdir(run) else _no_folder(run)) from None
    except RecursionError:
        raise refuse("metrics.json is nested too deeply") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise refuse(f"metrics.json is not a run's ({type(e).__name__}: {str(e)[:60]})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.isprintable() for n in names):
        raise refuse("its class names are not a list of printable names (a TAB or newline would forge output lines)")
    if not isinstance(prov, dict):
        raise refuse("metrics.json is not a run's (its provenance is not an object)")
    return metrics


def _no_metrics(run: str) -> str:
    """Why the folder `run` has no metrics.json: a sweep's or a study's folder of results (its heads are not
    runs; its best is the run beside it, NAME-best), or no run at all."""
    kind = folder_kind(run)
    if kind in ("sweep", "study"):
        return f"a {kind}'s results, not a run (its best head is the run {run.rstrip(os.sep)}-best)"
    return "no metrics.json"


def _no_folder(run: str) -> str:
    """Why `run` is not a run folder when nothing is there, and where the run of that name is, if the
    default runs dir has one (`runs` lists folders by name)."""
    there = os.path.join(RUNS_DIR, run)
    named = not os.path.isabs(run) and os.path.isfile(os.path.join(there, "metrics.json"))
    return "no such folder" + (f" (the run of that name is {there}: pass that path)" if named else "")


def read_val_proba(run: str, shape: tuple, refuse, sha256: str | None = None):
    """A run folder's VAL_PROBA as float32 of exactly `shape` (images x views x classes), or None when it
    has none (a refuse(why) when its run recorded its sha256): no pickle, rows of probabilities (finite,
    0..1, each summing to 1), the bytes hashing to `sha256` where the run recorded it."""
    cap = 4 * int(np.prod(shape)) + 4096
    try:
        with open_own(os.path.join(run, VAL_PROBA), refuse, cap) as f:
            data = f.read(cap + 1)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise refuse(f"{VAL_PROBA} changed after its run wrote it (its SHA-256 is not the one metrics.json records)")
        p = np.load(io.BytesIO(data), allow_pickle=False)
    except FileNotFoundError:
        if sha256 is not None:
            raise refuse(f"{VAL_PROBA} is missing, though its run wrote it (metrics.json records its SHA-256)") from None
        return None
    except (OSError, ValueError, EOFError) as e:
        raise refuse(f"{VAL_PROBA} is not a readable .npy file ({str(e)[:60]})") from None
    if not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.shape != tuple(shape) or not np.isfinite(p).all() \
            or (p < 0).any() or not np.allclose(p.sum(-1), 1, atol=1e-3):
        raise refuse(f"{VAL_PROBA} holds {getattr(p, 'dtype', type(p).__name__)} {getattr(p, 'shape', '')}, "
                     f"expected float32 probabilities of shape {tuple(shape)}")
    return p
