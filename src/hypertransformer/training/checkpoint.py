"""Training checkpoints: atomic files, listing, pruning, and loading a model back.

Layout of a log directory::

    <log_dir>/checkpoints/ckpt-00001000.pt   # the last KEEP (3) periodic checkpoints
    <log_dir>/checkpoints/best.pt            # best held-out accuracy so far

A checkpoint is a ``torch.save``-d dict (see :data:`CHECKPOINT_KEYS`) of plain Python values and
tensors only, so it loads with ``torch.load(weights_only=True)``:

* ``format_version`` (:data:`FORMAT_VERSION`), ``step`` (optimiser steps taken),
  ``config`` (``Config.to_dict()``),
* ``model``, ``optimizer``, ``scheduler``: the ``state_dict()`` of each,
* ``rng``: ``torch`` (CPU generator state), ``python`` (``random.getstate()``), ``numpy``
  (``np.random.get_state()`` as plain lists), ``train_sampler``
  (:meth:`EpisodeSampler.state_dict`; the held-out episodes are the same at every step,
  so their sampler has no state to keep), and on a GPU ``cuda`` (the CUDA generator states),
* ``rank_rng``: under data-parallel training the same RNG states of ranks 1..P-1 (``rng`` is
  rank 0's); ``[]`` for a single process,
* ``scaler``: the ``GradScaler`` state when training with fp16 mixed precision,
* ``best_accuracy`` (best held-out accuracy so far, or ``None``), ``episodes_seen``,
  ``wall_time`` (seconds spent training, summed over resumed runs).

A model-only copy (:func:`save_model_only`, e.g. the pretrained models shipped in the package)
keeps every key but empties ``optimizer`` (two thirds of an AdamW checkpoint): it evaluates
and fits classifiers like the original, but cannot resume training.

Writes are atomic: the data goes to a temporary file in the same directory, is flushed and
fsync-ed, then ``os.replace``-d onto the final name; a crash leaves either the old file or the
new one, never a partial checkpoint (temporary names never match ``ckpt-*.pt``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypertransformer.config import Config, field_names
from hypertransformer.model import build_model

FORMAT_VERSION = 1
KEEP = 3
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
CHECKPOINT_KEYS = ("format_version", "step", "config", "model", "optimizer", "scheduler", "rng",
                   "best_accuracy", "episodes_seen", "wall_time")
_NAME = re.compile(r"ckpt-(\d{8,})\.pt")
_TMP_PREFIX = ".tmp-"

# Config fields that define the trained function and the shapes of its parameters (SPEC §3):
# a checkpoint can only be resumed (or loaded into a model) with the same values.  The
# dropout rates, data, augmentation, schedule and evaluation fields may change on a resume.
MODEL_FIELDS = (
    "image_size", "image_channels", "num_labels",
    "cnn_model_name", "default_num_channels", "kernel_size", "stride", "cnn_activation",
    "number_of_trained_cnn_layers", "add_trainable_weights",
    "embedding_dim", "num_layers", "heads", "num_layerwise_features",
    "lw_key_query_dim", "lw_value_dim", "lw_inner_dim", "lw_use_nonlinear_feature",
    "lw_weight_allocation", "lw_generate_bias", "lw_generate_bn", "layerwise_generator",
    "use_decoder", "transformer_activation", "transformer_nonlinearity",
    "transformer_skip_last_nonlinearity", "shared_feature_extractor", "shared_features_dim",
    "shared_feature_extractor_padding", "logits_feature_extractor",
    "warmup_steps", "shared_head_weight", "shared_head_classes", "model_type", "prototype_dim",
    "cht_feedback", "cht_residual", "cht_embedding_scale",
)
# ... and resuming also needs the same kind of optimiser state.
RESUME_FIELDS = (*MODEL_FIELDS, "optimizer")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the run; the message says which."""


def checkpoint_dir(log_dir: str | Path) -> Path:
    return Path(log_dir) / CHECKPOINT_DIR


def checkpoint_path(log_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(log_dir) / f"ckpt-{step:08d}.pt"


def best_checkpoint_path(log_dir: str | Path) -> Path:
    return checkpoint_dir(log_dir) / BEST_NAME


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_model_only(source: str | Path, path: str | Path) -> None:
    """Copies checkpoint ``source`` to ``path`` without its optimiser state (module
    docstring)."""
    state = load_checkpoint(source)
    save_checkpoint(path, {**state, "optimizer": {}})


def _fsync_dir(directory: Path) -> None:
    """Makes a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict saved at ``path``; a missing, corrupt or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this "
                              f"project ({type(e).__name__}: {e})") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is not a "
                              f"training checkpoint of this project")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version "
                              f"{state['format_version']}; this version reads {FORMAT_VERSION}")
    return state


def list_checkpoints(log_dir: str | Path) -> list[Path]:
    """The periodic checkpoints ``ckpt-<step>.pt`` of ``log_dir``, sorted by step."""
    directory = checkpoint_dir(log_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(log_dir: str | Path) -> Path | None:
    found = list_checkpoints(log_dir)
    return found[-1] if found else None


def prune_checkpoints(log_dir: str | Path, keep: int = KEEP) -> None:
    """Deletes all but the last ``keep`` periodic checkpoints (``best.pt`` stays) and any
    temporary file left by a killed writer (one trainer writes to a log directory)."""
    found = list_checkpoints(log_dir)
    for path in found[:max(0, len(found) - keep)]:
        path.unlink(missing_ok=True)
    for tmp in checkpoint_dir(log_dir).glob(_TMP_PREFIX + "*"):
        tmp.unlink(missing_ok=True)


def config_differences(saved: dict[str, Any], config: Config,
                       fields: tuple[str, ...] = RESUME_FIELDS) -> list[str]:
    """``"name: saved -> current"`` for each of ``fields`` that differs (a field missing from
    ``saved`` counts as its default)."""
    default = Config()
    return [f"{name}: {saved.get(name, getattr(default, name))!r} -> "
            f"{getattr(config, name)!r}"
            for name in fields if saved.get(name, getattr(default, name)) != getattr(
                config, name)]


def check_compatible(state: dict[str, Any], config: Config, where: str | Path) -> None:
    """Refuses to resume ``state`` with ``config`` when a :data:`RESUME_FIELDS` field differs."""
    diffs = config_differences(state["config"], config)
    if diffs:
        raise CheckpointError(
            f"checkpoint {where} was trained with a different model or optimiser; these fields "
            f"differ (checkpoint -> this run): {'; '.join(diffs)}. Use a new log directory or "
            f"the checkpoint's values")


def resolve_checkpoint(path_or_log_dir: str | Path) -> Path:
    """A checkpoint file itself, or the latest checkpoint of a log (or checkpoints) dir."""
    path = Path(path_or_log_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a log directory")
    log_dir = path.parent if path.name == CHECKPOINT_DIR else path
    latest = latest_checkpoint(log_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint (checkpoints/ckpt-*.pt) in {log_dir}")
    return latest


def model_from_checkpoint(
        path_or_log_dir: str | Path) -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model in eval mode with the saved parameters, its config, the checkpoint dict).

    ``path_or_log_dir`` is a checkpoint file (e.g. ``.../checkpoints/best.pt``) or a log
    directory, meaning its latest periodic checkpoint.
    """
    path = resolve_checkpoint(path_or_log_dir)
    state = load_checkpoint(path)
    saved = state["config"]
    known = set(field_names())
    config = Config.from_dict({k: v for k, v in saved.items() if k in known})
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config "
                              f"builds: {e}") from e
    model.eval()
    return model, config, state
