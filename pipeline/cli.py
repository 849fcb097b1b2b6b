"""Command line: `python -m pipeline {features,train-head,sweep,predict,bench}` (also `pipeline`).

The front door: it parses options into each stage's settings (stage one: `FeatureConfig`; stage
two: head parameters and `RunOptions`) and calls the stages; nothing imports it. A user's mistake
(PipelineError) prints one line and exits 1; Ctrl-C exits 130 keeping finished work.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from . import bench, predict
from .errors import PipelineError
from .features import FeatureConfig, extract, find_cache
from .features import config as F
from .heads import config as H
from .heads.config import RunOptions, head_params
from .heads.runs import process_age


def add_feature_options(p: argparse.ArgumentParser):
    """The options that select a cache: shared by features, train-head and sweep."""
    o = p.add_argument
    o("--dataset", default=F.DATASET, help="cifar10|cifar100 through keras.datasets (default %(default)s)")
    o("--data-dir", default=F.DATA_DIR, help="offline input: CIFAR python batches or image folders, a folder or "
      ".tar.gz (default: --dataset through Keras)")
    o("--splits", default=",".join(F.SPLITS), help="comma list of train,test (default %(default)s)")
    o("--limit", type=int, default=F.LIMIT, help="at most N images per split, stratified by class (default: all)")
    o("--weights", default=F.WEIGHTS, help="imagenet|random|PATH (default %(default)s)")
    o("--weights-seed", type=int, default=F.WEIGHTS_SEED, help="seed of --weights random (default %(default)s)")
    o("--layer", default=F.LAYER, help="fc2|fc1|block3_pool..block5_pool, or a comma list of layer[:pooling], all from "
      "one forward pass, e.g. block4_pool:avg2x2,block5_pool (default %(default)s)")
    o("--pooling", default=F.POOLING, help="conv layers without :pooling: flatten|avg|max|avg2x2 (default %(default)s)")
    o("--views", default=F.VIEWS, help="augmented views cached per image: none, or a comma list of flip and shiftN "
      "(default %(default)s)")
    o("--shift-range", type=float, default=F.SHIFT_RANGE, help="shiftN: up to this fraction of width and height "
      "(default %(default)s)")
    o("--views-seed", type=int, default=F.VIEWS_SEED, help="seed of the shifts (default %(default)s)")
    o("--image-size", type=int, default=F.IMAGE_SIZE, help="upscale to this size (default %(default)s)")
    o("--interpolation", default=F.INTERPOLATION, help=f"{'|'.join(F.INTERPOLATIONS)} (default %(default)s)")
    o("--precision", default=F.PRECISION, help=f"{'|'.join(F.PRECISIONS)} (default %(default)s)")
    o("--store-dtype", default=F.STORE_DTYPE, help=f"{'|'.join(F.STORE_DTYPES)} (default %(default)s)")
    o("--cache-dir", default=F.CACHE_DIR, help="where caches live (default %(default)s)")
    o("--on-bad-image", default=F.ON_BAD_IMAGE, help="fail|skip (default %(default)s)")
    o("--max-image-pixels", type=int, default=F.MAX_IMAGE_PIXELS,
      help="image files with more pixels are bad images, refused before decoding (default %(default)s)")
    o("--max-archive-bytes", type=int, default=F.MAX_ARCHIVE_BYTES, help="an image-folder .tar.gz may expand to at "
      "most this many bytes, checked before anything is unpacked (default %(default)s)")


def feature_config(args, batch_size: int = F.BATCH_SIZE) -> FeatureConfig:
    return FeatureConfig(dataset=args.dataset, data_dir=args.data_dir, splits=args.splits, limit=args.limit,
                         weights=args.weights, weights_seed=args.weights_seed, layer=args.layer, pooling=args.pooling,
                         views=args.views, shift_range=args.shift_range, views_seed=args.views_seed,
                         image_size=args.image_size,
                         interpolation=args.interpolation, precision=args.precision, store_dtype=args.store_dtype,
                         batch_size=batch_size, cache_dir=args.cache_dir, on_bad_image=args.on_bad_image,
                         max_image_pixels=args.max_image_pixels, max_archive_bytes=args.max_archive_bytes)


def add_run_options(p: argparse.ArgumentParser):
    """Options every command that may build features takes, meaning the same everywhere, so that
    `make ARGS="..."` can hand one set of options to both stages."""
    p.add_argument("--batch-size", type=int, default=F.BATCH_SIZE, dest="forward_batch_size",
                   help="images per forward pass of stage one (not in the key; unused by heads on a built cache) "
                        "(default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary tables (default off)")


def add_head_options(p: argparse.ArgumentParser):
    o = p.add_argument
    o("--cache", default=None, help="cache file (default: the one the feature options select)")
    o("--head", default=H.HEAD, choices=("softmax", "logreg"), help="softmax: Dropout -> Dense softmax; logreg: "
      "StandardScaler + LogisticRegression (default %(default)s)")
    o("--dropout", type=float, default=H.DROPOUT, help="softmax: dropout rate (default %(default)s)")
    o("--lr", type=float, default=H.LR, help="softmax: Adam learning rate (default %(default)s)")
    o("--l2", default=H.L2, help="softmax: L2 penalty on the Dense kernel, Keras' kernel_regularizer=L2(l2), or "
      "auto: chosen on validation, then refit on train + validation (default %(default)s: none)")
    o("--head-batch-size", type=int, default=H.BATCH_SIZE, dest="batch_size", help="softmax: rows per step "
      "(default %(default)s)")
    o("--epochs", type=int, default=H.EPOCHS, help="softmax: passes over the training rows (default %(default)s)")
    o("--standardize", action=argparse.BooleanOptionalAction, default=H.STANDARDIZE, help="softmax: standardise "
      "features with the training rows' mean and scale, inside the saved head (default %(default)s)")
    o("--early-stopping", action="store_true", help="softmax: stop on validation loss, keep the best epoch (default off)")
    o("--patience", type=int, default=H.PATIENCE, help="epochs without a better val loss before stopping "
      "(default %(default)s)")
    o("--C", default=H.C, dest="C", help="logreg: inverse regularisation strength, or auto: chosen on the validation "
      "split over a log grid, then refit on train + validation (the linear-probe protocol) (default %(default)s)")
    o("--max-iter", type=int, default=H.MAX_ITER, help="logreg: solver iterations (default %(default)s)")
    o("--val-fraction", type=float, default=H.VAL_FRACTION, help="stratified hold-out of train for model selection "
      "(default %(default)s)")
    o("--train-images", type=int, default=None, help="use a stratified subset of this many of the train split's images, "
      "validation carved from them (a learning curve on one cache) (default: all)")
    o("--seed", type=int, default=H.SEED, help="seed of the split, initial weights and dropout (default %(default)s)")
    o("--name", default=None, help="run folder name (default: a timestamp)")
    o("--runs-dir", default=H.RUNS_DIR, help="where run folders go (default %(default)s)")


def run_options(args) -> RunOptions:
    return RunOptions(val_fraction=args.val_fraction, seed=args.seed, early_stopping=args.early_stopping,
                      patience=args.patience, runs_dir=args.runs_dir, name=args.name,
                      train_images=args.train_images, quiet=args.quiet).validated()


def cmd_features(args):
    print(extract(feature_config(args, args.forward_batch_size), shards=args.shards, engine=args.engine,
                  ray_address=args.ray_address, ray_actors=args.ray_actors, quiet=args.quiet))  # last stdout line


def _training_data(args, opts: RunOptions, timings: dict):
    from .heads.data import load_training_data
    t = time.perf_counter()
    data = load_training_data(args.cache or find_cache(feature_config(args)), opts.val_fraction, opts.seed,
                              opts.train_images)
    timings["load_s"] = time.perf_counter() - t
    return data


def cmd_train_head(args):
    from .heads.train import train_head     # scikit-learn and Numba: loaded only by the commands that train
    timings = {"startup_s": process_age()}
    opts = run_options(args)
    params = head_params(args.head, vars(args))
    print(train_head(_training_data(args, opts, timings), args.head, params, opts, timings))


def cmd_sweep(args):
    from .heads.sweep import read_space, run_sweep
    timings = {"startup_s": process_age()}
    opts = run_options(args)
    head, space, rand = read_space(args.head, args.param, args.config, args.random)
    base = head_params(head, vars(args))
    print(run_sweep(_training_data(args, opts, timings), head, space, rand, base, opts, timings)[1])


def cmd_study(args):
    from .study import parse_grid, run_study
    for flag, value in (("--cache", args.cache), ("--head", args.head)):
        if value is not None:
            raise PipelineError(f"study: {flag} is not a study option (caches come from the feature options and "
                                "--grid, head kinds from --heads); remove it")
    opts = run_options(args)
    axes, heads, sizes = parse_grid(args.grid, [h.strip() for h in args.heads.split(",") if h.strip()])
    base = {**head_params("softmax", vars(args)), **head_params("logreg", vars(args))}
    print(run_study(feature_config(args, args.forward_batch_size), axes, heads, base, opts, quiet=args.quiet,
                    train_sizes=sizes))


def cmd_predict(args):
    for line in predict.run(args.run, args.images, export=args.export, batch_size=args.batch_size):
        print(line)


def cmd_bench(args):
    print(bench.run(images=args.images, full=args.full, image_size=args.image_size, head_rows=args.head_rows,
              head_dim=args.head_dim, conv_dim=args.conv_dim, out_dir=args.out_dir, readme=args.update_readme))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="stage one: extract and cache VGG19 features")
    add_feature_options(f)
    add_run_options(f)
    f.add_argument("--shards", type=int, default=1, help="cut each split into N contiguous shards (default 1)")
    f.add_argument("--engine", default="local", choices=("local", "ray"), help="run shards here or on Ray (default local)")
    f.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local Ray)")
    f.add_argument("--ray-actors", type=int, default=None, help="Ray actors (default: one per GPU, else one per node)")
    f.set_defaults(func=cmd_features)
    for name, func, help_ in (("train-head", cmd_train_head, "stage two: train a head on cached features"),
                              ("sweep", cmd_sweep, "train many heads at once and compare them")):
        p = sub.add_parser(name, help=help_)
        add_feature_options(p)
        add_head_options(p)
        add_run_options(p)
        p.set_defaults(func=func, exit_fast=True)
    st = sub.add_parser("study", help="a grid over stage-one and head settings: each cache built once, every head "
                        "trained on it, one table and plot")
    add_feature_options(st)
    add_head_options(st)
    st.add_argument("--heads", default="softmax,logreg", help="head kinds to train on every cache (default %(default)s)")
    st.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="an axis of the grid: a stage-one setting (interpolation, image_size, layer, pooling, views, "
                         "...; layer and views values separated by ;) or a head parameter (repeatable; default: none)")
    add_run_options(st)
    st.set_defaults(func=cmd_study, exit_fast=True, head=None)     # --head given to study is refused
    s = sub.choices["sweep"]
    s.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try, e.g. dropout=0.2,0.5 (repeatable; default: none)")
    s.add_argument("--random", type=int, default=None, metavar="N", help="sample N configurations (default: the grid)")
    s.add_argument("--config", default=None, help="TOML file: head = ..., random = N, [params] key = [values] (default: none)")
    p = sub.add_parser("predict", help="classify image files end to end")
    p.add_argument("--run", required=True, help="a run folder written by train-head or sweep")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--export", default=None, metavar="PATH.keras", help="also save the end-to-end model (default: no)")
    p.add_argument("--batch-size", type=int, default=predict.BATCH_SIZE, help="images per forward pass (default %(default)s)")
    p.set_defaults(func=cmd_predict)
    b = sub.add_parser("bench", help="measure throughput against the machine and the notebook")
    b.add_argument("--images", type=int, default=None, help=f"stage-one images (default {bench.IMAGES}, --full "
                   f"{bench.FULL_IMAGES})")
    b.add_argument("--full", action="store_true", help="more images and repeats (default off)")
    b.add_argument("--image-size", type=int, default=bench.IMAGE_SIZE, help="upscale target (default %(default)s)")
    b.add_argument("--head-rows", type=int, default=bench.HEAD_ROWS, help="rows of the synthetic stage-two cache "
                   "(default %(default)s)")
    b.add_argument("--head-dim", type=int, default=bench.HEAD_DIM, help="its feature width (default %(default)s)")
    b.add_argument("--conv-dim", type=int, default=bench.CONV_DIM, help="width of the float16 conv-feature cache "
                   "(default %(default)s)")
    b.add_argument("--out-dir", default="data/bench", help="where results go (default %(default)s)")
    b.add_argument("--update-readme", action="store_true", help="write the table into README.md (default off)")
    b.set_defaults(func=cmd_bench)
    return parser


class _Terminal(logging.StreamHandler):
    """The library's log records on the terminal as the program always printed them: the message alone,
    on whatever sys.stderr is at the time (so a caller that swaps it, as tests do, sees them)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging():
    """The program's own entry point shows the library's INFO records (progress, hits, summaries); the
    library alone only logs them. Done once per process."""
    logger = logging.getLogger("pipeline")
    if not any(isinstance(h, _Terminal) for h in logger.handlers):
        logger.addHandler(_Terminal())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv=None, fast_exit=False) -> int:
    """Run one command; its exit status. With fast_exit (a process of its own, `python -m pipeline`),
    the head commands end the process here: nothing is left to clean up (files closed, run folder
    renamed into place), and skipping the interpreter's teardown of Numba's code saves ~0.5 s."""
    args = build_parser().parse_args(argv)
    configure_logging()
    code = _run(args)
    if fast_exit and getattr(args, "exit_fast", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args) -> int:
    try:
        args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
