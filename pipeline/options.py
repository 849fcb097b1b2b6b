"""The command line's options, made from each stage's declarations: one per stage-one setting
(features/config.py) and one per head parameter and run option (heads/config.py), each typed one
noted so that the front door (cli.py) can check what the user typed against the cache or the head.
"""
from __future__ import annotations

import argparse
import dataclasses

from .errors import SettingError
from .features import FeatureConfig
from .heads.config import HEAD, PARAMS, RUNS_DIR, RunOptions
from .heads.config import flag as head_flag


def _help(text: str) -> str:
    return text if "(default" in text else text + " (default %(default)s)"


class _Typed(argparse.Action):
    """Stores the option's value and notes that it was typed, defaults aside: a stage-one setting in
    `typed` (given_settings), a head parameter in `typed_head` (check_typed_head_options)."""
    record = "typed"

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_typed(namespace, self.record, self.dest)


class _TypedHead(_Typed):
    record = "typed_head"


class _TypedHeadBool(argparse.BooleanOptionalAction):
    """--x / --no-x for a true-or-false head parameter."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _note_typed(namespace, _TypedHead.record, self.dest)


def _note_typed(namespace, record: str, dest: str):
    setattr(namespace, record, getattr(namespace, record, frozenset()) | {dest})


def check_typed_head_options(args, kinds: list, option: str = "--head"):
    """Refuse a head parameter typed on the command line that none of the heads `kinds` takes: `--head logreg
    --dropout 0.3` would otherwise train as if the option were not there. `option` says where the heads came
    from: --head, --heads, or a sweep's TOML file (its path)."""
    for name in sorted(getattr(args, "typed_head", ())):
        takes = PARAMS[name].heads
        if set(takes) & set(kinds) or not takes:
            continue
        if option == "--head":
            where, fix = f"--head {kinds[0]}", f"pass --head {takes[0]}"
        elif option == "--heads":
            where, fix = f"--heads {','.join(kinds)}", f"add {takes[0]} to --heads"
        else:
            where, fix = f'head = "{kinds[0]}" in {option}', f'set head = "{takes[0]}" there'
        raise SettingError(name, f"applies to the {'/'.join(takes)} head, not to {where}; remove it or {fix}")


def add_feature_options(p: argparse.ArgumentParser, settings=FeatureConfig):
    """The options that select a cache (features, train-head, sweep, study): one per stage-one setting,
    made from its declaration (features/config.py). --batch-size is a run option (add_run_options)."""
    for f in dataclasses.fields(settings):
        if f.name != "batch_size":
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            p.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["parse"], default=default, action=_Typed,
                           help=_help(f.metadata["help"]))


def given_settings(args) -> dict:
    """The stage-one settings typed on the command line (at their default or not), name -> value."""
    return {name: getattr(args, name) for name in sorted(getattr(args, "typed", ()))}


def feature_config(args, settings=FeatureConfig) -> FeatureConfig:
    """The stage-one settings the options say."""
    return settings(**{f.name: getattr(args, "forward_batch_size" if f.name == "batch_size" else f.name)
                       for f in dataclasses.fields(settings)})


def add_run_options(p: argparse.ArgumentParser):
    """Options every command that may build features takes, meaning the same everywhere, so that
    `make ARGS="..."` can hand one set of options to both stages."""
    p.add_argument("--batch-size", type=int, default=FeatureConfig.batch_size, dest="forward_batch_size",
                   help="images per forward pass of stage one (not in the key; unused by heads on a built cache) "
                        "(default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary tables (default off)")


def add_head_options(p: argparse.ArgumentParser) -> set:
    """One option per head parameter and run option, made from its declaration (heads/config.py); their
    option strings (stage two's own: `features` takes none of them)."""
    o = p.add_argument
    actions = [o("--cache", default=None, help="cache file (default: the one the feature options select)"),
               o("--head", default=HEAD, choices=("softmax", "logreg"), help="softmax: Dropout -> Dense softmax; "
                 "logreg: StandardScaler + LogisticRegression (default %(default)s)")]
    for name, param in PARAMS.items():
        kw = {"action": _TypedHeadBool} if param.kind is bool else \
            {"type": str if param.auto else param.kind, "action": _TypedHead}
        if param.choices:
            kw["choices"] = param.choices
        actions.append(o(head_flag(name), dest=name, default=param.default, help=_help(param.help), **kw))
    actions.append(o("--name", default=None, help="run folder name (default: a timestamp)"))
    actions.append(o("--runs-dir", default=RUNS_DIR, help="where run folders go (default %(default)s)"))
    return {s for a in actions for s in a.option_strings}


def run_options(args) -> RunOptions:
    return RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)}).validated()
