"""The front door: every option says what it does and its default."""
import argparse

import pytest

from pipeline.cli import build_parser


@pytest.mark.parametrize("command", ["features", "train-head", "sweep", "predict", "bench"])
def test_every_option_has_help_with_its_default(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings or action.required:
            continue
        assert action.help and "default" in action.help, f"{command} {action.option_strings[0]}: {action.help!r}"
