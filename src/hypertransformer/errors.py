"""The error policy of every command-line entry point (``hypertransformer <command>``,
``python -m hypertransformer.train``, ``python -m hypertransformer.evaluate``).

* An expected failure (:data:`EXPECTED`: bad input, a missing, corrupt or misplaced file, an
  unwritable path, a diverged run) prints one line ``<prog>: error: <message>`` on stderr and
  exits with 2.  The message names the thing and says what to do.
* Ctrl-C exits with 130 (training saves a checkpoint first, see :mod:`.training.trainer`).
* Anything else is a bug: its traceback is kept.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130

# ValueError covers DatasetError and CheckpointError; FloatingPointError is a NaN loss.
EXPECTED: tuple[type[Exception], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
    PermissionError, FloatingPointError)

# What to do about an error the operating system raised (its message is only the reason).
_OS_HINTS: dict[type[OSError], str] = {
    FileNotFoundError: "check the path",
    NotADirectoryError: "a part of the path is a file; give a directory",
    IsADirectoryError: "it is a directory; give a file",
    FileExistsError: "something is in the way; remove it or choose another path",
    PermissionError: "check its permissions or choose another path",
}


def message(error: BaseException) -> str:
    """One line for ``error``: its message, or for an OSError raised by the operating system
    (``[Errno 13] Permission denied: 'x'``) the path, the reason and what to do."""
    if isinstance(error, OSError) and error.strerror:
        path = "" if error.filename is None else f"{error.filename}: "
        if error.filename2 is not None:
            path = f"{error.filename} -> {error.filename2}: "
        hint = next((h for t, h in _OS_HINTS.items() if isinstance(error, t)), "")
        text = f"{path}{error.strerror.lower()}" + (f"; {hint}" if hint else "")
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def report(prog: str, error: BaseException) -> int:
    """Prints ``<prog>: error: <message>`` on stderr; returns :data:`ERROR_EXIT_CODE`."""
    print(f"{prog}: error: {message(error)}", file=sys.stderr)
    return ERROR_EXIT_CODE


def run(prog: str, command: Callable[[], int]) -> int:
    """``command()``'s exit code under the policy of the module docstring."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except EXPECTED as e:
        return report(prog, e)


def require_positive(**options: float | None) -> None:
    """ValueError naming the option (``log_every`` is ``--log-every``) of a value below 1;
    ``None`` (not given) passes."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {value}")


def require_directory(path: str | Path, option: str) -> None:
    """NotADirectoryError when ``path`` (given as ``option``) or its nearest existing parent
    is not a directory, so that nothing is created there."""
    full = Path(path).expanduser()
    for p in (full, *full.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == full else f" is inside {p}, which"
                raise NotADirectoryError(f"{option} {path}{where} is a file; give a directory")
            return
