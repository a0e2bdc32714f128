"""benchmarks/cross_domain.py (issue 25): the redrawn domains, the tasks, the baselines, and a
tiny run of the whole table on real data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from realdata import omniglot_dir

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_domain.py"


@pytest.fixture(scope="module")
def cd():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("cross_domain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cross_domain"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def omniglot(cd) -> np.ndarray:  # noqa: ANN001
    """20 drawings of the first validation class, uint8 [20, 28, 28], light ink on dark."""
    return cd.load_dataset(cd.OMNIGLOT["val"], data_dir=str(omniglot_dir()),
                           shuffle_labels_seed=2022).classes[0][..., 0]


def ink(x: np.ndarray) -> np.ndarray:
    return (x > 127).reshape(len(x), -1).sum(1)


def test_redrawn_omniglot(cd, omniglot: np.ndarray) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    assert (ink(cd.thick(omniglot, rng)) > ink(omniglot)).all()
    assert (ink(cd.thin(omniglot, rng)) < ink(omniglot)).all()
    assert (cd.thin(omniglot, rng).reshape(20, -1).max(1) == 255).all()  # full contrast kept
    moved = cd.shifted(omniglot, rng)
    assert moved.shape == omniglot.shape and not np.array_equal(moved, omniglot)
    small = cd.scaled(omniglot, rng)
    rows = np.nonzero(small.max(axis=(0, 2)) > 0)[0]
    assert rows.min() >= 2 and rows.max() <= 25  # shrunk to at most 80 % around the centre
    assert (ink(small) < ink(omniglot)).all()


def test_domains_have_both_parts(cd) -> None:  # noqa: ANN001
    for part in ("val", "test"):
        digits = cd.domain("digits", part, "")
        assert len(digits) == 10 and all(c.dtype == np.uint8 and c.shape[1:] == (28, 28)
                                         for c in digits)
        assert min(len(c) for c in digits) >= 20
    val, test = cd.domain("glyphs", "val", ""), cd.domain("glyphs", "test", "")
    assert {c.tobytes() for c in val}.isdisjoint({c.tobytes() for c in test})


def test_tasks_and_nearest(cd) -> None:  # noqa: ANN001
    classes = [np.full((12, 28, 28), k, np.uint8) for k in range(6)]
    drawn = cd.tasks(classes, 3, ways=4, shots=2, queries=5, seed=0)
    assert len(drawn) == 3
    s, sy, q, qy = drawn[0]
    assert (len(s), len(q)) == (8, 20) and sy == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({int(x[0, 0]) for x in s}) == 4  # four distinct classes
    with pytest.raises(ValueError, match="6 classes hold 12 samples; 7 needed"):
        cd.tasks(classes, 1, ways=7, shots=2, queries=10, seed=0)
    support = torch.randn(6, 5)
    labels = [0, 0, 1, 1, 2, 2]
    assert (cd.nearest(support, labels, support, centroid=False) == labels).all()
    centres = torch.stack([support[[0, 1]].mean(0), support[[2, 3]].mean(0)])
    assert (cd.nearest(support[:4], labels[:4], centres, centroid=True) == [0, 1]).all()


def test_a_tiny_table(cd) -> None:  # noqa: ANN001
    table = cd.run("val", str(omniglot_dir()), count=2, ways=5, queries=2, shots=[1, 5],
                   models=["omniglot_1shot"], domains=["glyphs", "omniglot-shifted"],
                   framed=True, untuned=True)
    lines = table.strip().splitlines()
    assert lines[0] == "| domain | method | 1 shot | 5 shots |"
    assert len(lines) == 2 + 2 * 7  # header, rule, 2 domains × 7 methods
    assert lines[2].startswith("| glyphs | HT `omniglot_1shot` | ")
    assert lines[3].startswith("| glyphs | HT `omniglot_1shot`, `fit(tune_steps=0)` | ")
    assert lines[4].startswith("| glyphs | HT `omniglot_1shot`, `fit(frame=True)` | ")
    assert lines[8].startswith("| glyphs | framed pixels, nearest centroid | ")
