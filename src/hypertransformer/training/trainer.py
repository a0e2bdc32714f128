"""The training loop (SPEC §4): episodes in, optimiser steps, checkpoints, metrics.

``train(config, log_dir)`` trains the model of ``config.model_type`` (a
:class:`HyperTransformer`, a Continual HT or MergedHT on sequences of tasks, or the ProtoNet
baseline) on
episodes of ``config.train_dataset`` and writes into ``log_dir``:

* ``config.json`` (at start), ``checkpoints/`` (see :mod:`.checkpoint`: every
  ``steps_between_saves`` steps and at the end, the last 3 kept, plus ``best.pt``),
* ``metrics.jsonl``: one JSON object per logged step (every ``log_every`` steps and the last
  step ``train_steps``) with ``step, episodes, wall_time, loss, accuracy, lr, episodes_per_s``
  and ``heldout_accuracy``; loss and accuracy are means over the steps since the previous line
  (or since the resume),
  ``wall_time`` is the seconds spent in training (summed over resumed runs) and
  ``episodes_per_s`` the training throughput over those steps,
* TensorBoard events (``train/loss``, ``train/accuracy``, ``heldout/accuracy``, ``lr``,
  ``episodes_per_s``),
* ``done.json`` ``{"step": ..., "finished": true}`` once ``train_steps`` are done (the
  evaluator's ``--watch`` stops on it).

Optimiser.  The default is the original's plain SGD (no momentum, no weight decay) with
``lr_t = learning_rate · learning_rate_decay_rate^(t / learning_rate_decay_steps)`` (continuous;
``t`` counts optimiser steps).  ``optimizer=adamw`` uses ``torch.optim.AdamW`` (its default
weight decay 0.01) with the same schedule; pick a smaller ``learning_rate`` for it (e.g. 1e-3).

Episodes per step.  One optimiser step processes ``T = episodes_per_step`` independent
episodes, and its loss is the *mean* of their losses, so the gradient is an average: ``lr``
keeps its per-step meaning (T = 1 is the original), a step just sees T× the episodes and a less
noisy gradient.  ``train_steps`` and the schedule count steps, not episodes (``episodes`` in the
metrics counts episodes).

Held-out accuracy.  At each logged step ``heldout_episodes`` episodes of the held-out split
(``val_dataset`` when set, else the val range of the training dataset when it has one, else the
test split) are drawn as evaluation episodes (``test_*`` augmentation, ``test_task_groups``) and
classified with ``model.eval()`` and no gradients.  They are the same episodes at every step
(their generator is reset to ``seed + 1``), so checkpoints are compared on one set, not on
draws whose noise exceeds their differences; ``best.pt`` is the checkpoint with the best
held-out accuracy so far.

Resuming.  When ``log_dir`` holds a checkpoint, training continues from the latest one: model,
optimiser, schedule, step, every RNG (torch, Python, NumPy, the training sampler) are
restored, so a resumed run produces the same parameters as an uninterrupted one (on the same
machine and torch build).  Fields that change the model or optimiser
(:data:`.checkpoint.RESUME_FIELDS`) must match the checkpoint; other fields (e.g.
``train_steps``) may change.

Ctrl-C.  The first SIGINT lets the current step finish, saves a checkpoint and returns
(``TrainResult.interrupted``; the CLIs then exit with 130).  A second SIGINT, or any
``KeyboardInterrupt`` raised inside a step (e.g. outside the main thread, where no handler is
installed), abandons the step in progress: the RNGs roll back to its start and the state after
the previous step is saved, so resuming stays exact.  Only an interrupt during the parameter
update itself (or during the final save) propagates, keeping the last saved checkpoint.

Data parallelism (docs/distributed.md, :mod:`.distributed`, :mod:`.launch`).  With ``P > 1``
processes (started by the ``train`` commands on a CPU, or by ``torchrun``) every rank runs this
loop on a ``DistributedDataParallel`` model.  A step still takes ``T = episodes_per_step``
episodes in total: rank ``r`` draws its share ``T_r`` (:func:`.distributed.shard_sizes`:
``T // P``, one more on the first ``T % P`` ranks) from its rank-seeded sampler and weights its
mean loss by ``P·T_r/T``, so that DDP's average of the gradients is the gradient of the mean
loss over all ``T`` episodes: a step equals one process's step on the union of the ranks'
episodes, whatever ``P``.  The logged loss and accuracy are the same weighted means.  Rank 0
alone writes ``config.json``, metrics, TensorBoard events, ``done.json`` and checkpoints and
runs the held-out evaluation; a checkpoint also holds ``rank_rng``, the ``rng`` of ranks
``1..P-1`` (gathered to rank 0), and every rank resumes from the same checkpoint with its own
RNG state, so a resumed P-rank run is exact too.  A SIGINT on any rank stops all of them after
the same step (a stop flag is all-reduced with the loss); an interrupt inside a step ends the
process without saving (the launcher, or torchrun, then stops the other ranks).  ``device``
moves the model and batches (``cuda``: ``cuda:LOCAL_RANK`` under torchrun) and
``dtype`` runs the forward passes under ``torch.autocast`` where it resolves to bf16 or fp16
(:mod:`hypertransformer.precision`; rank 0 resolves ``auto`` for training and the ranks follow
it; fp16, CUDA only, with a ``GradScaler`` whose state is saved).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.registry import load_split, val_spec
from hypertransformer.data.sampler import EpisodeBatch, Sampler, SequenceBatch, make_sampler
from hypertransformer.model import ContinualHyperTransformer, build_model
from hypertransformer.precision import resolve_precision
from hypertransformer.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    best_checkpoint_path,
    check_compatible,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from hypertransformer.training.distributed import (
    World,
    barrier,
    broadcast_from_main,
    check_device,
    gather_to_main,
    mean_over_ranks,
    process_group,
    rank_sampler,
    rank_seed,
    resolve_device,
    shard_sizes,
)

LOG_EVERY = 100  # steps between metrics lines (the original's small-summary period)
HELDOUT_EPISODES = 32
_HELDOUT_CHUNK = 8  # episodes per forward pass of the held-out evaluation (bounds memory)
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainResult:
    step: int  # optimiser steps done
    log_dir: Path
    last_checkpoint: Path | None
    best_accuracy: float | None  # best held-out accuracy
    finished: bool  # step == config.train_steps (done.json written)
    interrupted: bool  # stopped by Ctrl-C (a checkpoint was saved)
    rank: int = 0  # this process's rank (0 in a single process); only rank 0 knows best_accuracy


def learning_rate(config: Config, step: int) -> float:
    """``lr_t`` of the module docstring."""
    return config.learning_rate * _decay(config)(step)


def _decay(config: Config) -> Callable[[int], float]:
    rate, steps = config.learning_rate_decay_rate, config.learning_rate_decay_steps
    return lambda t: rate ** (t / steps)


def build_optimizer(model: torch.nn.Module, config: Config) -> tuple[
        torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(),
                                                           lr=config.learning_rate)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    else:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got "
                         f"{config.optimizer!r}")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _decay(config))


def check_config(config: Config) -> None:
    """Refuses training fields out of range, and a device or mixed precision that cannot
    run here (:func:`.distributed.check_device`), before anything is written."""
    if config.episodes_per_step < 1:
        raise ValueError(f"episodes_per_step must be at least 1; got {config.episodes_per_step}")
    if config.train_steps < 0:
        raise ValueError(f"train_steps must be >= 0; got {config.train_steps}")
    if config.steps_between_saves < 1:
        raise ValueError(f"steps_between_saves must be at least 1; got "
                         f"{config.steps_between_saves}")
    if config.learning_rate_decay_steps <= 0:
        raise ValueError(f"learning_rate_decay_steps must be positive; got "
                         f"{config.learning_rate_decay_steps}")
    check_device(config)


def _heldout_data(config: Config) -> ClassDataset:
    """The val split when there is one (``val_dataset``, else the training dataset's preset
    val range: :func:`~hypertransformer.data.registry.val_spec`), else the test split."""
    return load_split(config, "val" if val_spec(config) else "test")


def _rng_state(samplers: dict[str, Sampler], device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        **{name: s.state_dict() for name, s in samplers.items()},
    }
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], samplers: dict[str, Sampler],
                   device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    for name, sampler in samplers.items():
        sampler.load_state_dict(state[name])


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


class _Loss(torch.nn.Module):
    """``model.batch_loss`` as a forward pass, so that DistributedDataParallel syncs its
    gradients."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: EpisodeBatch | SequenceBatch, step: int) -> tuple[Tensor, Tensor]:
        out = self.model.batch_loss(batch, step)
        return out.loss, out.accuracy


class _Trainer:
    """One call of :func:`train`; the attributes are the run's state."""

    def __init__(self, config: Config, log_dir: Path, progress: bool, max_steps: int | None,
                 log_every: int, heldout_episodes: int, world: World) -> None:
        if log_every < 1 or heldout_episodes < 1:
            raise ValueError("log_every and heldout_episodes must be at least 1")
        self.log_dir, self.world = log_dir, world
        self.progress = progress and world.main
        self.log_every, self.heldout_episodes = log_every, heldout_episodes

        train_data = load_split(config, "train")
        if config.shared_head_weight > 0 and config.shared_head_classes == 0:
            config = config.replace(shared_head_classes=train_data.num_classes)
        self.config = cfg = config
        self.end = cfg.train_steps if max_steps is None else min(cfg.train_steps, max_steps)
        # This rank's episodes per step, and the weight that makes DDP's mean of the ranks'
        # gradients the mean over all T episodes (1 when P divides T).
        self.shard = shard_sizes(cfg.episodes_per_step, world.size)[world.rank]
        self.weight = world.size * self.shard / cfg.episodes_per_step

        # Ranks > 0 initialise the model differently; DDP copies rank 0's parameters.
        seed = rank_seed(cfg.seed, world.rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.samplers = {"train_sampler": rank_sampler(train_data, cfg, world.rank)}
        if world.main:  # rank 0 alone evaluates, on the same episodes each time
            self.heldout_sampler = make_sampler(_heldout_data(cfg), cfg, train=False,
                                                seed=cfg.seed + 1)
            self._heldout_start = self.heldout_sampler.state_dict()
        self.device = resolve_device(cfg, world)
        self.model = build_model(cfg).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        self.precision = broadcast_from_main(
            resolve_precision(cfg.dtype, self.device, training=True) if world.main else None,
            world)
        if world.main:
            tqdm.write(f"dtype {self.precision.name} ({self.precision.reason})")
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.name == "fp16" else None
        self.step, self.episodes_seen, self.wall_time = 0, 0, 0.0
        self.best_accuracy: float | None = None
        self.last_checkpoint: Path | None = None
        self._saved_step = -1

        latest = broadcast_from_main(latest_checkpoint(log_dir), world)  # the same on all ranks
        if latest is not None:
            self._restore(latest)
        elif cfg.init_checkpoint:
            self._start_from(cfg.init_checkpoint)
        self.loss_fn: torch.nn.Module = _Loss(self.model)
        if world.distributed:
            self.loss_fn = DistributedDataParallel(
                self.loss_fn, device_ids=None if self.device.type == "cpu" else [self.device])
        if world.main:
            log_dir.mkdir(parents=True, exist_ok=True)
            _write_json(log_dir / "config.json", cfg.to_dict())
            (log_dir / "done.json").unlink(missing_ok=True)  # stale after a longer train_steps
            self._trim_metrics()

        self._stop = False  # set by the first SIGINT (on this rank)
        self._stop_all = False  # some rank got a SIGINT (all-reduced every step)
        self._phase = "idle"  # "step" (before the update), "update", "after" (bookkeeping)
        self._window: dict[str, float] = dict(steps=0, loss=0.0, accuracy=0.0, time=0.0)

    # ---- state ---------------------------------------------------------------------------

    def other_ranks_rng(self) -> list[dict[str, Any]]:
        """Collective: the RNG states of ranks 1..P-1 on rank 0 (``[]`` elsewhere)."""
        return gather_to_main(_rng_state(self.samplers, self.device), self.world)[1:]

    def state(self, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint (rank 0); ``rank_rng`` from :meth:`other_ranks_rng`."""
        state = {
            "format_version": FORMAT_VERSION, "step": self.step,
            "config": self.config.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(self.samplers, self.device), "rank_rng": rank_rng,
            "best_accuracy": self.best_accuracy,
            "episodes_seen": self.episodes_seen, "wall_time": self.wall_time,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _start_from(self, path: str) -> None:
        """A fresh run's model initialised from another run's (``init_checkpoint``): a CHT's
        θ_{−1} from a ProtoNet, or an HT's every parameter from an HT of the same
        architecture (fine-tuning; the optimiser, schedule and step start afresh)."""
        if self.config.model_type not in ("ht", "cht"):
            raise ValueError(f"init_checkpoint initialises an HT (model_type ht) or a residual "
                             f"CHT (model_type cht); this run's model_type is "
                             f"{self.config.model_type}")
        from hypertransformer.inference.pretrained import PRETRAINED, pretrained_path

        source, _, _ = model_from_checkpoint(
            pretrained_path(path) if path in PRETRAINED else path)
        if isinstance(self.model, ContinualHyperTransformer):
            self.model.start_from(source)
            return
        try:  # strict: every name and shape must match (the run stops before any step)
            self.model.load_state_dict(source.state_dict())
        except RuntimeError as e:
            raise ValueError(f"init_checkpoint {path} holds a {type(source).__name__} whose "
                             f"parameters do not fit this run's model (the CNN, transformer "
                             f"and token sizes must match): {e}") from e

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        check_compatible(state, self.config, path)
        if not state["optimizer"]:
            raise CheckpointError(f"checkpoint {path} holds a model without its optimiser "
                                  f"state (a model-only copy): it evaluates and fits "
                                  f"classifiers but cannot resume training")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        saved = [state["rng"], *state.get("rank_rng", [])]  # one per rank of the saved run
        if self.world.rank < len(saved):
            _set_rng_state(saved[self.world.rank], self.samplers, self.device)
        self.step, self.episodes_seen = state["step"], state["episodes_seen"]
        self.wall_time, self.best_accuracy = state["wall_time"], state["best_accuracy"]
        self.last_checkpoint, self._saved_step = path, self.step
        if self.progress:
            tqdm.write(f"resuming {path} at step {self.step}")
        if self.world.main and len(saved) != self.world.size:
            tqdm.write(f"the checkpoint was written by {len(saved)} rank(s), this run has "
                       f"{self.world.size}: ranks without a saved state start fresh episode "
                       f"streams (not an exact resume)")

    def _trim_metrics(self) -> None:
        """Drops metrics lines past the resumed step (logged after the last save)."""
        path = self.log_dir / "metrics.jsonl"
        if not path.exists():
            return

        def keep(line: str) -> bool:  # a line cut by a crash is dropped too
            try:
                return json.loads(line)["step"] <= self.step
            except (ValueError, KeyError, TypeError):
                return False

        lines = path.read_text().splitlines()
        kept = [line for line in lines if keep(line)]
        if len(kept) != len(lines):
            tmp = path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def save(self) -> Path:
        """Collective: rank 0 writes the checkpoint of this step."""
        rank_rng = self.other_ranks_rng()
        path = checkpoint_path(self.log_dir, self.step)
        if self.world.main:
            save_checkpoint(path, self.state(rank_rng))
            prune_checkpoints(self.log_dir)
        self.last_checkpoint, self._saved_step = path, self.step
        return path

    def _autocast(self) -> AbstractContextManager[Any]:
        return self.precision.autocast(self.device)

    # ---- steps ---------------------------------------------------------------------------

    def train_step(self) -> None:
        cfg = self.config
        start = time.perf_counter()
        self._phase = "step"
        batch = self.samplers["train_sampler"].sample(self.shard).to(self.device)
        self.model.train()
        with self._autocast():
            loss_t, accuracy_t = self.loss_fn(batch, self.step)
        loss_t = loss_t * self.weight
        # Means over the ranks, so that every rank agrees on stopping and on a bad loss.
        loss, accuracy, stop = mean_over_ranks(
            [loss_t.item(), accuracy_t.item() * self.weight, float(self._stop)], self.world,
            self.device)
        self._stop_all = self._stop_all or stop > 0
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {self.step}; lower "
                                     f"learning_rate")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss_t.backward()
            self._phase = "update"
            self.optimizer.step()
        else:
            self.scaler.scale(loss_t).backward()
            self._phase = "update"
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.episodes_seen += cfg.episodes_per_step
        self._phase = "after"
        elapsed = time.perf_counter() - start
        self.wall_time += elapsed
        w = self._window
        w["steps"] += 1
        w["time"] += elapsed
        w["loss"] += loss
        w["accuracy"] += accuracy

    @torch.no_grad()
    def heldout_accuracy(self) -> float:
        """The mean query accuracy of the ``heldout_episodes`` held-out episodes (for the
        CHT: sequences, every (t, τ ≤ t) pair as in its loss)."""
        self.heldout_sampler.load_state_dict(self._heldout_start)
        self.model.eval()
        correct, left = 0.0, self.heldout_episodes
        while left > 0:
            n = min(left, _HELDOUT_CHUNK)
            batch = self.heldout_sampler.sample(n).to(self.device)
            with self._autocast():
                correct += n * self.model.batch_loss(batch, self.step).accuracy.item()
            left -= n
        self.model.train()
        return correct / self.heldout_episodes

    def log(self, writer: SummaryWriter, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Rank 0: a metrics line and TensorBoard scalars; ``best.pt`` on a new best."""
        w = self._window
        steps = max(1, int(w["steps"]))
        record = {
            "step": self.step, "episodes": self.episodes_seen,
            "wall_time": round(self.wall_time, 3),
            "loss": w["loss"] / steps, "accuracy": w["accuracy"] / steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "episodes_per_s": w["steps"] * self.config.episodes_per_step
                              / max(w["time"], 1e-9),
            "heldout_accuracy": self.heldout_accuracy(),
            "dtype": self.precision.name,
        }
        with open(self.log_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for tag, key in [("train/loss", "loss"), ("train/accuracy", "accuracy"),
                         ("heldout/accuracy", "heldout_accuracy"), ("lr", "lr"),
                         ("episodes_per_s", "episodes_per_s")]:
            writer.add_scalar(tag, record[key], self.step)
        writer.flush()
        self._window = dict(steps=0, loss=0.0, accuracy=0.0, time=0.0)
        if self.best_accuracy is None or record["heldout_accuracy"] > self.best_accuracy:
            self.best_accuracy = record["heldout_accuracy"]
            save_checkpoint(best_checkpoint_path(self.log_dir), self.state(rank_rng))
        return record

    # ---- the loop ------------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one raises
        if self.world.main:
            again = ("stop at once, without saving" if self.world.distributed
                     else "drop the step in progress")
            tqdm.write(f"interrupted: saving a checkpoint after this step (Ctrl-C again to "
                       f"{again})")

    @property
    def _stopping(self) -> bool:
        """Ranks stop together: on the all-reduced flag when distributed."""
        return self._stop_all if self.world.distributed else self._stop

    def run(self) -> TrainResult:
        cfg = self.config
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT)
        if in_main:
            signal.signal(signal.SIGINT, self._on_sigint)
        main = self.world.main
        # On a resume, TensorBoard hides events past the checkpoint from the earlier run.
        # (also at step 0: a run killed before its first checkpoint left events behind)
        writer = SummaryWriter(str(self.log_dir), purge_step=self.step + 1) if main else None
        bar = tqdm(total=cfg.train_steps, initial=self.step, disable=not self.progress,
                   dynamic_ncols=True, unit="step")
        interrupted = False
        heldout: float | None = None  # the last held-out accuracy, for the progress bar
        try:
            while self.step < self.end and not self._stopping:
                boundary = _rng_state(self.samplers, self.device)
                try:
                    self.train_step()
                    w = self._window
                    postfix = dict(loss=f"{w['loss'] / w['steps']:.3f}",
                                   acc=f"{w['accuracy'] / w['steps']:.3f}",
                                   eps=f"{w['steps'] * cfg.episodes_per_step / w['time']:.1f}")
                    if self.step % self.log_every == 0 or self.step == cfg.train_steps:
                        rank_rng = self.other_ranks_rng()
                        if writer is not None:
                            heldout = self.log(writer, rank_rng)["heldout_accuracy"]
                    if heldout is not None:
                        postfix["heldout"] = f"{heldout:.3f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(1)
                    if self.step % cfg.steps_between_saves == 0:
                        self.save()
                except KeyboardInterrupt:
                    # Parameters half-updated, or one rank leaving a step the others are in:
                    # no save, the last saved checkpoint is kept.
                    if self._phase == "update" or self.world.distributed:
                        raise
                    if self._phase == "step":  # the step did not happen
                        _set_rng_state(boundary, self.samplers, self.device)
                    interrupted = True
                    break
            interrupted = interrupted or self._stopping
            if self._saved_step != self.step:
                self.save()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if in_main:
                signal.signal(signal.SIGINT,
                              signal.default_int_handler if previous is None else previous)
        finished = self.step >= cfg.train_steps
        if finished and main:
            _write_json(self.log_dir / "done.json", {"step": self.step, "finished": True})
        barrier(self.world)  # every rank returns once rank 0 has written everything
        return TrainResult(step=self.step, log_dir=self.log_dir,
                           last_checkpoint=self.last_checkpoint,
                           best_accuracy=self.best_accuracy, finished=finished,
                           interrupted=interrupted, rank=self.world.rank)


def train(config: Config, log_dir: str | Path, *, progress: bool = True,
          max_steps: int | None = None, log_every: int = LOG_EVERY,
          heldout_episodes: int = HELDOUT_EPISODES) -> TrainResult:
    """Trains (or resumes) a HyperTransformer in ``log_dir``; see the module docstring.

    ``max_steps`` stops this call at that global step (if below ``config.train_steps``),
    saving a checkpoint there; a later call resumes.  ``log_every`` steps between metrics lines
    and held-out evaluations of ``heldout_episodes`` episodes.  In a process started as a rank
    (by :mod:`.launch` or torchrun), or in a process group the caller initialised, this process
    trains as one rank of a data-parallel run.
    """
    check_config(config)
    with process_group(config) as world:
        return _Trainer(config, Path(log_dir), progress, max_steps, log_every,
                        heldout_episodes, world).run()
