"""Training: the loop (:mod:`.trainer`), checkpoints (:mod:`.checkpoint`), the ``train`` CLI."""

from hypertransformer.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from hypertransformer.training.trainer import TrainResult, train

__all__ = ["TrainResult", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "model_from_checkpoint", "prune_checkpoints", "save_checkpoint", "train"]
