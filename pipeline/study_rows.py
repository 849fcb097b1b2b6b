"""A study's finished rows on disk (`<study>/rows/<row id>.json`): how a killed or repeated study keeps
the heads it trained. A study folder may come from anyone, so a row is reused only as this program
wrote it: its checksum (the SHA-256 of its fields) holds, and every number the report computes with is
a number of its kind. Its settings are never read back: the cache's and the head's come from the run
that reuses it (the row id is a hash of them), so a row cannot point the study at another file. A row
that fails is trained again, with one line saying why.
"""
from __future__ import annotations

import json
import logging
import os

from .durable import read_json, write_bytes
from .hashing import json_sha256
from .heads.run_files import is_count

log = logging.getLogger(__name__)

ROWS = "rows"                    # the folder of a study's finished rows
COUNTS = {"val_n": 1, "test_n": 0, "train_n": 1, "labelled_n": 1, "views_k": 1}        # each: its least
OPTIONAL_COUNTS = ("epochs_trained",)
NUMBERS = ("val_loss", "test_loss", "head_s", "C_chosen", "l2_chosen", "lr_used")       # any float (or absent)
FRACTIONS = ("val_accuracy", "test_accuracy", "val_tta_accuracy", "test_tta_accuracy")
MAX_ROW_BYTES = 1 << 20


def row_path(folder: str, row_id: str) -> str:
    return os.path.join(folder, ROWS, f"{row_id}.json")


def write_row(folder: str, row_id: str, row: dict):
    """The row as JSON with its checksum: the SHA-256 of its fields as they read back."""
    fields = json.loads(json.dumps(row, default=str))
    write_bytes(row_path(folder, row_id), json.dumps({**fields, "checksum": json_sha256(fields)}, indent=1).encode())


def finished_row(folder: str, row_id: str, settings: dict) -> dict | None:
    """The row saved for `row_id`, its settings replaced by `settings` (this run's cache and head fields),
    or None when there is none (never trained, a run cut short) or it is not as this program wrote it."""
    path = row_path(folder, row_id)
    if not os.path.lexists(path):
        return None
    row = read_json(path, MAX_ROW_BYTES)
    why = (f"is not a readable JSON object of at most {MAX_ROW_BYTES:,} bytes (nested too deeply, a link, ...)"
           if row is None else _why_not(row, row_id))
    if why:
        log.warning(f"study: row {row_id} ({path}) {why}: trained again")
        return None
    return {**{k: v for k, v in row.items() if k != "checksum"}, **settings}


def _why_not(row, row_id: str) -> str | None:
    """Why a saved row is not reused, or None."""
    if not isinstance(row, dict) or row.get("row") != row_id:
        return "is not this row's"
    fields = {k: v for k, v in row.items() if k != "checksum"}
    if row.get("checksum") != json_sha256(fields):
        return "changed after it was written (its checksum does not hold), or was written by an older version"
    for k, least in COUNTS.items():
        if not is_count(row.get(k), least):
            return f"has {k} {str(row.get(k))[:20]!r}, expected a whole number from {least}"
    for k in OPTIONAL_COUNTS:
        if k in row and row[k] is not None and not is_count(row[k]):
            return f"has {k} {str(row[k])[:20]!r}, expected a whole number"
    for k in NUMBERS + FRACTIONS:
        v = row.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"has {k} {str(v)[:20]!r}, expected a number"
        if k in FRACTIONS and v is not None and not 0 <= v <= 1:
            return f"has {k} {v!r}, expected a fraction from 0 to 1"
    for k in ("val_accuracy", "test_accuracy", "head_s"):
        if row.get(k) is None and (k != "test_accuracy" or row["test_n"]):
            return f"has no {k}"
    return None

