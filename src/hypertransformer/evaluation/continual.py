"""The evaluation protocol of the Continual HyperTransformer (SPEC §7) and its ProtoNet baseline.

``num_sequences`` sequences of ``num_tasks`` tasks (L_eval, default 2·L: more tasks than the
model was trained on) are drawn from the split, each sequence from its own ``(seed, index)``
generator (so the result depends on the seed alone, and a CHT and a ConstPN evaluated with one
seed see the same sequences).  Each task has one support set and ``num_batches`` query batches
of ``batch_size``.  The tasks are learned in order (:class:`~..model.continual.TaskStream`); after
task t the queries of every τ ≤ t are classified with the current weights among the scenario's
candidates, each query batch with its own BatchNorm statistics.  ``A[t, τ]`` is the accuracy
averaged over τ's query batches and then over the sequences, with a 95% interval
``1.96 · std / √sequences`` (population std) per entry.

Summaries, with ``F = L_eval − 1`` the last task:

* ``final_accuracy``: mean over τ of ``A[F, τ]`` (every task after the whole sequence), with a
  95% interval over the sequences;
* ``forgetting``: mean over τ < F of ``max_{τ ≤ t' < F} A[t', τ] − A[F, τ]`` (on the mean
  matrix; > 0 means forgotten);
* ``backward_transfer``: mean over τ < F of ``A[F, τ] − A[τ, τ]`` (< 0 means forgotten, > 0
  that later tasks improved earlier ones), with a 95% interval over the sequences.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.sampler import EpisodeSampler, SequenceSampler
from hypertransformer.evaluation.protocol import confidence_interval, sample_tasks
from hypertransformer.model.continual import TaskStream
from hypertransformer.precision import resolve_precision

# Sequences per call (a speed/memory knob; it does not change the result).
SEQUENCES_PER_CALL = 8


def summarize(per_sequence: np.ndarray) -> dict[str, Any]:
    """The record fields of a ``[sequences, L, L]`` array of per-sequence accuracies (entries
    above the diagonal unused): matrices as lists of rows (row t = A[t, 0..t]), summaries."""
    n, length, _ = per_sequence.shape
    mean = per_sequence.mean(0)
    ci = 1.96 * per_sequence.std(0) / np.sqrt(n)
    last = length - 1
    final = per_sequence[:, last, :].mean(1)
    record: dict[str, Any] = {
        "accuracy_matrix": [mean[t, :t + 1].tolist() for t in range(length)],
        "ci95_matrix": [ci[t, :t + 1].tolist() for t in range(length)],
    }
    record["final_accuracy"], record["final_accuracy_ci95"] = confidence_interval(final)
    if last > 0:
        earlier = range(last)
        record["forgetting"] = float(np.mean(
            [mean[tau:last, tau].max() - mean[last, tau] for tau in earlier]))
        bwt = np.mean([per_sequence[:, last, tau] - per_sequence[:, tau, tau]
                       for tau in earlier], axis=0)
        record["backward_transfer"], record["backward_transfer_ci95"] = (
            confidence_interval(bwt))
    else:
        record["forgetting"] = record["backward_transfer"] = None
        record["backward_transfer_ci95"] = None
    return record


def evaluate_continual(model: nn.Module, config: Config, dataset: ClassDataset, *,
                       num_sequences: int = 512, num_tasks: int = 10, num_batches: int = 1,
                       batch_size: int = 100, seed: int = 0,
                       recompute: bool | None = None) -> dict[str, Any]:
    """The protocol of the module docstring for a CHT or ProtoNet ``model``; ``config`` gives
    the episodes (``num_labels``, ``samples_transformer``, ``test_*``), ``cht_scenario`` and,
    unless ``recompute`` is given, ``cht_recompute_prototypes``.  Returns the record fields
    (:func:`summarize`, protocol, ``accuracy``/``ci95`` = the final accuracy, ``seconds``)."""
    for name, value in [("num_sequences", num_sequences), ("num_tasks", num_tasks),
                        ("num_batches", num_batches), ("batch_size", batch_size)]:
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    episodes = EpisodeSampler.from_config(dataset, config.replace(samples_cnn=batch_size),
                                          train=False, seed=seed)
    sampler = SequenceSampler(episodes, num_tasks, config.cht_scenario)
    recompute = config.cht_recompute_prototypes if recompute is None else recompute
    device = next(model.parameters()).device
    precision = resolve_precision(config.dtype, device)
    accuracy = np.zeros((num_sequences, num_tasks, num_tasks))
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for first in range(0, num_sequences, SEQUENCES_PER_CALL):
            count = min(SEQUENCES_PER_CALL, num_sequences - first)
            batch = sample_tasks(sampler, first, count, num_batches, seed).to(device)
            stream = TaskStream(model, recompute, config.cht_scenario)
            acc = torch.zeros(count, num_tasks, num_tasks)
            with torch.no_grad(), precision.autocast(device):
                for t in range(num_tasks):
                    task = batch.task(t)
                    stream.learn(task.support_x, task.support_y, task.support_mask)
                    for b in range(num_batches):
                        queries = slice(b * batch_size, (b + 1) * batch_size)
                        logits = stream.logits(batch.query_x[:, :t + 1, queries])
                        target = stream.targets(batch.query_y[:, :t + 1, queries])
                        hits = (logits.argmax(-1) == target).float().mean(-1).cpu()
                        acc[:, t, :t + 1] += hits / num_batches
            accuracy[first:first + count] = acc.numpy()
    finally:
        model.train(was_training)
    record = summarize(accuracy)
    return {
        "scenario": config.cht_scenario, "recompute_prototypes": recompute,
        "num_sequences": num_sequences, "tasks_per_sequence": num_tasks,
        "trained_tasks_per_sequence": config.cht_tasks,
        "num_batches": num_batches, "batch_size": batch_size,
        "accuracy": record["final_accuracy"], "ci95": record["final_accuracy_ci95"],
        **record, "seconds": time.perf_counter() - start, "dtype": precision.name,
    }
