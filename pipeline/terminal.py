"""The program's own terminal without TensorFlow's native start-up lines.

TensorFlow 2.19 and later write their C++ start-up log lines ("Could not find cuda drivers on your
machine", "oneDNN custom operations are on", "failed call to cuInit" on every machine without a GPU,
...) straight to file descriptor 2 before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL no longer
hides them (tensorflow/tensorflow#100442). `python -m pipeline` (and only it: a library leaves its
caller's descriptors alone) routes descriptor 2 through a pipe while a command runs and drops exactly
those known lines at the level TF_CPP_MIN_LOG_LEVEL asks for (1: info, 2: warnings and the GPU probe's
cuInit error too); every other byte passes through unchanged, a line that could still become one of
them held only until its end. TF_CPP_MIN_LOG_LEVEL=0 shows everything. Python's own `sys.stderr`
(the program's log lines, progress bars, tracebacks) writes to the terminal directly, as before, so
its order with standard output is kept: only what native code and child processes write to
descriptor 2 passes the filter.
"""
from __future__ import annotations

import io
import os
import re
import signal
import sys
import time


def _log_line(level: bytes, rest: bytes) -> bytes:
    """A C++ log line of `level` (I, W, E) whose source file and message match `rest`: absl's format
    (I0000 00:00:1796092241.880015   17063 port.cc:153] ...) or the older one (2025-09-17 14:44:05.157831: I
    external/.../cudart_stub.cc:32] ...)."""
    return (rb"(?:" + level + rb"\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: " + level
            + rb" )(?:\S*/)?" + rest)


_STARTUP = rb"(?:port|cudart_stub|cpu_feature_guard)\.cc:\d+\] .*"
INFO = re.compile(_log_line(rb"I", _STARTUP)
                  + rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.")
WARNING = re.compile(_log_line(rb"W", _STARTUP)
                     + rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                     + rb"|" + _log_line(rb"E", rb"cuda_platform\.cc:\d+\] failed call to cuInit: .*")
                     + rb"|" + _log_line(rb"E", rb"cuda_(?:fft|dnn|blas)\.cc:\d+\] Unable to register cu\w+ factory: .*"))
_MAY_START = (b"I", b"W", b"E", b"T", b"2")      # how a held line (no end yet) may begin


class LineFilter:
    """Bytes in, bytes out: complete lines matching `patterns` dropped, the rest passed on at once,
    except an unfinished line that may still become a dropped one (held until its end or `flush`)."""

    def __init__(self, patterns):
        self.patterns, self.held = tuple(patterns), b""

    def feed(self, data: bytes) -> bytes:
        data, out = self.held + data, []
        *lines, self.held = data.split(b"\n")
        for line in lines:
            if not any(p.fullmatch(line.rstrip(b"\r")) for p in self.patterns):
                out.append(line + b"\n")
        if self.held and (b"\r" in self.held or not self.held.startswith(_MAY_START)):
            out.append(self.held)                    # a progress line or anything else: at once
            self.held = b""
        return b"".join(out)

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return held


def patterns_for(level: str) -> tuple:
    """The lines TF_CPP_MIN_LOG_LEVEL=level drops: 0 (or not a number) none, 1 info, 2 and up also warnings."""
    try:
        n = int(level)
    except ValueError:
        return ()
    return (INFO,) * (n >= 1) + (WARNING,) * (n >= 2)


class NativeLogFilter:
    """Descriptor `fd` through a LineFilter while started: a pipe to a small child process (forked
    before any thread exists) that writes what passes to the original descriptor. A process, not a
    thread, so what a crash writes last still reaches the terminal: the child reads to the pipe's end
    whenever and however this process ends. It ignores Ctrl-C and SIGTERM (this process reports
    those) and exits when the pipe closes. stop() puts the descriptor back and waits for the child.
    For descriptor 2, `sys.stderr` meanwhile writes to the original descriptor (module docstring)."""

    def __init__(self, patterns, fd: int = 2):
        self.patterns, self.fd, self.child, self.original = tuple(patterns), fd, None, None
        self.saved_stderr = None

    def start(self) -> "NativeLogFilter":
        if not self.patterns or not hasattr(os, "fork"):        # nothing to drop, or no fork (Windows)
            return self
        read, write = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:                                # the child: filter until the pipe's end, then go
            try:
                os.close(write)
                null = os.open(os.devnull, os.O_RDWR)   # hold no one's stdin or stdout open (`$(python -m pipeline ...)`)
                os.dup2(null, 0)
                os.dup2(null, 1)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                _pump(read, self.fd, LineFilter(self.patterns))
            finally:
                os._exit(0)
        os.close(read)
        self.original, self.child = os.dup(self.fd), pid
        os.dup2(write, self.fd)
        os.close(write)
        if self.fd == 2:
            self.saved_stderr = sys.stderr
            # as Python's own stderr: line-buffered over a buffered writer, so that each line (print's text and
            # its newline) leaves in one write and the filter's child cannot land inside it
            sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(self.original, "w", closefd=False)),
                                          encoding=sys.stderr.encoding, errors="backslashreplace", line_buffering=True)
        return self

    def stop(self):
        """Everything written so far out on the original descriptor, which is put back."""
        if self.child is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if self.saved_stderr is not None:
            direct, sys.stderr, self.saved_stderr = sys.stderr, self.saved_stderr, None
            direct.close()                    # flushed; the descriptor stays open (closefd=False)
        os.dup2(self.original, self.fd)       # this process's last write end closes: the child reads to the end
        os.close(self.original)
        for _ in range(200):                  # a child process that inherited the pipe may keep it open: 2 s at most
            if os.waitpid(self.child, os.WNOHANG)[0]:
                break
            time.sleep(0.01)
        self.child = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _pump(read: int, out: int, line_filter: LineFilter):
    def write(data: bytes):
        while data:
            data = data[os.write(out, data):]
    while chunk := os.read(read, 65536):
        write(line_filter.feed(chunk))
    write(line_filter.flush())
