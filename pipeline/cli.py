"""Command line: `python -m pipeline {features,caches,train-head,sweep,study,ensemble,runs,predict,bench,gpu-check}` (also `pipeline`).

The front door: it parses options (made in options.py) into each stage's settings (stage one: `FeatureConfig`; stage
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
from .errors import PipelineError, SettingError, stop_said
from .features import FeatureConfig, check_cache_settings, extract, find_cache
from .heads.config import PARAMS, PROGRESS, RUNS_DIR, RunOptions, head_params
from .heads.config import flag as head_flag
from .heads.runs import process_age
from .options import (add_feature_options, add_head_options, add_run_options, check_typed_head_options,
                      feature_config, given_settings, run_options)


def cmd_features(args):
    print(extract(feature_config(args), shards=args.shards, engine=args.engine,
                  ray_address=args.ray_address, ray_actors=args.ray_actors, quiet=args.quiet))  # last stdout line


def cmd_caches(args):
    from .features.inventory import report
    text, failed = report(args.cache_dir, verify=args.verify, as_json=args.json)
    print(text)
    if failed:
        raise PipelineError(failed)


def _training_data(args, opts: RunOptions, timings: dict):
    from .heads.data import load_training_data
    t = time.perf_counter()
    data = load_training_data(args.cache or find_cache(feature_config(args)), opts.val_fraction, opts.seed,
                              opts.train_images)
    timings["load_s"] = time.perf_counter() - t
    if args.cache:                       # the options beside --cache must describe it, not be ignored
        check_cache_settings(given_settings(args), args.cache, data.provenance.get("settings", {}))
    return data


def cmd_train_head(args):
    from .heads.train import train_head     # scikit-learn and Numba: loaded only by the commands that train
    timings = {"startup_s": process_age()}
    opts = run_options(args)
    check_typed_head_options(args, [args.head])
    params = head_params(args.head, vars(args))
    print(train_head(_training_data(args, opts, timings), args.head, params, opts, timings))


def cmd_sweep(args):
    from .heads.sweep import read_space, run_sweep
    timings = {"startup_s": process_age()}
    opts = run_options(args)
    head, space, rand = read_space(args.head, args.param, args.config, args.random)
    check_typed_head_options(args, [head], args.config if args.config and head != args.head else "--head")
    base = head_params(head, vars(args))
    print(run_sweep(_training_data(args, opts, timings), head, space, rand, base, opts, timings,
                    refit_best=args.refit_best)[1])


def cmd_study(args):
    from .study import parse_grid, run_study
    for flag, value in (("--cache", args.cache), ("--head", args.head)):
        if value is not None:
            raise PipelineError(f"study: {flag} is not a study option (caches come from the feature options and "
                                "--grid, head kinds from --heads); remove it")
    opts = run_options(args)
    axes, heads, runs = parse_grid(args.grid, [h.strip() for h in args.heads.split(",") if h.strip()])
    check_typed_head_options(args, list(heads), "--heads")
    base = {**head_params("softmax", vars(args)), **head_params("logreg", vars(args))}
    print(run_study(feature_config(args), axes, heads, base, opts, quiet=args.quiet, runs=runs))


def cmd_ensemble(args):
    from .heads.ensemble import read_members, run_ensemble, split_of
    timings = {"startup_s": process_age()}
    members = read_members(args.run)
    opts = RunOptions(runs_dir=args.runs_dir, name=args.name, quiet=args.quiet, **split_of(members[0])).validated()
    print(run_ensemble(_training_data(args, opts, timings), members, opts, timings))


def cmd_runs(args):
    from .leaderboard import report
    print(report(args.runs_dir, args.cache_key, as_json=args.json))


def cmd_predict(args):
    for line in predict.lines(args.run, args.images, export=args.export, batch_size=args.batch_size, tta=args.tta,
                              quiet=args.quiet, recursive=args.recursive):
        print(line, flush=True)          # each batch's lines as it is done: a reader sees them, Ctrl-C keeps them


def cmd_gpu_check(args):
    from . import gpu_check
    print(gpu_check.run(out_dir=args.out_dir, quick=args.quick, data_dir=args.data_dir, batch_size=args.batch_size,
                        full=not args.no_full))


def cmd_bench(args):
    print(bench.run(images=args.images, full=args.full, image_size=args.image_size, head_rows=args.head_rows,
              head_dim=args.head_dim, conv_dim=args.conv_dim, out_dir=args.out_dir, readme=args.update_readme))


KEPT = {   # what Ctrl-C (or SIGTERM) leaves, per command
    "features": "the finished batches are kept (the cache's .partial journal); re-run the same command to resume",
    "caches": "nothing was changed (a cache verified before the stop is remembered as verified)",
    "train-head": "nothing was written (a run folder appears only when it is finished); re-run the command",
    "sweep": "nothing was written (the sweep and its best run appear only when finished); re-run the command",
    "study": "built caches and every finished (cache, head) row are kept (<study>/rows); re-run the same command "
             "to resume",
    "ensemble": "nothing was written (its run folder appears only when it is finished); re-run the command",
    "runs": "nothing was changed",
    "predict": "the lines above are the images classified so far (an export is written whole, before them, or not "
               "at all)",
    "bench": "nothing was written; re-run the command",
    "gpu-check": "nothing was written; re-run the command",
}


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a mistaken option is one line, starting "error: " as every other mistake's, and exit
    status 1 (argparse: the whole usage, 2); subcommands' parsers are of this class too."""

    stage_two_flags = frozenset()     # the top parser: options `features` refuses that stage two takes

    def error(self, message):
        self.exit(1, f"error: {self.prog}: {message}; see {self.prog} --help\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but a stage-two option given to `features` (as `make ARGS="--dropout 0.3"` gives it) is
        said as such, with where it goes."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            stage_two = [f for f in (a.split("=")[0] for a in extras) if f in self.stage_two_flags]
            if stage_two and getattr(ns, "command", None) == "features":
                self.error(f"{stage_two[0]}: a stage-two option, not one of features; give it to `make train-head "
                           "ARGS=...` (`make ARGS=...` gives both stages the same options)")
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="stage one: extract and cache VGG19 features")
    add_feature_options(f)
    add_run_options(f)
    f.add_argument("--shards", type=int, default=1, help="cut each split into N contiguous shards (default 1)")
    f.add_argument("--engine", default="local", choices=("local", "ray"), help="run shards here or on Ray (default local)")
    f.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local Ray)")
    f.add_argument("--ray-actors", type=int, default=None, help="Ray actors (default: one per GPU, else one per node)")
    f.set_defaults(func=cmd_features)
    c = sub.add_parser("caches", help="list the caches of a folder: how each was made, its rows and size, builds in "
                       "progress and how far they got, files set aside as damaged")
    c.add_argument("--cache-dir", default=FeatureConfig.cache_dir, help="the folder (default %(default)s)")
    c.add_argument("--verify", action="store_true", help="also verify every cache's features now (their SHA-256, "
                   "as a first load does; remembered, so a load after it skips that pass); exit status 1 if one is "
                   "damaged (default off)")
    c.add_argument("--json", action="store_true", help="print the list as JSON instead of a table (default off)")
    c.set_defaults(func=cmd_caches)
    for name, func, help_ in (("train-head", cmd_train_head, "stage two: train a head on cached features"),
                              ("sweep", cmd_sweep, "train many heads at once and compare them")):
        p = sub.add_parser(name, help=help_)
        add_feature_options(p)
        parser.stage_two_flags = frozenset(add_head_options(p))    # the same options for both commands
        add_run_options(p)
        p.set_defaults(func=func, exit_fast=True)
    st = sub.add_parser("study", help="a grid over stage-one and head settings: each cache built once, every head "
                        "trained on it, one table and plot")
    add_feature_options(st)
    add_head_options(st)
    st.add_argument("--heads", default="softmax,logreg", help="head kinds to train on every cache (default %(default)s)")
    st.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="an axis of the grid: a stage-one setting (interpolation, image_size, layer, pooling, views, "
                         "...; layer and views values separated by ;), a head parameter, train_images (a learning "
                         "curve) or seed (repeats, ranked by their mean) (repeatable; default: none)")
    add_run_options(st)
    st.set_defaults(func=cmd_study, exit_fast=True, head=None)     # --head given to study is refused
    s = sub.choices["sweep"]
    s.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try, e.g. dropout=0.2,0.5 (repeatable; default: none)")
    s.add_argument("--random", type=int, default=None, metavar="N", help="sample N configurations (default: the grid)")
    s.add_argument("--config", default=None, help="TOML file: head = ..., random = N, [params] key = [values] (default: none)")
    s.add_argument("--refit-best", action="store_true",
                   help="train the configuration best on validation again on train + validation (every view) before "
                        "its test score: the protocol's refit for the one chosen head, where --param refit=true refits "
                        "every configuration (default: off; refit=auto, the default, does it where the labelled images "
                        "are few)")
    e = sub.add_parser("ensemble", help="one classifier from heads trained on one cache: the mean of their "
                       "probabilities, scored and written as a run folder of its own")
    e.add_argument("--run", action="append", required=True, help="a run folder of train-head or sweep on the cache "
                   "(repeat: 2 to 16 heads; their validation split is the ensemble's)")
    add_feature_options(e)
    e.add_argument("--cache", default=None, help="cache file (default: the one the feature options select)")
    e.add_argument("--name", default=None, help="run folder name (default: a timestamp)")
    e.add_argument("--runs-dir", default=RUNS_DIR, help="where run folders go (default %(default)s)")
    add_run_options(e)
    e.set_defaults(func=cmd_ensemble, exit_fast=True)
    r = sub.add_parser("runs", help="every run folder in one table, best on validation first (against runs validated "
                       "on the same images): test accuracy with its 95%% interval, the head's parameters, its cache, "
                       "its cost")
    r.add_argument("--runs-dir", default=RUNS_DIR, help="where run folders are (default %(default)s)")
    r.add_argument("--cache-key", default=None, metavar="KEY", help="only runs on caches whose key starts with KEY "
                   "(the 16 characters `caches` and the cache's file name show) (default: all)")
    r.add_argument("--json", action="store_true", help="print the list as JSON instead of a table (default off)")
    r.set_defaults(func=cmd_runs)
    p = sub.add_parser("predict", help="classify image files end to end")
    p.add_argument("--run", required=True, help="a run folder written by train-head or sweep")
    p.add_argument("images", nargs="+", help="image files, or folders of them (a folder: its own image files, sorted; "
                   "see --recursive)")
    p.add_argument("--export", default=None, metavar="PATH.keras", help="also save the end-to-end model (default: no)")
    p.add_argument("--batch-size", type=int, default=predict.BATCH_SIZE, help="images per forward pass (default %(default)s)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="the mean over the run's cached views of each image, as its TTA figures (default: on where "
                        "the run's cache has views)")
    p.add_argument("--recursive", action="store_true", help="a folder's sub-folders too, their image files after its "
                   "own, folder by folder in name order; links are not followed (default off)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default off)")
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
    g = sub.add_parser("gpu-check", help="stage one where a GPU is: bench rows, the feeding path, the full extraction "
                       "(gpu/check.sh installs what is missing first)")
    g.add_argument("--out-dir", default="data/gpu-check", help="where gpu-check.json and .md go (default %(default)s)")
    g.add_argument("--quick", action="store_true", help="tiny sizes: every part in about a minute, e.g. on a CPU "
                   "(default off)")
    g.add_argument("--data-dir", default=None, help="the full CIFAR-10 python tarball (default: ../shared/data or "
                   "shared/data, else 60,000 synthetic images)")
    g.add_argument("--batch-size", type=int, default=None, help=f"images per forward pass (default "
                   f"{256} on a GPU, {32} on a CPU)")
    g.add_argument("--no-full", action="store_true", help="skip the full extraction (default off)")
    g.set_defaults(func=cmd_gpu_check)
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


def main(argv=None, fast_exit=False, before_exit=None) -> int:
    """Run one command; its exit status. With fast_exit (a process of its own, `python -m pipeline`),
    the head commands end the process here, after before_exit(): nothing is left to clean up (files
    closed, run folder renamed into place), and skipping the interpreter's teardown of Numba's code saves ~0.5 s."""
    args = build_parser().parse_args(argv)
    configure_logging()
    level = PROGRESS.level
    if getattr(args, "quiet", False):           # no progress bars, nor the long fits' heartbeat lines
        PROGRESS.setLevel(logging.WARNING)
    try:
        code = _run(args)
    finally:
        PROGRESS.setLevel(level)
    if fast_exit and getattr(args, "exit_fast", False):
        sys.stdout.flush()
        sys.stderr.flush()
        if before_exit:
            before_exit()
        os._exit(code)
    return code


def option_of(e: SettingError) -> str:
    """The command-line option of the setting a SettingError names."""
    if e.owner in (None, "RunOptions", "sweep", "study") and e.name in PARAMS:   # stage two's parameters
        return head_flag(e.name)
    return "--" + e.name.replace("_", "-")


def _run(args) -> int:
    try:
        args.func(args)
    except SettingError as e:          # named as the library knows it; said as the option the user typed
        print(f"error: {option_of(e)}: {e.detail}", file=sys.stderr)
        return 1
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        word, code = stop_said(e)
        print(f"{word}: {KEPT[args.command]}", file=sys.stderr)
        return code
    return 0
