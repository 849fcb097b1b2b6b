"""Command line: `python -m pipeline {features,train-head,sweep,predict,bench}` (also `pipeline`).

Each subcommand parses its options here and hands a validated config to its stage; a user's
mistake (PipelineError) prints one line and exits 1, Ctrl-C exits 130 keeping finished work.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import config as C
from .config import FeatureConfig, PipelineError


def add_feature_options(p: argparse.ArgumentParser):
    """The options that select a cache: shared by features, train-head and sweep."""
    p.add_argument("--dataset", default=C.DATASET, help="cifar10|cifar100 through keras.datasets (default %(default)s)")
    p.add_argument("--data-dir", default=C.DATA_DIR, help="offline input: CIFAR python batches or image folders (dir or .tar.gz)")
    p.add_argument("--splits", default=",".join(C.SPLITS), help="comma list of train,test (default %(default)s)")
    p.add_argument("--limit", type=int, default=C.LIMIT, help="at most N images per split, stratified by class")
    p.add_argument("--weights", default=C.WEIGHTS, help="imagenet|random|PATH (default %(default)s)")
    p.add_argument("--weights-seed", type=int, default=C.SEED, help="seed of --weights random (default %(default)s)")
    p.add_argument("--layer", default=C.LAYER, help="fc2|fc1|block5_pool (default %(default)s)")
    p.add_argument("--image-size", type=int, default=C.IMAGE_SIZE, help="upscale to this size (default %(default)s)")
    p.add_argument("--interpolation", default=C.INTERPOLATION, help="cubic|linear|nearest|area|lanczos (default %(default)s)")
    p.add_argument("--precision", default=C.PRECISION, help="auto|float32|bfloat16|float16 (default %(default)s)")
    p.add_argument("--store-dtype", default=C.STORE_DTYPE, help="float32|float16 (default %(default)s)")
    p.add_argument("--cache-dir", default=C.CACHE_DIR, help="where caches live (default %(default)s)")
    p.add_argument("--on-bad-image", default=C.ON_BAD_IMAGE, help="fail|skip (default %(default)s)")
    p.add_argument("--max-image-pixels", type=int, default=C.MAX_IMAGE_PIXELS,
                   help="image files with more pixels are bad images, refused before decoding (default %(default)s)")


def feature_config(args, batch_size=None) -> FeatureConfig:
    return FeatureConfig(dataset=args.dataset, data_dir=args.data_dir, splits=args.splits, limit=args.limit,
                         weights=args.weights, seed=args.weights_seed, layer=args.layer, image_size=args.image_size,
                         interpolation=args.interpolation, precision=args.precision, store_dtype=args.store_dtype,
                         batch_size=C.BATCH_SIZE if batch_size is None else batch_size, cache_dir=args.cache_dir,
                         on_bad_image=args.on_bad_image, max_image_pixels=args.max_image_pixels)


def cmd_features(args):
    from .features import run_features
    cfg = feature_config(args, args.batch_size)
    if args.shards < 1:
        raise PipelineError(f"--shards: expected N >= 1, got {args.shards}")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise PipelineError(f"--ray-actors: expected N >= 1 (or leave it out: one per GPU, else per node), "
                            f"got {args.ray_actors}")
    if args.shards > 1 or args.engine != "local":
        from .shards import run_sharded
        path = run_sharded(cfg, shards=args.shards, engine=args.engine, ray_address=args.ray_address, quiet=args.quiet,
                           ray_actors=args.ray_actors)
    else:
        path = run_features(cfg, quiet=args.quiet)
    print(path)  # the last line on stdout: scripts can use it


STAGE_TWO = [("train-head", "train", "stage two: train a head on cached features"),
             ("sweep", "sweep", "train many heads at once and compare them"),
             ("predict", "predict", "classify image files end to end"),
             ("bench", "bench", "measure throughput against the machine and the notebook")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="stage one: extract and cache VGG19 features")
    add_feature_options(f)
    f.add_argument("--batch-size", type=int, default=C.BATCH_SIZE, help="images per forward pass (default %(default)s)")
    f.add_argument("--shards", type=int, default=1, help="cut each split into N contiguous shards (default 1)")
    f.add_argument("--engine", default="local", choices=("local", "ray"), help="run shards here or on Ray")
    f.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local Ray)")
    f.add_argument("--ray-actors", type=int, default=None, help="Ray actors (default: one per GPU, else one per node)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_features)
    for name, module, help_ in STAGE_TWO:
        p = sub.add_parser(name, help=help_)
        if name in ("train-head", "sweep"):
            add_feature_options(p)
        mod = importlib.import_module(f"pipeline.{module}")
        mod.add_arguments(p)
        p.set_defaults(func=mod.main, exit_fast=name in ("train-head", "sweep"))
    return parser


def main(argv=None, fast_exit=False) -> int:
    """Run one command; its exit status. With fast_exit (a process of its own, `python -m pipeline`),
    the head commands end the process here: nothing is left to clean up (files closed, run folder
    renamed into place), and skipping the interpreter's teardown of Numba's code saves ~0.5 s."""
    args = build_parser().parse_args(argv)
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
