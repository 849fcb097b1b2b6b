"""`python -m pipeline` (and the `pipeline` console script): a process of its own, so this is the one
place that sets the process's environment."""
import os
import sys


def run() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    from pipeline.cli import main
    return main(fast_exit=True)


if __name__ == "__main__":
    sys.exit(run())
