"""One process's view of a data-parallel run (tests/test_distributed.py, tests/test_launch.py)."""

from __future__ import annotations

import dataclasses

import torch

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.sampler import EpisodeBatch
from hypertransformer.training.distributed import rank_sampler, shard_sizes


class UnionSampler:
    """A training sampler that returns, every step, each rank's share of the episodes of a
    ``ranks``-rank run (:func:`shard_sizes`), drawn from that rank's sampler
    (:func:`rank_sampler`), concatenated in rank order.  With
    ``monkeypatch.setattr(trainer, "rank_sampler", lambda d, c, r: UnionSampler(d, c, P))``
    one process makes the updates of the P-rank run (docs/distributed.md)."""

    def __init__(self, data: ClassDataset, config: Config, ranks: int) -> None:
        self.ranks = [rank_sampler(data, config, r) for r in range(ranks)]

    def sample(self, num_episodes: int) -> EpisodeBatch:
        sizes = shard_sizes(num_episodes, len(self.ranks))
        parts = [s.sample(n) for s, n in zip(self.ranks, sizes, strict=True)]
        return EpisodeBatch(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                               for f in dataclasses.fields(EpisodeBatch)})

    def state_dict(self) -> dict:
        return {"ranks": [s.state_dict() for s in self.ranks]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.ranks, state["ranks"], strict=True):
            s.load_state_dict(st)
