"""`python -m pipeline` (and the `pipeline` console script): a process of its own, so this is the one
place that sets the process's environment and its terminal."""
import os
import signal
import sys

from pipeline.errors import Terminated, stop_said     # standard library only (so is `import pipeline`): run() is soon reached


def run() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter off the terminal: its
    from pipeline.terminal import NativeLogFilter, patterns_for   # Python logs by this, its C++ lines by the filter
    signal.signal(signal.SIGTERM, _terminated)          # `kill`, `timeout`, a scheduler: stopped as Ctrl-C stops it
    try:
        with NativeLogFilter(patterns_for(os.environ["TF_CPP_MIN_LOG_LEVEL"])) as terminal:
            from pipeline.cli import main
            code = main(fast_exit=True, before_exit=terminal.stop)
    except BrokenPipeError:    # whoever read standard output or error stopped (`pipeline runs | head`,
        code = 1               # `features 2>&1 | head`): end quietly, exit status 1, as Python's docs do
    except KeyboardInterrupt as e:      # stopped while starting, before a command began (a command's own stop
        word, code = stop_said(e)                                  # is said by the command)
        print(f"{word}: stopped while starting; nothing was done", file=sys.stderr)
    return 1 if lost_readers() else code


def _terminated(signum, frame):
    """SIGTERM's handler: raise Terminated where the program is, so the command cleans up as for Ctrl-C
    (temp files removed, a features journal kept) and says so in one line, instead of dying silently."""
    raise Terminated


def lost_readers() -> bool:
    """Whether standard output or error lost its reader (a flush fails); such a stream now writes to
    /dev/null, so that the interpreter's own flush at exit does not fail again (exit status 120)."""
    lost = False
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            lost = True
    return lost


if __name__ == "__main__":
    sys.exit(run())
