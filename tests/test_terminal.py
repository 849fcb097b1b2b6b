"""`python -m pipeline`'s terminal: TensorFlow's native start-up lines dropped, nothing else touched."""
import os
import subprocess
import sys

import pytest

from pipeline.terminal import LineFilter, patterns_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As TensorFlow 2.21 writes them on a CPU machine (and one line as older versions did)
CHATTER = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796092241.880015   17063 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. "
    b"To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    b"I0000 00:00:1796092241.880353   17063 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    b"E0000 00:00:1796092245.657655   17063 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)",
    b"I0000 00:00:1796092245.657655   17063 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    b"available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, "
    b"rebuild TensorFlow with the appropriate compiler flags.",
    b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda "
    b"drivers on your machine, GPU will not be used.",
]
KEPT = [
    b"features: tensorflow on cpu:0, computing in bfloat16",
    b"E0000 00:00:1796092245.657655   17063 some_kernel.cc:52] a real error from another part of TensorFlow",
    b"W0000 00:00:1796092245.657655   17063 saver.cc:12] a warning from elsewhere",
    b"Traceback (most recent call last):",
    b"error: --cache: not a cache; pass a file written by `features`",
]


def run_filter(chunks, level="2"):
    f = LineFilter(patterns_for(level))
    return b"".join(f.feed(c) for c in chunks) + f.flush()


def test_known_lines_dropped_everything_else_kept():
    text = b"\n".join(line for pair in zip(CHATTER, KEPT + [b""] * len(CHATTER)) for line in pair if line) + b"\n"
    assert run_filter([text]) == b"".join(line + b"\n" for line in KEPT)


def test_split_anywhere_gives_the_same_bytes():
    text = b"\n".join(CHATTER + KEPT) + b"\nno newline at the end"
    whole = run_filter([text])
    for cut in range(0, len(text), 37):
        assert run_filter([text[:cut], text[cut:]]) == whole
    assert run_filter([text[i:i + 1] for i in range(len(text))]) == whole
    assert whole.endswith(b"no newline at the end")


def test_progress_passes_at_once_and_a_possible_log_line_waits_for_its_end():
    f = LineFilter(patterns_for("2"))
    assert f.feed(b"\rtrain:  16%|#5   | 32/200") == b"\rtrain:  16%|#5   | 32/200"     # no newline needed
    assert f.feed(b"I0000 00:00:1796092241.880353   17063 cudart_stub") == b""         # may be chatter: held
    assert f.feed(b".cc:31] Could not find cuda drivers\n") == b""
    assert f.feed(b"Traceback (most") == b""
    assert f.feed(b" recent call last):\n") == b"Traceback (most recent call last):\n"


@pytest.mark.parametrize("level, dropped", [("0", 0), ("1", 5), ("2", len(CHATTER)), ("3", len(CHATTER)), ("x", 0)])
def test_the_level_follows_tf_cpp_min_log_level(level, dropped):
    out = run_filter([b"\n".join(CHATTER) + b"\n"], level)
    assert len(out.splitlines()) == len(CHATTER) - dropped


def _child(code: str, level: str = "2"):
    """A Python process whose descriptor 2 goes through the filter while `code` runs inside it."""
    program = ("import os, sys\nfrom pipeline.terminal import NativeLogFilter, patterns_for\nbefore = os.fstat(2)\n"
               f"terminal = NativeLogFilter(patterns_for({level!r})).start()\n{code}\n")
    return subprocess.run([sys.executable, "-c", program], capture_output=True, env={**os.environ, "PYTHONPATH": ROOT},
                          timeout=60)


def test_a_process_writes_through_the_filter_and_gets_its_descriptor_back():
    chatter = b"\n".join(CHATTER).decode()
    proc = _child(f"os.write(2, {chatter!r}.encode() + b'\\nnative kept\\n')\nprint('python kept', file=sys.stderr)\n"
                  "for i in range(200):\n    os.write(2, b'native %d\\n' % i)\n    print('python', i, file=sys.stderr)\n"
                  "assert os.fstat(2).st_ino != before.st_ino\nterminal.stop()\n"
                  "assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (before.st_ino, before.st_dev)\n"
                  "print('after stop', file=sys.stderr)")
    assert proc.returncode == 0, proc.stderr
    # two paths, any order, each line whole (print writes a line in one piece: the child never lands inside it)
    expected = [b"after stop", b"native kept", b"python kept"] + [b"%s %d" % (w, i) for w in (b"native", b"python")
                                                                    for i in range(200)]
    assert sorted(proc.stderr.splitlines()) == sorted(expected)


def test_what_a_crash_writes_last_still_arrives():
    proc = _child("os.write(2, b'last words before the abort\\n')\nos.abort()")
    assert proc.returncode != 0
    assert proc.stderr == b"last words before the abort\n"


def test_level_zero_starts_nothing():
    proc = _child("assert terminal.child is None\nos.write(2, b'I0000 00:00:1.0 1 port.cc:1] shown\\n')", level="0")
    assert proc.returncode == 0 and proc.stderr == b"I0000 00:00:1.0 1 port.cc:1] shown\n"


def test_the_program_ends_with_its_terminal_back(tmp_path):
    """`python -m pipeline` end to end through the filter: a head command (which ends with a fast exit) says all it has to say."""
    from pipeline.features.synthetic import write_synthetic_cache
    cache = write_synthetic_cache(str(tmp_path / "c.h5"), 200, 20, dim=8)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train-head", "--cache", cache, "--runs-dir",
                           str(tmp_path / "runs"), "--epochs", "2"], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    assert b"timings:" in proc.stderr                   # the last line the command logs, through the filter


def test_the_filter_holds_no_one_s_stdout_open():
    """A caller reading stdout to its end (`path=$(python -m pipeline features ...)`) is not kept waiting
    by the filter process: it ends with the program, which here leaves it running for 3 s more."""
    import time
    program = ("import os, time\nfrom pipeline.terminal import NativeLogFilter, patterns_for\n"
               "NativeLogFilter(patterns_for('2')).start()\nprint('out', flush=True)\nos.close(1)\ntime.sleep(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": ROOT})
    t = time.perf_counter()
    assert proc.stdout.read() == b"out\n"             # end of stdout once the program closes its own
    assert time.perf_counter() - t < 2.5
    proc.wait(timeout=30)


def test_python_s_own_stderr_keeps_its_order_with_stdout():
    """The program's log lines and stdout on one terminal stay in the order they were written (its
    last stdout line, the cache path, comes last): Python's sys.stderr bypasses the filter."""
    code = "\n".join(f"print('err {i}', file=sys.stderr); print('out {i}', flush=True)" for i in range(200))
    program = ("import os, sys\nfrom pipeline.terminal import NativeLogFilter, patterns_for\n"
               f"terminal = NativeLogFilter(patterns_for('2')).start()\n"
               f"{code}\nterminal.stop()\n")
    proc = subprocess.run([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines() == [f"{w} {i}".encode() for i in range(200) for w in ("err", "out")]
