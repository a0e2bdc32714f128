"""Where tests find the real data: Omniglot (``$HT_OMNIGLOT_DIR`` or
``<repo>/../shared/data/omniglot``) and Ravi's miniImageNet split CSVs.

Missing data skips the real-data tests on a user's machine and fails them in CI (``CI`` set),
where ``../shared`` is always present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def omniglot_dir() -> Path:
    path = Path(os.environ.get("HT_OMNIGLOT_DIR") or REPO.parent / "shared" / "data" / "omniglot")
    if not (path / "images_background.zip").is_file() and not (path / "images_background").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real Omniglot data missing at {path} (CI must have it)")
        pytest.skip(f"real Omniglot data missing at {path} (set HT_OMNIGLOT_DIR)")
    return path


def mini_splits_dir() -> Path:
    """Ravi's miniImageNet split CSVs (class lists only): ``$HT_MINI_SPLITS_DIR`` or
    ``<repo>/../shared/data/miniimagenet_splits``; missing ones skip (fail in CI)."""
    path = Path(os.environ.get("HT_MINI_SPLITS_DIR")
                or REPO.parent / "shared" / "data" / "miniimagenet_splits")
    if not all((path / f"{s}.csv").is_file() for s in ("train", "val", "test")):
        if os.environ.get("CI"):
            pytest.fail(f"the miniImageNet split CSVs are missing at {path} (CI must have them)")
        pytest.skip(f"the miniImageNet split CSVs are missing at {path} (set HT_MINI_SPLITS_DIR)")
    return path
