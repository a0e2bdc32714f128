"""``load(name or path)``: a trained HyperTransformer, ready to :meth:`~FewShotModel.fit`.

Pretrained models are training checkpoints shipped in the package as
``hypertransformer/pretrained/<name>.pt``: a run's checkpoint without its optimiser state
(:func:`~hypertransformer.training.checkpoint.save_model_only`; which run: docs/results.md).
:data:`PRETRAINED` names the ones this version knows.  Any checkpoint is read with
``torch.load(weights_only=True)`` (:func:`training.checkpoint.load_checkpoint`): tensors and
plain Python values only, never arbitrary pickled objects.
"""

from __future__ import annotations

from pathlib import Path

from hypertransformer.inference.classifier import FewShotModel
from hypertransformer.model.hypertransformer import HyperTransformer

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
PRETRAINED: dict[str, str] = {
    "omniglot_1shot": "20-way 1-shot Omniglot (preset omniglot_1shot_cpu)",
    "omniglot_5shot": "20-way 5-shot Omniglot (preset omniglot_5shot_cpu)",
    "glyphs_demo": "5-way 1-shot, the built-in glyphs data (`hypertransformer demo`)",
}


def available_pretrained() -> list[str]:
    """The pretrained names whose checkpoint this installation ships."""
    return [name for name in PRETRAINED if (PRETRAINED_DIR / f"{name}.pt").is_file()]


def load(model: str | Path) -> FewShotModel:
    """A trained HyperTransformer: a pretrained name (:data:`PRETRAINED`), or what
    ``hypertransformer train`` wrote: a log directory (its latest checkpoint) or a
    ``ckpt-*.pt`` / ``best.pt`` file.  A name wins over a directory of the same name (write
    ``./name`` for the directory)."""
    # Imported here: the training package pulls in TensorBoard, which only loading needs.
    from hypertransformer.training.checkpoint import CheckpointError, model_from_checkpoint

    path = Path(model).expanduser()
    shipped = ", ".join(available_pretrained()) or "none yet"
    if str(model) in PRETRAINED:
        path = PRETRAINED_DIR / f"{model}.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"the pretrained model {model!r} is not shipped with this version yet (no "
                f"{path}); shipped: {shipped}. Train one with `hypertransformer train --preset "
                f"{model} --log-dir DIR` and load DIR")
    elif not path.exists() and path.suffix == "" and len(path.parts) == 1:
        raise ValueError(f"{model!r} is neither a pretrained model nor an existing checkpoint "
                         f"or log directory; pretrained names: {', '.join(PRETRAINED)} "
                         f"(shipped: {shipped})")
    ht, config, _ = model_from_checkpoint(path)
    if not isinstance(ht, HyperTransformer) or config.model_type != "ht":
        raise CheckpointError(f"{model} holds a {config.model_type!r} model; only a "
                              f"HyperTransformer (model_type 'ht') can fit a classifier")
    return FewShotModel(ht)
