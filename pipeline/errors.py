"""What a user can fix: one line, exit status 1, no traceback."""
from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: printed as one line, exit status 1, no traceback."""


class SettingError(PipelineError):
    """A setting or parameter with a value that cannot be used: names it as the library knows it
    (`FeatureConfig.layer: ...`); the CLI names the flag instead (`--layer: ...`)."""

    def __init__(self, name: str, detail: str, owner: str | None = None):
        self.name, self.detail, self.owner = name, detail, owner
        super().__init__(f"{owner + '.' if owner else ''}{name}: {detail}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's stop) raised where the program is, as Ctrl-C raises
    KeyboardInterrupt: the same cleanup and line, exit status 143 (128 + 15). Only the program's own entry
    point (`python -m pipeline`) turns the signal into this."""


def stop_said(e: KeyboardInterrupt) -> tuple[str, int]:
    """How a stop is said and the exit status it ends with: Ctrl-C `interrupted`, 130; SIGTERM `terminated`, 143."""
    return ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)


def reason(e: BaseException, limit: int = 100) -> str:
    """The informative tail of an exception's message, on one line (e.g. '[Errno -2] Name or service not known')."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.rsplit(" -- ", 1)[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backend_reason(e: BaseException, limit: int = 160) -> str:
    """reason() of a deep-learning backend's error: its last line that is not a graph node's name (TensorFlow ends
    its messages with `[[{{node ...}}]]` lines after the cause)."""
    lines = [line for line in str(e).splitlines() if line.strip() and not line.strip().startswith("[[")]
    return reason(lines[-1] if lines else type(e).__name__, limit)
