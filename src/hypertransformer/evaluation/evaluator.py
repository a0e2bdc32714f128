"""The evaluation protocol of SPEC §5.

For each of ``num_tasks`` tasks: fix ``N`` classes, one support set and one augmentation state
(test-time augmentation flags); draw ``num_batches`` independent balanced query batches of
``batch_size`` images of those classes.  The task's CNN is generated once from its support set
(``model.generate``) and classifies each query batch separately (``model.classify``), so every
batch gets its own BatchNorm statistics, as the original ran the CNN on each batch of
``eval_batch_size`` images.  Task accuracy is the mean over its batches; the result is the mean
over tasks and the 95% confidence interval ``1.96 · std / √num_tasks``.

The original ``evaluation_lib.evaluate_dataset`` returns the per-task means and its evaluator
reports only their ``np.mean``; it computes no interval.  We use the population standard
deviation of the per-task accuracies (``ddof=0``, numpy's default ``np.std``).

Determinism: task ``i`` is drawn by a generator seeded from ``(seed, i)`` only, so the tasks --
and the result -- depend on ``seed`` alone, not on ``tasks_per_call`` (how many tasks share one
``generate`` call, a speed/memory knob) nor on the order of evaluation.  Every checkpoint is
evaluated on the same tasks for a given seed.

Checkpoints (:func:`evaluate_checkpoint`, :func:`watch`): a record (a JSON-ready dict) is
written to ``<log_dir>/eval/<split>-<step:08d>.json`` and, as the original evaluator's
``eval_accuracy/<split>`` summary, to TensorBoard events in ``<log_dir>/eval``.  :func:`watch`
runs beside training: it evaluates every periodic checkpoint that has no record yet, in step
order, and stops once ``done.json`` exists and every checkpoint has a record.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeBatch, EpisodeSampler
from hypertransformer.evaluation.continual import evaluate_continual
from hypertransformer.evaluation.protocol import confidence_interval, sample_tasks
from hypertransformer.model import HyperTransformer
from hypertransformer.model.continual import EpisodeClassifier
from hypertransformer.model.hypertransformer import GeneratedWeights
from hypertransformer.precision import Precision, resolve_precision
from hypertransformer.training.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_FIELDS,
    CheckpointError,
    config_differences,
    list_checkpoints,
    model_from_checkpoint,
    resolve_checkpoint,
)

EVAL_DIR = "eval"
# Evaluated on sequences of tasks (.continual); on sequences of one task, by the HT protocol.
CONTINUAL_MODELS = ("cht", "merged_ht", "protonet")
SPLITS = ("train", "val", "test")

# Default ``tasks_per_call``: the most tasks (at least 1) with at most CLASSIFY_IMAGES images
# per ``classify`` call and at most QUERY_BYTES of query images (all batches, float32) per
# call.  Small calls keep the CNN's activations near the CPU caches: for omniglot_1shot on 2
# CPU cores 8 tasks per call (800 images) evaluated 1.2-1.6x faster than 40
# (docs/performance.md).
CLASSIFY_IMAGES = 800
# Query batches classified concurrently (threads): on 2 CPU cores ~1.25x faster than one
# batch at a time with 2 intra-op threads, as the small kernels of one batch scale poorly.
CLASSIFY_WORKERS = 2
QUERY_BYTES = 256 * 2**20


@dataclass
class EvalResult:
    accuracy: float  # mean over tasks of the task accuracy
    ci95: float  # 1.96 * std(task accuracies, ddof=0) / sqrt(num_tasks)
    num_tasks: int
    num_batches: int
    batch_size: int
    task_accuracies: list[float] = field(repr=False)  # mean over each task's query batches
    seconds: float = 0.0
    dtype: str = "fp32"  # the compute dtype (precision.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _batch_accuracy(model: HyperTransformer, batch: EpisodeBatch, weights: GeneratedWeights,
                    batch_size: int, precision: Precision, b: int) -> torch.Tensor:
    """The accuracy of each task of ``batch`` on its query batch ``b`` (no gradients)."""
    chunk = slice(b * batch_size, (b + 1) * batch_size)
    with torch.no_grad(), precision.autocast(batch.query_x.device):  # per thread
        logits = model.classify(batch.query_x[:, chunk], weights)
    return (logits.argmax(-1) == batch.query_y[:, chunk]).float().mean(dim=1)


def evaluate_model(model: HyperTransformer, config: Config, dataset: ClassDataset, *,
                   num_tasks: int = 1024, num_batches: int = 16, batch_size: int = 100,
                   seed: int = 0, tasks_per_call: int | None = None) -> EvalResult:
    """Runs the SPEC §5 protocol of ``model`` on the classes of ``dataset``.

    ``config`` gives the episode and test-augmentation settings (``num_labels``,
    ``samples_transformer``, ``balanced_batches``, ``test_*`` ...); its ``samples_cnn`` is
    replaced by ``batch_size`` as the original evaluator does.  ``tasks_per_call`` tasks share
    one ``generate`` call (default: from :data:`CLASSIFY_IMAGES` and :data:`QUERY_BYTES`); it
    does not change the result.  Threads: one draws the next tasks meanwhile, and
    :data:`CLASSIFY_WORKERS` run the ``classify`` calls of a task batch concurrently (the
    calls are independent; the result does not depend on their timing).
    """
    for name, value in [("num_tasks", num_tasks), ("num_batches", num_batches),
                        ("batch_size", batch_size)]:
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    sampler = EpisodeSampler.from_config(dataset, config.replace(samples_cnn=batch_size),
                                         train=False, seed=seed)
    if tasks_per_call is None:
        image_bytes = 4 * config.image_channels * config.image_size ** 2
        tasks_per_call = max(1, min(CLASSIFY_IMAGES // batch_size,
                                    QUERY_BYTES // (image_bytes * batch_size * num_batches)))
    device = next(model.parameters()).device
    precision = resolve_precision(config.dtype, device)
    chunks = [(first, min(tasks_per_call, num_tasks - first))
              for first in range(0, num_tasks, tasks_per_call)]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    accuracies = []
    try:
        # One thread draws the next chunk's tasks while the model runs on this one, and
        # CLASSIFY_WORKERS threads classify the query batches of a chunk side by side.
        with ThreadPoolExecutor(max_workers=1) as sampling, \
                ThreadPoolExecutor(max_workers=CLASSIFY_WORKERS) as workers:
            def draw(i: int) -> Future[EpisodeBatch]:
                return sampling.submit(sample_tasks, sampler, *chunks[i], num_batches, seed)

            pending = draw(0)
            for i, (_, count) in enumerate(chunks):
                batch = pending.result().to(device)
                if i + 1 < len(chunks):
                    pending = draw(i + 1)
                with torch.no_grad(), precision.autocast(device):
                    weights = model.generate(batch.support_x, batch.support_y,
                                             batch.support_mask)
                accuracy = functools.partial(_batch_accuracy, model, batch, weights, batch_size,
                                             precision)
                correct = sum(workers.map(accuracy, range(num_batches)),
                              torch.zeros(count, device=device))
                accuracies.extend((correct / num_batches).tolist())
    finally:
        model.train(was_training)
    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(accuracy=mean, ci95=ci95, num_tasks=num_tasks, num_batches=num_batches,
                      batch_size=batch_size, task_accuracies=accuracies,
                      seconds=time.perf_counter() - start, dtype=precision.name)


# ---- checkpoints ---------------------------------------------------------------------------

def log_dir_of(checkpoint: str | Path) -> Path:
    """The log directory of ``<log_dir>/checkpoints/<file>`` (else the file's folder)."""
    parent = Path(checkpoint).parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def record_path(log_dir: str | Path, split: str, step: int, variant: str = "") -> Path:
    """``eval/<split>-<step>.json``; an evaluation with another number of unlabelled samples,
    or a continual one in another scenario, sequence length or with recomputed prototypes,
    adds its ``variant`` (``-0unlabeled``, ``-class``, ``-recompute``)."""
    return Path(log_dir) / EVAL_DIR / f"{split}-{step:08d}{'-' * bool(variant)}{variant}.json"


def evaluate_checkpoint(checkpoint: str | Path, split: str = "test", *, seed: int = 0,
                        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluates ``checkpoint`` (a file, or a log dir's latest) on ``split`` (train|val|test,
    mapped to classes by :func:`~hypertransformer.data.registry.load_split`); returns the
    record.

    ``overrides`` change the checkpoint's config for data and protocol (``data_dir``,
    ``num_task_evals``, ``num_eval_batches``, ``eval_batch_size``, ``test_*`` ...); a field
    that defines the model is refused, since the model is the checkpoint's.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    model, saved, state = model_from_checkpoint(checkpoint)
    config = saved.replace(**(overrides or {}))
    unlabeled = config.unlabeled_samples_per_class
    other_unlabeled = unlabeled != saved.unlabeled_samples_per_class
    if other_unlabeled:  # the same labelled shots beside another number of unlabelled samples
        config = config.replace(samples_transformer=config.num_labels * (saved.shots + unlabeled))
    clash = config_differences(saved.to_dict(), config, MODEL_FIELDS)
    if clash:
        raise ValueError(f"these fields define the model and must match the checkpoint "
                         f"(checkpoint -> given): {'; '.join(clash)}")
    dataset = load_split(config, split)
    protocol = dict(num_batches=config.num_eval_batches, batch_size=config.eval_batch_size,
                    seed=seed)
    chance = 1.0 / config.num_labels
    continual = config.model_type in CONTINUAL_MODELS
    if continual and config.sequence_length > 1:  # the continual protocol (SPEC §7)
        result = evaluate_continual(model, config, dataset, num_sequences=config.num_task_evals,
                                    num_tasks=config.sequence_length, **protocol)
        if config.cht_scenario == "class":  # after the last task: all classes seen
            chance /= config.sequence_length
    else:  # an HT, or one-task sequences of a continual model: episodes (SPEC §5)
        result = evaluate_model(EpisodeClassifier(model) if continual else model, config,
                                dataset, num_tasks=config.num_task_evals, **protocol).to_dict()
    # evaluated otherwise than trained: a record of its own, e.g. -class or -0unlabeled
    variant = [f"{unlabeled}unlabeled"] * other_unlabeled
    if continual:
        variant += ([config.cht_scenario] * (config.cht_scenario != saved.cht_scenario)
                    + [f"{config.sequence_length}tasks"] * (
                        config.sequence_length != saved.sequence_length)
                    + ["recompute"] * config.cht_recompute_prototypes)
    if variant:
        result["variant"] = "-".join(variant)
    return {
        "split": split, "dataset": dataset.name, "step": int(state["step"]),
        "checkpoint": str(checkpoint), "seed": seed,  # as given: relative stays relative
        "model_type": config.model_type, "num_labels": config.num_labels, "chance": chance,
        **result,
    }


def save_record(log_dir: str | Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` to :func:`record_path` (atomically) and its accuracy to the
    TensorBoard events of ``<log_dir>/eval`` as ``eval_accuracy/<split>``."""
    from torch.utils.tensorboard import SummaryWriter

    path = record_path(log_dir, record["split"], record["step"], record.get("variant", ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
    with SummaryWriter(str(path.parent)) as writer:
        variant = record.get("variant", "")
        writer.add_scalar(f"eval_accuracy/{record['split']}{'-' * bool(variant)}{variant}",
                          record["accuracy"], record["step"])
    return path


def step_of(checkpoint: str | Path) -> int:
    """The step in a periodic checkpoint's name ``ckpt-<step>.pt``."""
    return int(Path(checkpoint).stem.split("-")[1])


def watch(log_dir: str | Path, split: str = "test", *, seed: int = 0,
          overrides: dict[str, Any] | None = None, poll_seconds: float = 10.0,
          timeout: float | None = None,
          on_record: Callable[[dict[str, Any], Path], None] | None = None) -> list[Path]:
    """Evaluates each checkpoint of ``log_dir`` without a record as it appears (module
    docstring); returns the records written.  Raises ``TimeoutError`` after ``timeout``
    seconds without finishing.  A checkpoint pruned by the trainer before it was read is
    skipped."""
    log_dir = Path(log_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    written: list[Path] = []
    while True:
        done = (log_dir / "done.json").exists()  # before listing: the last save precedes it
        pending = [c for c in list_checkpoints(log_dir)
                   if not record_path(log_dir, split, step_of(c)).exists()]
        for checkpoint in pending:
            try:
                record = evaluate_checkpoint(checkpoint, split, seed=seed, overrides=overrides)
            except (FileNotFoundError, CheckpointError):
                if checkpoint.exists():
                    raise
                continue  # pruned by the trainer meanwhile
            path = save_record(log_dir, record)
            written.append(path)
            if on_record is not None:
                on_record(record, path)
        if done and not pending:
            return written
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"watching {log_dir}: no done.json after {timeout:g} s")
        if not pending:
            time.sleep(poll_seconds)
