"""What the evaluation protocols of the HT (:mod:`.evaluator`, SPEC §5) and of the Continual HT
(:mod:`.continual`, SPEC §7) share: tasks drawn from ``(seed, index)`` generators, and the mean
with its 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from hypertransformer.data.sampler import Sampler


def confidence_interval(task_accuracies: list[float] | np.ndarray) -> tuple[float, float]:
    """(mean, 95% half-width ``1.96 · std / √n``) with the population std (``ddof=0``)."""
    acc = np.asarray(task_accuracies, dtype=np.float64)
    if acc.size == 0:
        raise ValueError("no task accuracies")
    return float(acc.mean()), float(1.96 * acc.std() / math.sqrt(acc.size))


def _task_seed(seed: int, task: int) -> int:
    # int() first: NumPy 1.x has no right shift of a np.uint64 by a Python int
    return int(np.random.SeedSequence((seed, task)).generate_state(1, np.uint64)[0]) >> 1


def sample_tasks(sampler: Sampler, first: int, count: int, num_batches: int,
                 seed: int) -> Any:
    """Tasks (or task sequences) ``first .. first+count-1``, each drawn from its own
    ``(seed, index)`` generator: an :class:`EpisodeBatch` (or a ``SequenceBatch``)."""
    parts = []
    for i in range(first, first + count):
        state = torch.Generator().manual_seed(_task_seed(seed, i)).get_state()
        sampler.load_state_dict({"generator": state})
        parts.append(sampler.sample(1, query_batches=num_batches))
    return type(parts[0])(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                             for f in fields(parts[0])})
