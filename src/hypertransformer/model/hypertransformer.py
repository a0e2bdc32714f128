"""The HyperTransformer: support set in, CNN weights out, query logits (SPEC §3).

Usage::

    model = HyperTransformer(presets.load("omniglot_1shot"))
    logits = model(support_x, support_y, query_x)            # [T, Q, N]
    weights = model.generate(support_x, support_y)           # GeneratedWeights, T tasks
    logits = model.classify(query_x, weights)                # reuse the generated CNN

Shapes: support_x [T, S, C, H, W], support_y [T, S] (N = unlabelled), support_mask [T, S]
bool (True = present; removed samples are masked as attention keys), query_x [T, Q, C, H, W].
Order of computation (SPEC §3.7): shared features from the support images; for each layer ℓ
generate W_ℓ from the support activations X_{ℓ−1}, then X_ℓ = layer_ℓ(X_{ℓ−1}; W_ℓ) with
support BatchNorm statistics; finally the queries run through all layers with their own
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.data.sampler import EpisodeBatch
from hypertransformer.model.cnn import (
    ConvLayer,
    ConvSpec,
    LayerWeights,
    LogitsLayer,
    LogitsSpec,
    cnn_specs,
)
from hypertransformer.model.feature_extractors import SharedFeatureExtractor
from hypertransformer.model.generator import WeightGenerator
from hypertransformer.model.ops import batch_mask, from_grouped, grouped_to_batch, to_grouped


@dataclass
class GeneratedWeights:
    """What the transformer wrote for T tasks: ``layers[ℓ]`` holds layer ℓ's generated
    tensors (``None`` for an ordinarily trained layer); the last entry is the logits layer.
    ``blocks`` keeps each generator's raw output [T, n, B] by name ("conv1".., "logits"): the
    Continual HT feeds it back into the weight tokens of the next task."""

    layers: list[LayerWeights | None]
    shared_features: Tensor | None  # [T, S, shared_features_dim]
    blocks: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        for w in self.layers:
            if w is not None and w.weight is not None:
                return int(w.weight.shape[0])
        raise ValueError("no generated layer")


class Feedback(Protocol):
    """What the Continual HT changes in generation: ``content(name)`` is written into the
    weight tokens of generator ``name`` ([T, n, ≤B] or None), ``block(name, out)`` turns its
    output [T, n, B] into the layer's block (decoded into weights and fed back next task)."""

    def content(self, name: str) -> Tensor | None: ...

    def block(self, name: str, out: Tensor) -> Tensor: ...


@dataclass
class LossOutput:
    loss: Tensor  # scalar: mean over tasks of the total loss
    logits: Tensor  # [T, Q, N]
    accuracy: Tensor  # scalar, query accuracy
    terms: dict[str, float]  # the parts of the loss, for logging


def warmup_weights(step: int, warmup_steps: int, num_heads: int) -> tuple[list[float], float]:
    """(head weights, main weight) at ``step`` (SPEC §3.8): head i peaks at i·s, s = W/H."""
    if warmup_steps <= 0 or num_heads == 0:
        return [0.0] * num_heads, 1.0
    s = warmup_steps / num_heads
    heads = [max(0.0, 1.0 - abs(step - i * s) / s) for i in range(num_heads)]
    return heads, min(1.0, max(0.0, 1.0 + (step - warmup_steps) / s))


class HyperTransformer(nn.Module):
    """``num_outputs`` is the width of the generated last layer: the N logits by default; the
    Continual HT asks for a ``prototype_dim`` embedding instead."""

    def __init__(self, config: Config, num_outputs: int | None = None) -> None:
        super().__init__()
        cfg = self.config = config
        self.num_labels = cfg.num_labels
        specs = cnn_specs(cfg.cnn_model_name, image_size=cfg.image_size,
                          in_channels=cfg.image_channels, channels=cfg.default_num_channels,
                          kernel=cfg.kernel_size, stride=cfg.stride,
                          num_labels=num_outputs or cfg.num_labels)
        conv_specs = [s for s in specs if isinstance(s, ConvSpec)]
        logits_spec = specs[-1]
        assert isinstance(logits_spec, LogitsSpec)

        n_trained = abs(cfg.number_of_trained_cnn_layers)
        if n_trained > len(conv_specs):
            raise ValueError(f"number_of_trained_cnn_layers={cfg.number_of_trained_cnn_layers}"
                             f" but the CNN has {len(conv_specs)} conv layers")
        if cfg.number_of_trained_cnn_layers >= 0:
            generated = [i >= n_trained for i in range(len(conv_specs))]
        else:
            generated = [i < len(conv_specs) - n_trained for i in range(len(conv_specs))]

        self.shared_feature_extractor: SharedFeatureExtractor | None = None
        shared_dim = 0
        if cfg.shared_feature_extractor not in ("none", ""):
            self.shared_feature_extractor = SharedFeatureExtractor(
                cfg.shared_feature_extractor, cfg.image_channels, cfg.shared_features_dim,
                cfg.shared_feature_extractor_padding, cfg.shared_fe_dropout)
            shared_dim = cfg.shared_features_dim

        self.conv_layers = nn.ModuleList(
            ConvLayer(spec, generated=gen, allocation=cfg.lw_weight_allocation,
                      generate_bias=cfg.lw_generate_bias, generate_bn=cfg.lw_generate_bn,
                      add_trainable=cfg.add_trainable_weights, activation=cfg.cnn_activation)
            for spec, gen in zip(conv_specs, generated, strict=True))
        self.logits_layer = LogitsLayer(logits_spec, add_trainable=cfg.add_trainable_weights,
                                        dropout=cfg.cnn_dropout_rate)
        if cfg.logits_feature_extractor not in ("default", ""):
            raise ValueError("only logits_feature_extractor=default is implemented")

        # One generator per generated layer, keyed "conv1".."convL" and "logits".
        self.generators = nn.ModuleDict()
        for i, (layer, spec) in enumerate(zip(self.conv_layers, conv_specs, strict=True)):
            if not layer.generated:
                continue
            width = cfg.num_layerwise_features
            if width is None:
                width = max(spec.in_channels, spec.out_channels)
            self.generators[f"conv{i + 1}"] = WeightGenerator(
                cfg, num_tokens=layer.num_tokens, block_size=layer.block_size,
                in_channels=spec.in_channels, in_size=spec.in_size, local_features=width,
                feature_layers=2, kernel=spec.kernel, nonlinear_feature=False,
                shared_features=shared_dim)
        width = cfg.num_layerwise_features
        self.generators["logits"] = WeightGenerator(
            cfg, num_tokens=self.logits_layer.num_tokens,
            block_size=self.logits_layer.block_size, in_channels=logits_spec.in_channels,
            in_size=logits_spec.in_size,
            local_features=logits_spec.in_channels if width is None else width,
            feature_layers=1, kernel=3, nonlinear_feature=cfg.lw_use_nonlinear_feature,
            shared_features=shared_dim, label_aligned=cfg.label_aligned_init)

        # Warm-up heads (SPEC §3.8): trained GAP→linear heads on all conv layers but the last.
        self.warmup_heads = nn.ModuleList(
            nn.Linear(spec.out_channels, cfg.num_labels) for spec in conv_specs[:-1]
        ) if cfg.warmup_steps > 0 else nn.ModuleList()
        self.shared_head: nn.Linear | None = None
        if cfg.shared_head_weight > 0:
            if self.shared_feature_extractor is None:
                raise ValueError("shared_head_weight > 0 needs a shared_feature_extractor")
            if cfg.shared_head_classes <= 0:
                raise ValueError("shared_head_weight > 0 needs shared_head_classes (the number "
                                 "of classes in the training split)")
            self.shared_head = nn.Linear(shared_dim, cfg.shared_head_classes)

    # ---- generation ----------------------------------------------------------------------

    def _check(self, x: Tensor, name: str) -> None:
        c, size = self.config.image_channels, self.config.image_size
        if x.dim() != 5 or x.shape[2:] != (c, size, size):
            raise ValueError(f"{name} must be [T, M, {c}, {size}, {size}]; got "
                             f"{list(x.shape)}")

    def generate(self, support_x: Tensor, support_y: Tensor,
                 support_mask: Tensor | None = None,
                 feedback: Feedback | None = None) -> GeneratedWeights:
        """Generates every layer's weights from the support set of each of T tasks.

        ``feedback`` (the Continual HT) says, per generator, what its weight tokens carry and
        how its output becomes the layer's block (:class:`Feedback`); None: the HT's.
        """
        self._check(support_x, "support_x")
        t, s = support_y.shape
        if support_x.shape[:2] != (t, s):
            raise ValueError(f"support_x {list(support_x.shape[:2])} and support_y "
                             f"{list(support_y.shape)} disagree on [T, S]")
        shared = None
        if self.shared_feature_extractor is not None:
            shared = self.shared_feature_extractor(support_x, support_mask)
        if support_mask is not None and bool(support_mask.all()):
            # The same result with faster kernels (no masking in attention and BatchNorm).
            # Not for the shared extractor's BatchNorm above: F.batch_norm is less accurate
            # there (its channels are nearly constant on Omniglot's blank background).
            support_mask = None
        x = to_grouped(support_x)
        bn_mask = None if support_mask is None else support_mask.T
        layers: list[LayerWeights | None] = []
        generated: dict[str, Tensor] = {}

        def run(name: str, x: Tensor) -> Tensor:
            content = None if feedback is None else feedback.content(name)
            out = self.generators[name](grouped_to_batch(x, t), support_y, support_mask,
                                        shared, content)
            generated[name] = out if feedback is None else feedback.block(name, out)
            return generated[name]

        for i, layer in enumerate(self.conv_layers):
            w = layer.decode(run(f"conv{i + 1}", x)) if layer.generated else None
            layers.append(w)
            x = layer(x, w, t, bn_mask)
        layers.append(self.logits_layer.decode(run("logits", x)))
        return GeneratedWeights(layers, shared, generated)

    def run_cnn(self, x: Tensor, weights: GeneratedWeights,
                mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Runs images [T, M, C, H, W] through the generated CNNs: (logits [T, M, N], the
        conv layers' outputs in grouped layout).  ``mask`` [T, M] (True = present) keeps
        removed samples out of the BatchNorm statistics."""
        self._check(x, "query_x")
        t = x.shape[0]
        h = to_grouped(x)
        bn_mask = batch_mask(mask)
        outputs = []
        for layer, w in zip(self.conv_layers, weights.layers[:-1], strict=True):
            h = layer(h, w, t, bn_mask)
            outputs.append(h)
        last = weights.layers[-1]
        assert last is not None
        return self.logits_layer(h, last, t), outputs

    def classify(self, query_x: Tensor, weights: GeneratedWeights) -> Tensor:
        """Query logits [T, Q, N] from already generated weights."""
        return self.run_cnn(query_x, weights)[0]

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                support_mask: Tensor | None = None) -> Tensor:
        return self.classify(query_x, self.generate(support_x, support_y, support_mask))

    def batch_loss(self, batch: EpisodeBatch, step: int = 0) -> LossOutput:
        """:meth:`loss` of an :class:`EpisodeBatch` (the trainer's interface to every model)."""
        return self.loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                         support_mask=batch.support_mask, classes=batch.classes, step=step)

    # ---- losses --------------------------------------------------------------------------

    def loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
             support_mask: Tensor | None = None, classes: Tensor | None = None,
             step: int = 0) -> LossOutput:
        """The training loss of SPEC §3.8/§4 for T tasks (mean over tasks and queries)."""
        cfg = self.config
        weights = self.generate(support_x, support_y, support_mask)
        logits, conv_outputs = self.run_cnn(query_x, weights)
        t = logits.shape[0]

        def ce(lg: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1),
                                   label_smoothing=cfg.label_smoothing)

        main = ce(logits, query_y)
        terms = {"ce": main.item()}
        head_w, main_w = warmup_weights(step, cfg.warmup_steps, len(self.warmup_heads))
        total = main_w * main
        for i, (head, hw) in enumerate(zip(self.warmup_heads, head_w, strict=True)):
            head_loss = ce(head(from_grouped(conv_outputs[i], t).mean(dim=(-2, -1))), query_y)
            terms[f"warmup_head_{i}"] = head_loss.item()
            total = total + hw * head_loss
        reg = self.regularization(weights)
        if reg is not None:
            terms["regularization"] = reg.item()
            total = total + reg
        if self.shared_head is not None:
            if classes is None:
                raise ValueError("shared_head_weight > 0 needs the episodes' real class ids")
            assert weights.shared_features is not None
            labelled = support_y < cfg.num_labels
            real = classes.gather(1, support_y.clamp(max=cfg.num_labels - 1))
            shared_loss = F.cross_entropy(self.shared_head(weights.shared_features[labelled]),
                                          real[labelled])
            terms["shared_head"] = shared_loss.item()
            total = total + cfg.shared_head_weight * shared_loss
        accuracy = (logits.argmax(-1) == query_y).float().mean()
        return LossOutput(total, logits, accuracy, terms)

    def regularization(self, weights: GeneratedWeights) -> Tensor | None:
        """L2 on every kernel (``l2_reg_weight``) and the variation of generated weights
        relative to their trained residuals (``weight_variation_regularization``), per task
        and averaged over tasks."""
        cfg = self.config
        if cfg.l2_reg_weight <= 0 and cfg.weight_variation_regularization <= 0:
            return None
        t = weights.num_tasks
        total = torch.zeros(())
        layers: list[nn.Module] = [*self.conv_layers, self.logits_layer]
        for i, (layer, w) in enumerate(zip(layers, weights.layers, strict=True)):
            is_logits = i == len(layers) - 1
            generated = None if w is None else w.weight
            trained = layer.weight
            if cfg.l2_reg_weight > 0:
                kernel = generated if trained is None else (
                    trained.expand(t, *trained.shape) if generated is None else generated + (
                        trained))
                assert kernel is not None
                total = total + cfg.l2_reg_weight * kernel.square().flatten(1).sum(1).mean()
            if (cfg.weight_variation_regularization > 0 and not is_logits
                    and generated is not None and trained is not None):
                ratio = generated.square().flatten(1).sum(1) / (1e-8 + trained.square().sum())
                total = total + cfg.weight_variation_regularization * ratio.mean()
        return total
