import pytest

from pipeline.cli import build_parser
from pipeline.errors import SettingError
from pipeline.options import check_typed_head_options, given_settings


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_typed_head_options_are_noted_apart_from_stage_one_settings():
    """A head option typed (at its default or not) is noted as a head option, never as a stage-one setting:
    --head-batch-size's dest is `batch_size`, the name of a stage-one setting too."""
    args = parse("train-head", "--head-batch-size", "250", "--no-standardize", "--early-stopping", "--layer", "fc2")
    assert args.typed_head == {"batch_size", "standardize", "early_stopping"}
    assert given_settings(args) == {"layer": "fc2"}
    assert args.batch_size == 250 and args.standardize is False and args.early_stopping is True
    untyped = parse("train-head")
    assert not getattr(untyped, "typed_head", ()) and given_settings(untyped) == {}
    assert untyped.early_stopping is False and untyped.standardize is True
    off = parse("train-head", "--early-stopping", "--no-early-stopping")   # every true-or-false option: --x, --no-x
    assert off.early_stopping is False and off.typed_head == {"early_stopping"}


@pytest.mark.parametrize("argv,kinds,option,ok", [
    (["--dropout", "0.5"], ["softmax"], "--head", True),
    (["--dropout", "0.5"], ["logreg"], "--head", False),          # typed at its default: still refused
    (["--normalize", "l2"], ["logreg"], "--head", True),           # both heads take it
    (["--C", "auto"], ["softmax"], "--head", False),
    (["--C", "auto", "--dropout", "0.2"], ["softmax", "logreg"], "--heads", True),
    (["--seed", "3", "--val-fraction", "0.2"], ["logreg"], "--head", True),   # run options of every head
    (["--no-early-stopping"], ["logreg"], "--head", False),       # a softmax run option, typed off: still refused
])
def test_a_head_option_must_belong_to_one_of_the_heads(argv, kinds, option, ok):
    args = parse("sweep", *argv)
    if ok:
        check_typed_head_options(args, kinds, option)
    else:
        with pytest.raises(SettingError, match="applies to the .* head, not to " + option):
            check_typed_head_options(args, kinds, option)
