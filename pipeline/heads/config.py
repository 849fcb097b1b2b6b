"""Stage-two settings, each declared once in `PARAMS`: its default (the notebook's head), its range,
its help line and flag, and which heads take it. From this one table come the CLI's options, the
checks of sweep and study values (`check_param`), and the estimators' scikit-learn
`_parameter_constraints` (validation.py), so a range is written in one place.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

from ..durable import folder_or_missing
from ..errors import SettingError

HEAD = "softmax"        # softmax (Dropout -> Dense softmax, Keras' rules) | logreg (scikit-learn)
RUNS_DIR = "data/runs"  # where run folders go


@dataclasses.dataclass(frozen=True)
class Param:
    """One head parameter or run option: default; kind (int, float, bool); the range [low, high] with
    `closed` ends as scikit-learn's Interval says them ("left", "right", "both", "neither"); `auto`:
    "auto" is also a value (chosen on validation); heads: which heads take it (none: every head; a field of
    RunOptions is a run option, not a head parameter, whichever heads use it); flag: the CLI option when not
    --name-with-dashes."""
    default: object
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    auto: bool = False
    optional: bool = False
    heads: tuple = ()
    flag: str | None = None
    choices: tuple = ()          # kind str: the values it takes

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false" + (" or auto" if self.auto else "")
        if self.kind is str:
            return "one of " + ", ".join(self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else BOUND_NAMES.get(self.high) or f"{self.high:g}"
        left, right = ("[" if self.closed in ("left", "both") else "("), ("]" if self.closed in ("right", "both") else ")")
        what = f"{'an integer' if self.kind is int else 'a number'} in {left}{lo}, {hi}{right}"
        return what + (" or auto" if self.auto else "")

    def contains(self, v) -> bool:
        if v == "auto" and self.auto or v is None and self.optional:
            return True
        if self.kind is bool:
            return isinstance(v, bool)
        if self.kind is str:
            return v in self.choices
        if isinstance(v, float) and math.isnan(v):
            return False
        above = self.low is None or (v >= self.low if self.closed in ("left", "both") else v > self.low)
        below = (v < math.inf if self.high is None else v <= self.high if self.closed in ("right", "both")
                 else v < self.high)
        return above and below


SOFTMAX, LOGREG = ("softmax",), ("logreg",)
AUTO_EPOCHS, AUTO_STEPS, AUTO_MAX_EPOCHS = 20, 1000, 200   # epochs="auto": the notebook's 20 passes, more on few rows
                                                           # until a run makes 1,000 Adam steps, at most 200 passes
MAX_PASSES = 100_000        # epochs and patience at most (9e18 epochs asked numpy for an impossible schedule array)
INT_MAX = 2 ** 31 - 1       # any other count a head takes (a row count past int64 stopped training with a traceback)
BOUND_NAMES = {INT_MAX: "2^31-1", 2 ** 32 - 1: "2^32-1"}   # bounds said as powers in messages
AUTO_REFIT_IMAGES = 10_000  # refit="auto": refit where the labelled images (train + validation) are at most this many
AUTO_LR, AUTO_LR_WIDTH = 1e-3, 1280   # lr="auto": Adam's 1e-3 up to 1,280 features (pooled layers), beyond it
                                      # 1e-3 * sqrt(1,280 / width): 8,192 values 4.0e-4, 10,240 3.5e-4, 25,088 2.3e-4
NORMALIZE = ("none", "l2", "sqrt-l2")
PARAMS = {
    # either head: the features' normalisation, per layer block of the cache, before standardisation
    "normalize": Param("none", str, "scale each layer block of the features to unit L2 norm (l2), after a signed "
                       "square root (sqrt-l2), or not (none); part of the saved head", heads=SOFTMAX + LOGREG,
                       choices=NORMALIZE),
    # the softmax head: the notebook's Dropout(0.5) -> Dense softmax, trained with Adam
    "dropout": Param(0.5, float, "softmax: dropout rate before the softmax layer", 0, 1, "left", heads=SOFTMAX),
    "lr": Param("auto", float, f"softmax: Adam learning rate, or auto: {AUTO_LR:g}, smaller for wider features, "
                f"times sqrt({AUTO_LR_WIDTH:,} / width) beyond {AUTO_LR_WIDTH:,} values (the hidden-layer head: "
                f"{AUTO_LR:g}) (docs/full-cifar10.md, 'Learning rate by width')", 0, None, "neither", auto=True,
                heads=SOFTMAX),
    "l2": Param(0.0, float, "softmax: L2 penalty on the Dense kernel, Keras' kernel_regularizer=L2(l2); or auto: "
                "chosen on validation, then refit on train + validation", 0, None, "left", auto=True, heads=SOFTMAX),
    "init": Param("zeros", str, "softmax: the Dense kernel's starting values: zeros (where logistic regression "
                  "starts; the default: docs/full-cifar10.md, 'The softmax head against the protocol') or "
                  "glorot_uniform (Keras' default, the notebook's)", heads=SOFTMAX, choices=("zeros", "glorot_uniform")),
    "lr_schedule": Param("cosine", str, "softmax: the learning rate over the run: cosine (Keras' CosineDecay from lr "
                         "to 0 over every step; the default: docs/full-cifar10.md, 'The learning-rate schedule') or "
                         "constant (the notebook's)", heads=SOFTMAX, choices=("cosine", "constant")),
    "hidden": Param(0, int, "softmax: ReLU units of a hidden layer between the dropout and the softmax, itself "
                    "followed by the same dropout (0: none, the notebook's head; docs/full-cifar10.md, 'A hidden "
                    "layer'); trained by Keras' own train step", 0, 1 << 16, "both", heads=SOFTMAX),
    "refit": Param("auto", bool, "softmax: after training on train and scoring on validation, train the same head "
                   "again on train + validation for the epochs it was scored at, the protocol's second half (twice "
                   f"the time; l2=auto always refits); auto: where the labelled images (train + validation) are at "
                   f"most {AUTO_REFIT_IMAGES:,} (in a sweep: the configuration chosen) (docs/full-cifar10.md, "
                   "'Refit on small data'); validation figures are those before the refit", auto=True, heads=SOFTMAX),
    "epochs": Param("auto", int, f"softmax: passes over the training rows, or auto: {AUTO_EPOCHS}, and more where the "
                    f"rows are few so that a run makes at least {AUTO_STEPS:,} steps, at most {AUTO_MAX_EPOCHS} passes "
                    "(docs/full-cifar10.md, 'Epochs on small data')", 1, MAX_PASSES, "both", auto=True, heads=SOFTMAX),
    "batch_size": Param(250, int, "softmax: rows per step", 1, INT_MAX, "both", heads=SOFTMAX, flag="--head-batch-size"),
    "standardize": Param(True, bool, "softmax: standardise features with the training rows' mean and scale, inside "
                         "the saved head (conv features are unscaled ReLU maps)", heads=SOFTMAX),
    # the logistic-regression head: StandardScaler + scikit-learn's LogisticRegression
    "C": Param(1.0, float, "logreg: inverse regularisation strength, or auto: chosen on the validation split over a "
               "log grid, then refit on train + validation (the linear-probe protocol)", 0, None, "neither", auto=True,
               heads=LOGREG, flag="--C"),
    "max_iter": Param(200, int, "logreg: solver iterations", 1, INT_MAX, "both", heads=LOGREG),
    # how any head command runs
    "val_fraction": Param(0.1, float, "stratified hold-out of train for model selection", 0, 1, "left"),
    "seed": Param(0, int, "seed of the split, initial weights and dropout", 0, 2 ** 32 - 1, "both"),
    "early_stopping": Param(False, bool, "softmax: stop on validation loss, keep the best epoch", heads=SOFTMAX),
    "patience": Param(3, int, "softmax: epochs without a better validation loss before stopping", 1, MAX_PASSES,
                      "both", heads=SOFTMAX),
    "train_images": Param(None, int, "use a stratified subset of this many of the train split's images, validation "
                          "carved from them (a learning curve on one cache) (default: all)", 1, INT_MAX, "both",
                          optional=True),
}
DEFAULTS = {name: p.default for name, p in PARAMS.items()}


def epochs_for(epochs, n_rows: int, batch_size: int) -> int:
    """The passes a softmax head makes over n_rows training rows: `epochs`, or for "auto" 20 and more where the
    rows are few, so that the run makes at least AUTO_STEPS steps (at most AUTO_MAX_EPOCHS): at the default
    batch of 250, 45,000 rows (the full train split) get 20, the sample's 4,500 get 56 and 450 get 200."""
    if epochs != "auto":
        return int(epochs)
    steps_per_epoch = max(1, -(-int(n_rows) // int(batch_size)))
    return max(AUTO_EPOCHS, min(AUTO_MAX_EPOCHS, -(-AUTO_STEPS // steps_per_epoch)))


def refit_for(refit, n_labelled: int) -> bool:
    """Whether a softmax head is refit on train + validation: `refit`, or for "auto" where its labelled images
    (train + validation; a cache's views are not more images) are at most AUTO_REFIT_IMAGES. The refit's
    one-ninth more images was worth +0.1..+0.6 points at every size measured (1,000-45,000, views or not;
    the mean of three seeds from 5,000 to 25,000), for twice the head's time: seconds up to 10,000 images,
    a minute and more beyond, where `--refit` asks for it (docs/full-cifar10.md, 'Refit on small data')."""
    if refit != "auto":
        return bool(refit)
    return int(n_labelled) <= AUTO_REFIT_IMAGES


def auto_rules(params: dict) -> dict:
    """The constants of the rules that the parameters set to "auto" follow (epochs_for, lr_for, refit_for), by
    parameter: what such a head's result depends on besides the data, so a study keys its rows by it."""
    rules = {"epochs": [AUTO_EPOCHS, AUTO_STEPS, AUTO_MAX_EPOCHS], "lr": [AUTO_LR, AUTO_LR_WIDTH],
             "refit": [AUTO_REFIT_IMAGES]}
    return {name: rule for name, rule in rules.items() if params.get(name) == "auto"}


def lr_for(lr, width: int, hidden: int = 0) -> float:
    """The Adam learning rate a softmax head trains with: `lr`, or for "auto" AUTO_LR times sqrt(AUTO_LR_WIDTH /
    width) where the features are wider than AUTO_LR_WIDTH (a linear head's logits move with the sum of its
    inputs' updates, so wide flattened features take smaller steps); a hidden-layer head's auto is AUTO_LR."""
    if lr != "auto":
        return float(lr)
    return AUTO_LR if hidden else AUTO_LR * min(1.0, math.sqrt(AUTO_LR_WIDTH / max(1, int(width))))


def flag(name: str) -> str:
    """The CLI option of a head parameter or run option."""
    return PARAMS[name].flag or "--" + name.replace("_", "-")


def key_values(item: str, option: str, semicolons=lambda key: False) -> tuple[str, list]:
    """(key, [values]) from one `KEY=V1,V2` item (a sweep's --param, a study's --grid); values are
    separated by ; for keys whose values are themselves comma lists (`semicolons(key)`)."""
    key, sep, values = item.partition("=")
    key = key.strip().replace("-", "_")
    values = [v.strip() for v in values.split(";" if semicolons(key) else ",") if v.strip()]
    if not sep or not key or not values:
        raise SettingError(option, f"{item}: expected KEY=V1,V2 (values of comma-list settings separated by ;), "
                           "e.g. dropout=0.2,0.5")
    return key, values


def parse_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).strip().lower() in ("true", "1", "yes", "on"):
        return True
    if str(v).strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(v)


def check_param(name: str, value, owner: str | None = None):
    """`value` (a string from the command line, a sweep or a study grid, or a number) as the parameter's
    kind, checked against its declared range; SettingError naming the parameter if not."""
    p = PARAMS[name]
    try:
        if p.auto and str(value).strip().lower() == "auto":
            return "auto"
        if value is None and p.optional:
            return None
        if p.kind is bool:
            v = parse_bool(value)
        elif p.kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            v = value.strip().lower()
        elif p.kind is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError
            v = int(value)
        else:
            v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SettingError(name, f"expected {p.describe()}, got {value!r}", owner) from None
    if not p.contains(v):
        raise SettingError(name, f"expected {p.describe()}, got {v}", owner)
    return v


SPLIT = ("seed", "val_fraction", "train_images")    # the run options that decide a run's validation split on its cache
PROGRESS = logging.getLogger("pipeline.heads.progress")   # long fits' heartbeat lines (epoch or configuration, ETA);
                                                          # the commands' --quiet silences it, as their progress bars
PROGRESS_EVERY_S = 10.0     # a loop longer than this logs a line at most this often


class Heartbeat:
    """A long loop's pace for its PROGRESS lines: after step `done` of `total`, once PROGRESS_EVERY_S has
    passed since the start or the last line (never after the last step), (seconds spent, ETA in seconds);
    otherwise None, so a loop shorter than that says nothing."""

    def __init__(self, total: int):
        self.total, self.t0 = total, time.perf_counter()
        self.last = self.t0

    def due(self, done: int):
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or done >= self.total:
            return None
        self.last, spent = now, now - self.t0
        return spent, spent / done * (self.total - done)


@dataclasses.dataclass
class RunOptions:
    """How a head command runs, whatever the head: the split, the seed, early stopping, the run folder."""
    val_fraction: float = PARAMS["val_fraction"].default
    seed: int = PARAMS["seed"].default
    early_stopping: bool = PARAMS["early_stopping"].default
    patience: int = PARAMS["patience"].default
    runs_dir: str = RUNS_DIR
    name: str | None = None
    train_images: int | None = PARAMS["train_images"].default   # a stratified subset (a learning curve)
    quiet: bool = False                 # no summary table on the terminal (nor PROGRESS lines: cli)

    def validated(self) -> "RunOptions":
        """These options checked (SettingError naming the first wrong one), values as their kinds."""
        self = dataclasses.replace(self, **{f: check_param(f, getattr(self, f), "RunOptions")
                                            for f in ("val_fraction", "seed", "early_stopping", "patience", "train_images")})
        folder_or_missing(self.runs_dir, "runs_dir", "RunOptions")
        if self.name is not None and (not self.name.strip() or os.sep in self.name or self.name in (".", "..")
                                      or self.name.startswith(".") or len(self.name.encode()) > MAX_NAME_BYTES
                                      or not self.name.isprintable()):
            raise SettingError("name", f"{self.name[:80]!r}: expected a plain folder name (no {os.sep}, not hidden, "
                               f"printable, at most {MAX_NAME_BYTES} bytes)", "RunOptions")
        return self


RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunOptions))
HEAD_PARAMS = {h: tuple(n for n, p in PARAMS.items() if h in p.heads and n not in RUN_OPTIONS) for h in ("softmax", "logreg")}

MAX_NAME_BYTES = 200   # a run, sweep or study name: with "-best" and a temp suffix, within NAME_MAX (255)


def head_params(kind: str, values: dict) -> dict:
    """The checked parameters of a `kind` head, from a dict holding at least them."""
    if kind not in HEAD_PARAMS:
        raise SettingError("head", f"expected softmax or logreg, got {kind!r}")
    return {p: check_param(p, values[p]) for p in HEAD_PARAMS[kind]}


def refits(params: dict) -> bool:
    """Whether a head with these parameters is refit on train + validation after it is chosen, whatever the
    data: refit=True, or a value chosen on validation (l2 or C "auto"). refit="auto" is decided by the
    labelled images (refit_for): not here."""
    refit = params.get("refit")
    return refit != "auto" and bool(refit) or "auto" in (params.get("l2"), params.get("C"))
