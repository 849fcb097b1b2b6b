"""`python -m pipeline` (and the `pipeline` console script): a process of its own, so this is the one
place that sets the process's environment and its terminal."""
import os
import sys


def run() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter off the terminal: its
    from pipeline.terminal import NativeLogFilter, patterns_for   # Python logs by this, its C++ lines by the filter
    try:
        with NativeLogFilter(patterns_for(os.environ["TF_CPP_MIN_LOG_LEVEL"])) as terminal:
            from pipeline.cli import main
            return main(fast_exit=True, before_exit=terminal.stop)
    except BrokenPipeError:    # whoever read standard output stopped (`pipeline runs | head`): end quietly, as
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # Python's docs do (its exit flush
        return 1                                                         # would complain again)


if __name__ == "__main__":
    sys.exit(run())
