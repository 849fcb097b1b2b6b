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


def test_make_args_mean_one_thing_in_both_stages(syn, tmp_path, capsys):
    """`make ARGS="..."` hands the same options to features and train-head: --batch-size is stage one's
    forward-pass size everywhere (the head's is --head-batch-size) and --quiet works for both."""
    from conftest import run_captured
    args = parse("train-head", "--batch-size", "64", "--quiet")
    assert args.forward_batch_size == 64 and args.batch_size == 250 and args.quiet
    assert parse("features", "--batch-size", "64").forward_batch_size == 64
    assert parse("train-head", "--head-batch-size", "50").batch_size == 50
    code, out, err = run_captured(capsys, "train-head", "--cache", syn, "--runs-dir", tmp_path, "--batch-size", "7",
                                  "--quiet", "--epochs", "2")
    assert code == 0 and "accuracy" not in err and out[-1].startswith(str(tmp_path))


def parse(*argv):
    from pipeline.cli import build_parser
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["features", "train-head", "sweep", "study", "predict", "bench"])
def test_ctrl_c_says_what_the_command_keeps(command, capsys, monkeypatch):
    """Ctrl-C exits 130 with one line naming what this command keeps (not the features wording everywhere)."""
    from pipeline import cli

    def stop(args):
        raise KeyboardInterrupt
    args = cli.build_parser().parse_args([command] + (["--run", "r", "x.png"] if command == "predict" else []))
    args.func = stop
    assert cli._run(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"interrupted: {cli.KEPT[command]}"
    assert ("journal" in err[0]) == (command == "features") and ("rows" in err[0]) == (command == "study")


@pytest.mark.parametrize("argv,needle", [
    (["train-head", "--init", "ones"], "argument --init: invalid choice: 'ones'"),
    (["sweep", "--epochs", "many"], "argument --epochs: invalid"),
    (["features", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_a_mistaken_option_is_one_line_and_exit_status_1(argv, needle, capsys):
    from pipeline.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and needle in err and err.count("\n") == 1 and "--help" in err
