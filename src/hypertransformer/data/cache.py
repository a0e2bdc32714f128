"""Where derived data (resized arrays, rendered glyphs, downloads) is cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$HT_CACHE_DIR`` if set, else ``~/.cache/hypertransformer``; created on demand."""
    root = Path(os.environ.get("HT_CACHE_DIR") or Path.home() / ".cache" / "hypertransformer")
    root.mkdir(parents=True, exist_ok=True)
    return root
