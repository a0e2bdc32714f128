"""Data parallelism with ``torch.distributed`` and the choice of device (docs/distributed.md).

Started by :mod:`.launch` (the ``train`` commands on a CPU) or by ``torchrun``, the environment
holds ``WORLD_SIZE > 1``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and
:func:`process_group` joins the process group (backend ``gloo`` on CPU, ``nccl`` on CUDA) and
leaves it at the end; a group the caller already initialised is used as it is; otherwise the
run is a single process and nothing here does anything.

A step takes ``T = episodes_per_step`` episodes in total: rank ``r`` of ``P`` takes
:func:`shard_sizes` ``(T, P)[r]`` of them (``T // P``, one more on the first ``T % P`` ranks),
drawn from its own sampler, and seeds torch, Python and NumPy, with :func:`rank_seed`
``(seed, r) = seed + RANK_SEED_STRIDE · r``: rank 0 uses ``seed`` itself, so a single process
(``P = 1``) is the run it always was, and :func:`rank_sampler` builds any rank's sampler, e.g.
to reproduce a P-rank run in one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.sampler import Sampler, make_sampler
from hypertransformer.precision import check_dtype

RANK_SEED_STRIDE = 1_000_003  # a prime far above the seed + 1 of the held-out sampler


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (``local_rank`` on its
    node).  ``size == 1`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` (module docstring)."""
    return seed + RANK_SEED_STRIDE * rank


def shard_sizes(episodes: int, ranks: int) -> list[int]:
    """The episodes of each of ``ranks`` ranks in a step of ``episodes`` (module docstring);
    ValueError when some rank would have none."""
    if episodes < ranks:
        raise ValueError(f"{episodes} episode(s) per step cannot be split over {ranks} "
                         f"processes, every process needs at least one: use at least {ranks} "
                         f"episodes per step or fewer processes (--nproc, or torchrun's "
                         f"--nproc_per_node)")
    return [episodes // ranks + (r < episodes % ranks) for r in range(ranks)]


def rank_sampler(data: ClassDataset, config: Config, rank: int) -> Sampler:
    """The training episode (or task sequence) sampler of rank ``rank``."""
    return make_sampler(data, config, train=True, seed=rank_seed(config.seed, rank))


def check_device(config: Config) -> None:
    """Refuses an unknown ``device`` or ``dtype``, CUDA where there is none, and fp16 off
    CUDA, with a message that says what to change."""
    check_dtype(config.dtype)
    try:
        device = torch.device(config.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:<index>; got {config.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={config.device} but CUDA is not available here (no GPU, or "
                         f"a CPU-only torch build {torch.__version__}); use device=cpu")
    if device.type == "cpu" and config.dtype == "fp16":
        raise ValueError("dtype=fp16 needs device=cuda; on the CPU use bf16, fp32 or auto")


def resolve_device(config: Config, world: World) -> torch.device:
    """``config.device``; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``."""
    device = torch.device(config.device)
    if device.type == "cuda" and world.distributed:
        if device.index is not None:
            raise ValueError(f"device={config.device}: under torchrun use device=cuda; rank r "
                             f"takes cuda:LOCAL_RANK")
        device = torch.device("cuda", world.local_rank)
    return device


@contextmanager
def process_group(config: Config) -> Iterator[World]:
    """The :class:`World` of this process for the duration of the block (module docstring)."""
    if dist.is_available() and dist.is_initialized():
        yield World(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        return
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World()
        return
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.device(config.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield world
    finally:
        dist.destroy_process_group()


def mean_over_ranks(values: list[float], world: World, device: torch.device) -> list[float]:
    """The mean of ``values`` over the ranks (collective; ``values`` itself when P = 1)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world.size).tolist()


def gather_to_main(value: Any, world: World) -> list[Any]:
    """Collective: every rank's ``value`` in rank order on rank 0, ``[]`` on the others."""
    if not world.distributed:
        return [value]
    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(value, out, dst=0)
    return out or []


def broadcast_from_main(value: Any, world: World) -> Any:
    """Collective: rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Collective: returns once every rank got here."""
    if world.distributed:
        dist.barrier()
