"""Comparing two training runs (tests/test_kill_drill.py, tests/test_launch.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def metrics(log_dir: Path) -> list[dict[str, Any]]:
    """The metrics lines without their timings."""
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("wall_time", "episodes_per_s")}
            for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def assert_identical(a: Any, b: Any, where: str) -> None:
    """Equal values, tensors equal bit for bit (same dtype and shape), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
