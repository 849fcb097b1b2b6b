"""The front door: every option says what it does and its default."""
import argparse

import pytest

from pipeline.cli import build_parser


@pytest.mark.parametrize("command", ["features", "caches", "train-head", "sweep", "runs", "predict", "bench"])
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


@pytest.mark.parametrize("command", ["features", "caches", "train-head", "sweep", "study", "runs", "predict", "bench"])
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


@pytest.mark.parametrize("command", ["features", "train-head", "study", "runs"])
def test_sigterm_says_what_the_command_keeps_with_its_own_word_and_status(command, capsys):
    """SIGTERM arrives as Terminated (a KeyboardInterrupt, so every cleanup Ctrl-C runs runs too): one line,
    `terminated:` and what the command keeps, exit status 143 (128 + 15)."""
    from pipeline import cli
    from pipeline.errors import Terminated

    def stop(args):
        raise Terminated
    args = cli.build_parser().parse_args([command])
    args.func = stop
    assert cli._run(args) == 143
    assert capsys.readouterr().err.strip().splitlines() == [f"terminated: {cli.KEPT[command]}"]


def test_sigterm_stops_the_program_as_ctrl_c_does(syn, tmp_path):
    """`kill`, `timeout` or a scheduler's stop (SIGTERM) to `python -m pipeline`: the command ends as for
    Ctrl-C, in one line and exit status 143, with no run folder half-written. Before, the process died
    silently (status -15). The signal comes 2 s in, from a timer: whatever the command is doing then."""
    import os
    import subprocess
    from conftest import PY, ROOT
    from pipeline import cli
    script = ("import os, signal, sys, threading\n"
              "from pipeline import __main__ as entry\n"
              "threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
              "sys.argv = ['pipeline'] + sys.argv[1:]\n"
              "sys.exit(entry.run())\n")
    runs = tmp_path / "r"
    proc = subprocess.run([PY, "-c", script, "train-head", "--cache", syn, "--runs-dir", str(runs), "--epochs", "100000",
                           "--head-batch-size", "1", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"terminated: {cli.KEPT['train-head']}"]
    assert proc.stdout == "" and (not runs.exists() or os.listdir(runs) == [])


def test_a_stop_while_starting_is_one_line_too():
    """SIGTERM before a command began (its imports, the options' parsing): one line, exit status 143."""
    import subprocess
    from conftest import PY, ROOT
    script = ("import os, signal, sys, time, types\n"
              "from pipeline import __main__ as entry\n"
              "cli = types.ModuleType('pipeline.cli')\n"
              "def main(**kw):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(60)\n"
              "cli.main = main\n"
              "sys.modules['pipeline.cli'] = cli\n"
              "sys.exit(entry.run())\n")
    proc = subprocess.run([PY, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines() == ["terminated: stopped while starting; nothing was done"]


def test_the_package_and_its_entry_point_load_nothing_heavy_so_a_sigterm_is_caught_from_the_start():
    """`import pipeline` and the entry module load no NumPy, HDF5, OpenCV, Numba or scikit-learn (the public names
    are imported where first used), so `python -m pipeline` installs its SIGTERM handler milliseconds in; it used
    to come after NumPy and HDF5, ~0.2 s in, and a SIGTERM before then ended the program silently (status -15)."""
    import subprocess
    from conftest import PY, ROOT
    code = ("import sys, pipeline, pipeline.__main__\n"
            "print(sorted(m for m in ('numpy', 'h5py', 'cv2', 'numba', 'sklearn') if m in sys.modules))")
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_public_names_are_there_when_used():
    import pipeline
    from pipeline import FeatureConfig, PipelineError, SoftmaxHead, extract, find_cache, load_cache
    from pipeline.errors import PipelineError as same
    assert PipelineError is same and FeatureConfig.__name__ == "FeatureConfig" and SoftmaxHead.__name__ == "SoftmaxHead"
    assert all(map(callable, (extract, find_cache, load_cache)))
    assert all(callable(getattr(pipeline, name)) for name in pipeline.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pipeline.nope


@pytest.mark.parametrize("argv,needle", [
    (["features", "--dropout", "0.3"], "--dropout: a stage-two option, not one of features; give it to `make "
                                       "train-head ARGS=...`"),
    (["features", "--runs-dir=runs"], "--runs-dir: a stage-two option"),
    (["features", "--no-standardize"], "--no-standardize: a stage-two option"),
    (["train-head", "--init", "ones"], "argument --init: invalid choice: 'ones'"),
    (["sweep", "--patience", "many"], "argument --patience: invalid"),
    (["features", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_a_mistaken_option_is_one_line_and_exit_status_1(argv, needle, capsys):
    from pipeline.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and needle in err and err.count("\n") == 1 and "--help" in err and err.startswith("error: ")


def test_options_beside_cache_must_describe_it(cifar_dir, tmp_path, capsys):
    """--cache with stage-one options: options the cache was made with (in any spelling) train; an option it
    was not made with is one line naming it, not silently ignored; a synthetic cache takes none."""
    from conftest import SMALL, is_one_line_error, run_captured
    made = ["--data-dir", cifar_dir, "--layer", "block5_pool:avg", "--cache-dir", tmp_path / "c", *SMALL]
    code, out, _ = run_captured(capsys, "features", *made)
    assert code == 0
    cache, head = out[-1], ["--runs-dir", tmp_path / "r", "--epochs", "1", "--val-fraction", "0", "--quiet"]
    code, out, err = run_captured(capsys, "train-head", "--cache", cache, *made[2:], *head)   # the same settings
    assert code == 0, err
    code, out, err = run_captured(capsys, "train-head", "--cache", cache, "--layer", "block5_pool", "--pooling",
                                  "avg", "--precision", "auto", *head)                        # another spelling
    assert code == 0, err
    for option, value, needle in (("--image-size", "64", "expected the value --cache"),
                                  ("--layer", "block4_pool:avg", "'block5_pool:avg'"),
                                  ("--precision", "bfloat16", "'float32', got 'bfloat16'"),
                                  ("--views", "flip", "drop the option to use that cache")):
        code, out, err = run_captured(capsys, "train-head", "--cache", cache, option, value, *head)
        assert is_one_line_error(code, err, f"error: {option}: ") and needle in err, err
    code, out, err = run_captured(capsys, "train-head", "--cache", cache, "--image-size", "224", "--layer", "fc2",
                                  *head)         # a valid setting that cannot describe this cache
    assert is_one_line_error(code, err, "expected the value --cache")
    from pipeline.features.synthetic import write_synthetic_cache
    syn = write_synthetic_cache(str(tmp_path / "syn.h5"), 40, 20, dim=8, n_classes=2)
    code, out, err = run_captured(capsys, "train-head", "--cache", syn, "--image-size", "64", *head)
    assert is_one_line_error(code, err, "was not made from stage-one settings")
    assert run_captured(capsys, "train-head", "--cache", syn, *head)[0] == 0


def test_a_reader_that_stops_early_ends_the_program_quietly(syn, tmp_path, capsys):
    """`pipeline runs | head`: the rest of the output has nowhere to go; no traceback, exit status 1."""
    import os
    import shutil
    import subprocess
    from conftest import PY, ROOT, run_captured
    code, out, err = run_captured(capsys, "train-head", "--cache", syn, "--runs-dir", tmp_path / "r", "--name", "one",
                                  "--epochs", "1", "--quiet")
    assert code == 0
    for i in range(300):                                   # ~1 MB of JSON: more than a pipe holds
        os.makedirs(tmp_path / "many" / f"run{i}")
        shutil.copy(tmp_path / "r" / "one" / "metrics.json", tmp_path / "many" / f"run{i}")
    proc = subprocess.Popen([PY, "-m", "pipeline", "runs", "--runs-dir", str(tmp_path / "many"), "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()
    assert proc.wait(timeout=120) == 1 and proc.stderr.read() == b""


def test_a_reader_of_standard_error_that_is_gone_stops_the_build_quietly(cifar_dir, tmp_path):
    """`features 2>&1 | head`: the progress has nowhere to go; exit status 1 (not the interpreter's 120
    for a failed flush at exit), and the same command afterwards finishes the cache."""
    import os
    import subprocess
    from conftest import PY, ROOT
    cmd = [PY, "-m", "pipeline", "features", "--data-dir", cifar_dir, "--weights", "random", "--image-size", "32",
           "--precision", "float32", "--cache-dir", str(tmp_path / "c")]
    read, write = os.pipe()
    os.close(read)                                               # the reader is gone before the first line
    try:
        code = subprocess.run(cmd, cwd=ROOT, stdout=write, stderr=write, timeout=300).returncode
    finally:
        os.close(write)
    assert code == 1
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith(".h5"), done.stderr
    assert os.path.exists(done.stdout.strip().splitlines()[-1])
