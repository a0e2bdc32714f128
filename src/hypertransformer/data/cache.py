"""Where derived data (resized arrays, rendered glyphs, downloads) is cached."""

from __future__ import annotations

import os
from pathlib import Path

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
