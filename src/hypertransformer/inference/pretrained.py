"""``load(name or path)``: a trained model, ready to :meth:`~FewShotModel.fit` a classifier
(a HyperTransformer) or to learn a :meth:`~ContinualModel.stream` of tasks (a Continual HT or
its ProtoNet baseline).

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
from hypertransformer.inference.stream import STREAM_MODELS, ContinualModel, read_stream_file
from hypertransformer.model.hypertransformer import HyperTransformer

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
PRETRAINED: dict[str, str] = {
    "omniglot_1shot": "20-way 1-shot Omniglot (preset omniglot_1shot_cpu)",
    "omniglot_5shot": "20-way 5-shot Omniglot (preset omniglot_5shot_cpu)",
    "omniglot_1shot_semi": "20-way 1-shot Omniglot with unlabelled images beside "
                           "(fit(..., unlabeled=...); preset omniglot_1shot_semi_cpu)",
    "drawings_1shot": "20-way 1-shot Omniglot with stroke and warp augmentations, for "
                      "drawings from elsewhere (preset drawings_1shot_cpu)",
    "glyphs_demo": "5-way 1-shot, the built-in glyphs data (`hypertransformer demo`)",
    "cht_omniglot_task": "5-way 1-shot Omniglot, task-incremental CHT (preset cht_omniglot_task)",
    "cht_omniglot_class": "5-way 1-shot Omniglot, class-incremental CHT (preset "
                          "cht_omniglot_class)",
    "constpn_omniglot": "ConstPN: ProtoNet of the same 8-channel CNN (preset "
                        "protonet_omniglot_continual)",
}
# The pretrained names of continual models (ContinualModel); the others fit classifiers.
CONTINUAL_PRETRAINED = ("cht_omniglot_task", "cht_omniglot_class", "constpn_omniglot")
FEW_SHOT_PRETRAINED = [name for name in PRETRAINED if name not in CONTINUAL_PRETRAINED]


def available_pretrained() -> list[str]:
    """The pretrained names whose checkpoint this installation ships."""
    return [name for name in PRETRAINED if (PRETRAINED_DIR / f"{name}.pt").is_file()]


def pretrained_path(name: str) -> Path:
    """The checkpoint file of the pretrained model ``name``; a clear error for a name that
    this version does not know or does not ship."""
    shipped = ", ".join(available_pretrained()) or "none yet"
    if name not in PRETRAINED:
        raise ValueError(f"{name!r} is neither a pretrained model nor an existing checkpoint "
                         f"or log directory; pretrained names: {', '.join(PRETRAINED)} "
                         f"(shipped: {shipped})")
    path = PRETRAINED_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"the pretrained model {name!r} is not shipped with this version yet (no "
            f"{path}); shipped: {shipped}. {name} is {PRETRAINED[name]}: train one with "
            f"`hypertransformer train --preset PRESET --log-dir DIR` and load DIR")
    return path


def load(model: str | Path, *, dtype: str = "auto") -> FewShotModel | ContinualModel:
    """A trained model: a pretrained name (:data:`PRETRAINED`), or what ``hypertransformer
    train`` wrote: a log directory (its latest checkpoint) or a ``ckpt-*.pt`` / ``best.pt``
    file.  A HyperTransformer gives a :class:`FewShotModel`, a Continual HT or ProtoNet a
    :class:`ContinualModel`.  A name wins over a directory of the same name (write ``./name``
    for the directory).  ``dtype`` (auto | fp32 | bf16) is the compute dtype of what the
    model runs (:mod:`hypertransformer.precision`)."""
    # Imported here: the training package pulls in TensorBoard, which only loading needs.
    from hypertransformer.training.checkpoint import CheckpointError, model_from_checkpoint

    path = Path(model).expanduser()
    if str(model) in PRETRAINED:
        path = pretrained_path(str(model))
    elif not path.exists() and path.suffix == "" and len(path.parts) == 1:
        pretrained_path(str(model))  # the error that names the pretrained models
    try:
        net, config, _ = model_from_checkpoint(path)
    except CheckpointError:
        if path.is_file() and read_stream_file(path) is not None:
            raise CheckpointError(f"{model} is a stream saved by stream.save(path); load it "
                                  f"with hypertransformer.inference.load_stream") from None
        raise
    if isinstance(net, HyperTransformer) and config.model_type == "ht":
        return FewShotModel(net, dtype)
    if config.model_type in STREAM_MODELS:
        return ContinualModel(net, dtype)
    raise CheckpointError(f"{model} holds a {config.model_type!r} model; load() takes a "
                          f"HyperTransformer (model_type 'ht': fits classifiers) or a model "
                          f"that learns task after task ({', '.join(map(repr, STREAM_MODELS))})")


def load_few_shot(model: str | Path, *, dtype: str = "auto") -> FewShotModel:
    """:func:`load` for what needs a HyperTransformer (``generate``, ``serve``): a continual
    model is refused with a message."""
    fits = ", ".join(FEW_SHOT_PRETRAINED)
    if str(model) in CONTINUAL_PRETRAINED:
        raise ValueError(f"{model!r} is a continual model (it learns task after task: "
                         f"hypertransformer.load({str(model)!r}).stream()), not a "
                         f"HyperTransformer that fits a classifier; use one of {fits}")
    loaded = load(model, dtype=dtype)
    if not isinstance(loaded, FewShotModel):
        raise ValueError(f"{model} holds a {loaded.config.model_type!r} model, which learns "
                         f"task after task (hypertransformer.load(...).stream()); fitting a "
                         f"classifier needs a HyperTransformer (model_type 'ht', e.g. {fits})")
    return loaded
