"""Stage-two settings: one block of defaults (the notebook's head), one validation place."""
from __future__ import annotations

import dataclasses
import math
import os

from ..durable import folder_or_missing
from ..errors import PipelineError

# --- defaults: the notebook's head --------------------------------------------------------------
HEAD = "softmax"        # softmax (Dropout -> Dense softmax, Keras' rules) | logreg (scikit-learn)
DROPOUT = 0.5           # dropout rate before the softmax layer
LR = 1e-3               # Adam learning rate
L2 = 0.0                # softmax: L2 penalty on the Dense kernel (Keras' kernel_regularizer=L2(l2)); 0: none;
                        # auto: chosen on validation from softmax.L2_GRID, then refit on train + validation
BATCH_SIZE = 250        # head training batch size
EPOCHS = 20             # passes over the training features
STANDARDIZE = True      # softmax: standardise features with the training rows' mean and scale (conv
                        # features are unscaled ReLU maps; without it the probabilities are far too sure)
PATIENCE = 3            # --early-stopping: epochs without a better val loss before stopping
C = 1.0                 # logreg inverse regularisation strength, or auto: chosen on validation, then refit
                        # on train + validation (the linear-probe protocol)
MAX_ITER = 200          # logreg solver iterations
VAL_FRACTION = 0.1      # stratified hold-out of train for model selection
SEED = 0                # makes a run reproducible (the split, the initial weights, the dropout noise)
RUNS_DIR = "data/runs"  # where run folders go
# ---------------------------------------------------------------------------------------------------

def boolean(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).strip().lower() in ("true", "1", "yes", "on"):
        return True
    if str(v).strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(v)


boolean.__name__ = "boolean"


def number_or_auto(v):
    """A number, or "auto" (chosen on validation: logreg's C, softmax's l2)."""
    return "auto" if str(v).strip().lower() == "auto" else float(v)


number_or_auto.__name__ = "number (or auto)"
RANGES = {  # name: (type, check, what the check means)
    "standardize": (boolean, lambda v: True, "true or false"),
    "dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"), "lr": (float, lambda v: 0 < v < math.inf, "> 0 and finite"),
    "l2": (number_or_auto, lambda v: v == "auto" or 0 <= v < math.inf, ">= 0 and finite"),
    "epochs": (int, lambda v: v >= 1, ">= 1"), "batch_size": (int, lambda v: v >= 1, ">= 1"),
    "C": (number_or_auto, lambda v: v == "auto" or 0 < v < math.inf, "> 0 and finite"), "max_iter": (int, lambda v: v >= 1, ">= 1"),
    "val_fraction": (float, lambda v: 0 <= v < 1, "in [0, 1)"), "patience": (int, lambda v: v >= 1, ">= 1"),
    "seed": (int, lambda v: 0 <= v < 2 ** 32, "in 0..2^32-1"),
    "train_images": (int, lambda v: v >= 1, ">= 1"),
}
HEAD_PARAMS = {"softmax": ("dropout", "lr", "l2", "epochs", "batch_size", "standardize"), "logreg": ("C", "max_iter")}


def check_param(name: str, value):
    kind, ok, what = RANGES[name]
    try:
        if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
            raise ValueError
        v = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise PipelineError(f"{name}: expected a {kind.__name__} {what}, got {value!r}") from None
    if not ok(v):
        raise PipelineError(f"{name}: expected {what}, got {v}; pick a value {what}")
    return v


@dataclasses.dataclass
class RunOptions:
    """How a head command runs, whatever the head: the split, the seed, early stopping, the run folder."""
    val_fraction: float = VAL_FRACTION
    seed: int = SEED
    early_stopping: bool = False
    patience: int = PATIENCE
    runs_dir: str = RUNS_DIR
    name: str | None = None
    train_images: int | None = None     # a stratified subset of the training images (a learning curve)
    quiet: bool = False                 # no summary table on the terminal

    def validated(self) -> "RunOptions":
        for f in ("val_fraction", "seed", "patience") + (("train_images",) if self.train_images is not None else ()):
            check_param(f, getattr(self, f))
        folder_or_missing(self.runs_dir, "--runs-dir")
        if self.name is not None and (not self.name.strip() or os.sep in self.name or self.name in (".", "..")
                                      or self.name.startswith(".") or len(self.name.encode()) > MAX_NAME_BYTES
                                      or not self.name.isprintable()):
            raise PipelineError(f"--name {self.name[:80]!r}: expected a plain folder name (no {os.sep}, not hidden, "
                                f"printable, at most {MAX_NAME_BYTES} bytes)")
        return self


MAX_NAME_BYTES = 200   # a run, sweep or study name: with "-best" and a temp suffix, within NAME_MAX (255)


def head_params(kind: str, values: dict) -> dict:
    """The checked parameters of a `kind` head, from a dict holding at least them."""
    if kind not in HEAD_PARAMS:
        raise PipelineError(f"head: expected softmax or logreg, got {kind!r}")
    return {p: check_param(p, values[p]) for p in HEAD_PARAMS[kind]}
