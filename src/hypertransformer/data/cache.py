"""Where derived data (resized arrays, rendered glyphs, downloads) is cached, and how cache
files are written: atomically (a temporary file beside the target, then ``os.replace``), so a
crash or a concurrent reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

CACHE_ENV = "HT_CACHE_DIR"


def cache_dir() -> Path:
    """``$HT_CACHE_DIR`` if set, else ``~/.cache/hypertransformer``; created on demand.

    A directory that cannot be created raises the OSError's own type (PermissionError,
    NotADirectoryError ...) with a message naming the directory and ``$HT_CACHE_DIR``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hypertransformer")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(f"cannot create the cache directory {root} ({e.strerror or e}); set "
                      f"{CACHE_ENV} to a writable directory") from e
    return root


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` (mode 0644) when the
    block ends normally, removed when it raises."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
