"""A trained HyperTransformer on a user's own images: load, fit, classify, export.

::

    ht = hypertransformer.load("omniglot_1shot")          # or a log dir / checkpoint file
    clf = ht.fit(images, labels)                           # one generated CNN
    clf.predict(queries)                                   # class names
    clf.save("cnn.pt")                                     # TorchScript (or "cnn.onnx")

:func:`load` reads a training checkpoint with ``torch.load(weights_only=True)`` (no arbitrary
objects are unpickled).  :meth:`FewShotModel.fit` runs :meth:`HyperTransformer.generate` on
one task and keeps the generated CNN as a :class:`GeneratedCNN` whose weights are buffers,
fine-tuned on the support set when a class has two or more images (:meth:`GeneratedCNN.tune`).

BatchNorm: the generated CNN normalises with batch statistics, in training with those of the
query batch.  A :class:`GeneratedCNN` instead stores the statistics of the support pass (the
ones the weights were generated with) and uses them for every query, so that an image's
prediction does not depend on the other images of the call and a single image can be
classified (docs/use.md has the measurements behind this choice).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.inference.images import Images, Preprocessing, as_list, check_ink
from hypertransformer.model.cnn import ConvLayer, ConvSpec, LayerWeights, conv_block, last_features
from hypertransformer.model.hypertransformer import GeneratedWeights, HyperTransformer
from hypertransformer.model.ops import BN_EPS
from hypertransformer.precision import FP32, Precision, fp32, resolve_precision

METADATA_FILE = "hypertransformer.json"  # the extra file of an exported TorchScript model
METADATA_FORMAT = "hypertransformer-classifier/1"
Labels = Sequence[Hashable] | Tensor | np.ndarray  # one class name per image
Statistics = list[tuple[Tensor, Tensor]]  # BatchNorm (mean, var) of each layer
_addmm_fp32 = fp32(torch.addmm)  # the generated CNN's logits, in float32 under autocast
# Fine-tuning of a generated CNN on its support set (GeneratedCNN.tune) when a class has
# two or more images, chosen on the validation part of benchmarks/cross_domain.py (docs/use.md).
TUNE_STEPS = 50
TUNE_LR = 1e-2


class TrainedModel:
    """What :func:`~.pretrained.load` gives: a trained model in eval mode, its config, the
    preprocessing of user images that the config implies, and the compute dtype of what it
    runs (``dtype``: :mod:`hypertransformer.precision`, resolved for inference)."""

    def __init__(self, model: nn.Module, dtype: str = "auto") -> None:
        self.model = model.eval()
        self.precision = resolve_precision(dtype, next(model.parameters()).device)

    @property
    def config(self) -> Config:
        return self.model.config

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_config(self.config)


class FewShotModel(TrainedModel):
    """A trained HyperTransformer that writes a classifier for a few labelled images."""

    def fit(self, images: Images, labels: Labels, *, unlabeled: Images | None = None,
            ink: str = "auto", frame: bool | None = None,
            tune_steps: int | None = None) -> GeneratedClassifier:
        """The classifier generated from the support set ``images`` labelled ``labels``.

        Any hashable class names, 1 to N = ``num_labels`` classes (in order of first
        appearance) and any number of images per class; more shots per class than the model
        was trained with are dealt into groups (:func:`shot_groups`) whose generated weights
        are averaged (:func:`mean_weights`).  ``unlabeled``: more pictures of the
        same classes without labels, for a model trained with unlabelled support samples
        (``unlabeled_samples_per_class`` > 0, e.g. ``omniglot_1shot_semi``); they enter the
        transformer with the unlabelled token and the support BatchNorm statistics, as in
        training.  ``ink`` is the polarity of the support images and the default for the
        queries (:mod:`.images`).  ``frame``: scale and centre every drawing (support and
        queries) on its ink (:mod:`data.framing`), for drawings that sit small or off-centre
        in their picture; default: as the model was trained (``frame_ink``).  Drawing models
        only (Omniglot, glyphs).  ``tune_steps``: steps of fine-tuning the generated CNN on
        the support set (:meth:`GeneratedCNN.tune`); 0 keeps the generated weights as they
        are; default: :data:`TUNE_STEPS` when some class has two or more labelled images, 0
        with one image a class (where tuning did not help: docs/use.md).
        """
        if tune_steps is not None and tune_steps < 0:
            raise ValueError(f"tune_steps must be 0 or more; got {tune_steps}")
        cfg = self.config
        prep = self.preprocessing
        if frame is not None:
            if not prep.ink_high:
                raise ValueError("frame applies to models of ink drawings (Omniglot, glyphs); "
                                 f"this one was trained on {cfg.train_dataset}")
            prep = dataclasses.replace(prep, frame_ink=frame)
        x, y, classes = read_support(prep, images, labels, ink, cfg.num_labels)
        extra = [] if unlabeled is None else as_list(unlabeled)
        if extra:
            if cfg.unlabeled_samples_per_class < 1:
                raise ValueError("this model was trained without unlabelled support samples "
                                 "(unlabeled_samples_per_class = 0), so it cannot use "
                                 "unlabeled images; load a semi-supervised model such as "
                                 "omniglot_1shot_semi")
            u = prep(extra, ink)
            x = torch.cat([x, u])
            y = torch.cat([y, torch.full((len(u),), cfg.num_labels)])
        with torch.no_grad(), self.precision.autocast(x.device):
            weights = mean_weights([self.model.generate(x[i][None], y[i][None])
                                    for i in shot_groups(y, cfg.num_labels, cfg.shots)])
            cnn = GeneratedCNN.from_generated(self.model, weights, len(classes))
        if tune_steps is None:
            several = bool(torch.bincount(y)[:len(classes)].max() > 1)
            tune_steps = TUNE_STEPS if several else 0
        # in float32 whatever the precision: tuned in bf16, a 10-way 5-shot glyphs
        # classifier fell from 87 to 40 % on its queries
        cnn.tune(x, y, tune_steps)
        with torch.no_grad(), self.precision.autocast(x.device):
            cnn.fit_statistics(x)
        return GeneratedClassifier(cnn, classes, prep, ink, self.precision).eval()


def shot_groups(y: Tensor, num_labels: int, shots: int) -> list[Tensor]:
    """The support samples (indices into ``y``) of each generation, for more shots than the
    model was trained with (docs/use.md).  With at most ``shots`` labelled images per class:
    one group, the whole support set.  With more: G = ⌈most / shots⌉ groups; the images of
    each class are dealt in turn (image i to group i mod G), a class with fewer than G images
    lends one of them again to each group it cannot fill, and unlabelled images (label
    ``num_labels``) are dealt the same way without lending."""
    counts = torch.bincount(y, minlength=num_labels + 1)
    groups = math.ceil(int(counts[:num_labels].max()) / shots)
    if groups <= 1:
        return [torch.arange(len(y))]
    members = [torch.nonzero(y == c).flatten() for c in range(num_labels + 1)]
    out = []
    for g in range(groups):
        parts = []
        for c, m in enumerate(members):
            if len(m) > g:
                parts.append(m[g::groups])
            elif c < num_labels and len(m):
                parts.append(m[g % len(m)].view(1))
        out.append(torch.cat(parts).sort().values)
    return out


def mean_weights(weights: list[GeneratedWeights]) -> GeneratedWeights:
    """The element-wise mean of one task's generated weights over several generations."""
    if len(weights) == 1:
        return weights[0]

    def mean(layers: list[LayerWeights | None]) -> LayerWeights | None:
        if layers[0] is None:
            return None
        return LayerWeights(**{name: torch.stack([w.tensors()[name] for w in layers]).mean(0)
                               for name in layers[0].tensors()})

    return GeneratedWeights([mean([w.layers[i] for w in weights])
                             for i in range(len(weights[0].layers))], None)


def read_support(preprocessing: Preprocessing, images: Images, labels: Labels, ink: str,
                 num_labels: int, per: str = "classifier",
                 ) -> tuple[Tensor, Tensor, list[Hashable]]:
    """A labelled support set as the model reads it: (images ``[S, C, H, W]``, labels ``[S]``
    numbered 0.. in order of first appearance, the class names in that order).  Any hashable
    class names, 1 to ``num_labels`` classes (more: an error telling the user to use at most
    that many per ``per``), any number of images per class, one label per image."""
    check_ink(ink)
    labels = labels.tolist() if isinstance(labels, Tensor | np.ndarray) else list(labels)
    index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    n = num_labels
    if len(index) > n:
        raise ValueError(f"{len(index)} classes, but this model tells at most {n} apart "
                         f"(num_labels = {n}); use at most {n} classes per {per}")
    x = preprocessing(images, ink)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels; give one label per image")
    return x, torch.tensor([index[label] for label in labels]), list(index)


def check_saved_names(class_names: list[Hashable], what: str) -> None:
    """Refuses class names that ``what`` (a saved file) cannot keep: only str, int, float and
    bool are saved."""
    bad = [c for c in class_names if not isinstance(c, str | int | float | bool)]
    if bad:
        raise ValueError(f"class name {bad[0]!r} cannot be saved; {what} keeps str, int, "
                         f"float or bool class names")


class GeneratedConv(nn.Module):
    """One conv layer of a generated CNN (one task): its effective weights and the BatchNorm
    statistics it normalises with, as buffers."""

    def __init__(self, layer: ConvLayer, weights: LayerWeights | None, num_tasks: int,
                 task: int) -> None:
        super().__init__()
        self.spec: ConvSpec = layer.spec
        self.activation = layer.activation
        e = layer.effective(weights, num_tasks)
        assert e.weight is not None and e.gamma is not None and e.beta is not None
        self.register_buffer("weight", e.weight[task].detach().clone())
        self.register_buffer("bias", None if e.bias is None else e.bias[task].detach().clone())
        self.register_buffer("gamma", e.gamma[task].detach().clone())
        self.register_buffer("beta", e.beta[task].detach().clone())
        self.register_buffer("mean", torch.zeros_like(self.gamma))
        self.register_buffer("var", torch.ones_like(self.gamma))

    def conv(self, x: Tensor) -> Tensor:
        return conv_block(x, self.weight, self.bias, self.spec, self.activation)

    def normalize(self, x: Tensor, statistics: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """BatchNorm with the stored statistics, or with ``statistics`` (mean, var)."""
        mean, var = (self.mean, self.var) if statistics is None else statistics
        return F.batch_norm(x, mean, var, self.gamma, self.beta, False, 0.0, BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(self.conv(x))


class GeneratedCNN(nn.Module):
    """The CNN the HT generated for one task: images ``[B, C, H, W]`` (preprocessed, ``x /
    128 - 1``) -> logits ``[B, classes]``, BatchNorm with stored statistics."""

    def __init__(self, layers: list[GeneratedConv], logits_weight: Tensor, logits_bias: Tensor,
                 flatten: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("logits_weight", logits_weight)  # [F, classes]
        self.register_buffer("logits_bias", logits_bias)  # [classes]
        self.flatten = flatten

    @classmethod
    def from_generated(cls, model: HyperTransformer, weights: GeneratedWeights,
                       num_classes: int, task: int = 0) -> GeneratedCNN:
        """The CNN of task ``task`` of ``weights`` with the logits of its first
        ``num_classes`` labels only (BatchNorm statistics: :meth:`fit_statistics`)."""
        t = weights.num_tasks
        layers = [GeneratedConv(layer, w, t, task)
                  for layer, w in zip(model.conv_layers, weights.layers[:-1], strict=True)]
        last = weights.layers[-1]
        assert last is not None
        weight, bias = model.logits_layer.effective(last)
        return cls(layers, weight[task, :, :num_classes].detach().clone(),
                   bias[task, :num_classes].detach().clone(), model.logits_layer.spec.flatten)

    @torch.no_grad()
    def fit_statistics(self, x: Tensor) -> None:
        """Stores the batch statistics of ``x`` (the support set) in every layer, as the
        support pass of :meth:`HyperTransformer.generate` computed them."""
        for layer in self.layers:
            x = layer.conv(x)
            var, mean = torch.var_mean(x.to(layer.mean.dtype), dim=(0, 2, 3), unbiased=False)
            layer.mean.copy_(mean)
            layer.var.copy_(var)
            x = layer.normalize(x)

    def tune(self, x: Tensor, y: Tensor, steps: int, lr: float = TUNE_LR) -> None:
        """Fine-tunes every generated weight (convolutions, BatchNorm scales and shifts,
        logits) on the support set: ``steps`` full-batch Adam steps at learning rate ``lr``
        on the cross-entropy of the labelled images of ``x`` (labels ``y``; a label past this
        CNN's classes marks an unlabelled image, which counts in the BatchNorm statistics
        only), each BatchNorm normalising with the statistics of ``x`` as in training.  The
        stored statistics are not updated: call :meth:`fit_statistics` after."""
        if steps == 0:
            return
        weights = [b for name, b in self.named_buffers() if not name.endswith(("mean", "var"))]
        labelled = y < self.logits_bias.numel()
        with torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            optimizer = torch.optim.Adam(weights, lr=lr)
            for _ in range(steps):
                loss = F.cross_entropy(self.batch_forward(x)[labelled], y[labelled])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            for w in weights:
                w.requires_grad_(False)
                w.grad = None

    def batch_forward(self, x: Tensor) -> Tensor:
        """Logits of ``x`` with every BatchNorm normalising with the statistics of ``x``
        (as in training; differentiable)."""
        for layer in self.layers:
            x = F.batch_norm(layer.conv(x), None, None, layer.gamma, layer.beta, True, 0.0,
                             BN_EPS)
        return self.logits(x)

    def logits(self, features: Tensor) -> Tensor:
        """The logits layer on the last conv layer's output."""
        return _addmm_fp32(self.logits_bias, last_features(features, 1, self.flatten)[0],
                           self.logits_weight)

    def statistics(self) -> Statistics:
        """The stored BatchNorm statistics (mean, var) of each layer."""
        return [(layer.mean, layer.var) for layer in self.layers]

    def forward(self, x: Tensor, statistics: Statistics | None = None) -> Tensor:
        """Logits of ``x``, normalised with the stored statistics or with ``statistics``
        (those of another support pass, as :meth:`statistics` gives them)."""
        for i, layer in enumerate(self.layers):
            x = layer.normalize(layer.conv(x), None if statistics is None else statistics[i])
        return self.logits(x)


class GeneratedClassifier(nn.Module):
    """A generated CNN with its class names and preprocessing: ``clf(images)`` -> logits
    ``[B, classes]``, :meth:`predict` -> class names, :meth:`predict_proba` -> probabilities.
    ``images`` are anything :class:`Preprocessing` reads; ``ink`` overrides the default
    polarity of the classifier (the one given to ``fit``); ``precision`` is the compute dtype
    of its predictions (that of the model that fitted it; a saved file is float32)."""

    def __init__(self, cnn: nn.Module, class_names: list[Hashable],
                 preprocessing: Preprocessing, ink: str = "auto",
                 precision: Precision = FP32) -> None:
        super().__init__()
        self.cnn = cnn
        self.class_names = class_names
        self.preprocessing = preprocessing
        self.ink = ink
        self.precision = precision

    def forward(self, images: Images, ink: str | None = None) -> Tensor:
        x = self.preprocessing(images, ink or self.ink)
        with torch.no_grad(), self.precision.autocast(x.device):
            return self.cnn(x)

    def predict_proba(self, images: Images, ink: str | None = None) -> Tensor:
        return self(images, ink).softmax(-1)

    def predict(self, images: Images, ink: str | None = None) -> list[Hashable]:
        return [self.class_names[i] for i in self(images, ink).argmax(-1).tolist()]

    def metadata(self) -> dict[str, Any]:
        """What an exported file carries besides the CNN: the class names and the
        preprocessing (the CNN's input is ``[B, channels, image_size, image_size]``, ``x /
        128 - 1`` of the fitted pixels)."""
        check_saved_names(self.class_names, "an exported classifier")
        return {"format": METADATA_FORMAT, "class_names": self.class_names,
                "preprocessing": self.preprocessing.to_dict(), "ink": self.ink}

    def save(self, path: str | Path) -> None:
        """``.pt``: TorchScript (runs with plain torch; the metadata is the extra file
        :data:`METADATA_FILE`); ``.onnx``: ONNX (``pip install hypertransformer[onnx]``; the
        metadata is the model's ``metadata_props`` entry ``hypertransformer``).  The saved
        model takes preprocessed images ``[B, C, H, W]`` and returns the logits."""
        path = Path(path)
        extra = json.dumps(self.metadata())
        p = self.preprocessing
        example = torch.zeros(2, p.channels, p.image_size, p.image_size)
        if path.suffix == ".pt":
            with torch.no_grad(), warnings.catch_warnings():
                # The padding is computed from the image size, which the file fixes.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(self.cnn, example)
            torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: extra})
        elif path.suffix == ".onnx":
            export_onnx(self.cnn, example, path, extra)
        else:
            raise ValueError(f"cannot save {path}: use a .pt (TorchScript) or .onnx file name")


def export_onnx(cnn: nn.Module, example: Tensor, path: Path, metadata: str) -> None:
    """``cnn`` as ONNX at ``path`` (batch dimension dynamic) with ``metadata`` as its
    ``hypertransformer`` metadata property."""
    try:
        import onnx
    except ImportError as e:
        raise ValueError("saving ONNX needs the onnx extra: pip install "
                         "'hypertransformer[onnx]'") from e
    # Exported in a temporary folder: torch may write the weights beside the graph
    # (``.onnx.data``); the saved file holds both.
    with tempfile.TemporaryDirectory() as tmp:
        torch.onnx.export(cnn, (example,), f"{tmp}/cnn.onnx", input_names=["images"],
                          output_names=["logits"], verbose=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(f"{tmp}/cnn.onnx")
    proto.metadata_props.add(key="hypertransformer", value=metadata)
    onnx.save(proto, str(path))


def load_classifier(path: str | Path) -> GeneratedClassifier:
    """A classifier saved as TorchScript by :meth:`GeneratedClassifier.save`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} does not exist")
    extra = {METADATA_FILE: ""}
    try:
        cnn = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError and others for foreign files
        raise ValueError(f"{path} is not a TorchScript classifier saved by `hypertransformer "
                         f"generate` or clf.save(...pt) ({type(e).__name__})") from e
    try:
        meta = json.loads(extra[METADATA_FILE] or "{}")
        if meta.get("format") == METADATA_FORMAT:
            return GeneratedClassifier(cnn, list(meta["class_names"]),
                                       Preprocessing.from_dict(meta["preprocessing"]),
                                       meta["ink"]).eval()
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise ValueError(f"{path} is a TorchScript model without the class names and "
                     f"preprocessing of a generated classifier ({METADATA_FILE})")
