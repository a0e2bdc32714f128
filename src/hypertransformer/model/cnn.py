"""The generated CNN (SPEC §3.5, §3.6), applied to many tasks at once.

Activations of T tasks travel in the grouped layout of :mod:`hypertransformer.model.ops`
``[M, T·C, H, W]``: a task's generated convolution is one grouped convolution (``groups=T``)
and BatchNorm uses per-task, per-channel batch statistics.  BatchNorm never uses running
averages, also not under ``model.eval()``.

Weight decoding (``output`` allocation, the authors' layout): token o holds output filter o as
``o[:k·k·C_in]`` in (kh, kw, C_in) order, then its bias (``lw_generate_bias``), then its BN γ, β
(``lw_generate_bn``).  ``spatial``: token h·k+w holds ``kernel[h, w]`` as (C_in, C_out).
Logits: token j holds column j of the dense kernel over the flattened (C, H, W) input, then
bias j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.model.ops import batch_norm, conv_output_size, from_grouped, pad_same
from hypertransformer.precision import fp32


def cnn_activation(x: Tensor, name: str) -> Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "lrelu":
        return F.leaky_relu(x, 0.01)
    raise ValueError(f"unknown cnn_activation {name!r}; use relu or lrelu")


@dataclass
class LayerWeights:
    """One layer's weights for T tasks; ``None`` where the layer uses its trained parameter.

    conv: weight [T, C_out, C_in, k, k], bias/gamma/beta [T, C_out];
    logits: weight [T, F, N] (F = flattened input size), bias [T, N].
    """

    weight: Tensor | None = None
    bias: Tensor | None = None
    gamma: Tensor | None = None
    beta: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: str
    maxpool: int  # 0 = none
    in_size: int

    @property
    def out_size(self) -> int:
        size = conv_output_size(self.in_size, self.kernel, self.stride, self.padding)
        return size // self.maxpool if self.maxpool else size


@dataclass(frozen=True)
class LogitsSpec:
    in_channels: int
    in_size: int
    num_labels: int
    flatten: bool  # maxpool-4-layer flattens; the GAP models average

    @property
    def in_features(self) -> int:
        return self.in_channels * self.in_size ** 2 if self.flatten else self.in_channels


def cnn_specs(model_name: str, *, image_size: int, in_channels: int, channels: int,
              kernel: int, stride: int, num_labels: int) -> list[ConvSpec | LogitsSpec]:
    """The layer geometry of ``cnn_model_name`` (maxpool-4-layer | 3-layer | 4-layer)."""
    if model_name == "maxpool-4-layer":
        depth, padding, maxpool, flatten = 4, "same", 2, True
    elif model_name in ("3-layer", "4-layer"):
        depth, padding, maxpool, flatten = int(model_name[0]), "valid", 0, False
    else:
        raise ValueError(f"unknown cnn_model_name {model_name!r}; use maxpool-4-layer, "
                         "3-layer or 4-layer")
    specs: list[ConvSpec | LogitsSpec] = []
    size, c_in = image_size, in_channels
    for i in range(depth):
        spec = ConvSpec(c_in, channels, kernel, stride, padding, maxpool, size)
        if spec.out_size < 1:
            raise ValueError(f"{model_name}: images of {image_size} px shrink to nothing at "
                             f"conv layer {i + 1}; use larger images or fewer layers")
        specs.append(spec)
        size, c_in = spec.out_size, channels
    specs.append(LogitsSpec(c_in, size, num_labels, flatten))
    return specs


class ConvLayer(nn.Module):
    """conv (generated or trained) → activation → [maxpool] → BatchNorm (batch statistics)."""

    def __init__(self, spec: ConvSpec, *, generated: bool, allocation: str,
                 generate_bias: bool, generate_bn: bool, add_trainable: bool,
                 activation: str) -> None:
        super().__init__()
        self.spec = spec
        self.generated = generated
        self.activation = activation
        self.allocation = allocation
        self.generate_bias = generated and generate_bias
        self.generate_bn = generated and generate_bn
        if generated and allocation not in ("output", "spatial"):
            raise ValueError(f"unknown lw_weight_allocation {allocation!r}; use output or spatial")
        if generated and allocation == "spatial" and (generate_bias or generate_bn):
            raise ValueError("lw_generate_bias / lw_generate_bn need lw_weight_allocation=output")
        k, c_in, c_out = spec.kernel, spec.in_channels, spec.out_channels
        # Trained tensors: the whole kernel when not generated, a residual with
        # add_trainable_weights (SPEC §3.6), and BN γ/β unless generated.
        self.weight = None
        if not generated or add_trainable:
            self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
            nn.init.xavier_uniform_(self.weight)
        self.bias = (nn.Parameter(torch.zeros(c_out))
                     if self.generate_bias and add_trainable else None)
        shared_bn = not self.generate_bn or add_trainable
        self.gamma = nn.Parameter(torch.ones(c_out)) if shared_bn else None
        self.beta = nn.Parameter(torch.zeros(c_out)) if shared_bn else None
        if self.generate_bn and add_trainable:  # generated γ is a residual around 0
            self.gamma = nn.Parameter(torch.zeros(c_out))

    @property
    def num_tokens(self) -> int:
        return self.spec.kernel ** 2 if self.allocation == "spatial" else self.spec.out_channels

    @property
    def kernel_size(self) -> int:
        """Values of one token that belong to the kernel."""
        k, c_in, c_out = self.spec.kernel, self.spec.in_channels, self.spec.out_channels
        return c_in * c_out if self.allocation == "spatial" else k * k * c_in

    @property
    def block_size(self) -> int:
        return self.kernel_size + int(self.generate_bias) + 2 * int(self.generate_bn)

    def decode(self, blocks: Tensor) -> LayerWeights:
        """Transformer outputs [T, n, ≥B] -> this layer's generated weights."""
        t = blocks.shape[0]
        k, c_in, c_out = self.spec.kernel, self.spec.in_channels, self.spec.out_channels
        kernel = blocks[..., : self.kernel_size]
        if self.allocation == "output":  # [T, C_out, (kh, kw, C_in)] -> [T, C_out, C_in, kh, kw]
            weight = kernel.reshape(t, c_out, k, k, c_in).permute(0, 1, 4, 2, 3)
        else:  # [T, (kh, kw), (C_in, C_out)] -> [T, C_out, C_in, kh, kw]
            weight = kernel.reshape(t, k, k, c_in, c_out).permute(0, 4, 3, 1, 2)
        out = LayerWeights(weight=weight)
        offset = self.kernel_size
        if self.generate_bias:
            out.bias = blocks[..., offset]
            offset += 1
        if self.generate_bn:
            out.gamma, out.beta = blocks[..., offset], blocks[..., offset + 1]
        return out

    def effective(self, w: LayerWeights | None, num_tasks: int) -> LayerWeights:
        """Generated tensors plus trained residuals; trained tensors expanded over tasks."""
        w = w or LayerWeights()

        def combine(generated: Tensor | None, trained: Tensor | None) -> Tensor | None:
            if generated is None:
                return None if trained is None else trained.expand(num_tasks, *trained.shape)
            return generated if trained is None else generated + trained

        return LayerWeights(combine(w.weight, self.weight), combine(w.bias, self.bias),
                            combine(w.gamma, self.gamma), combine(w.beta, self.beta))

    def forward(self, x: Tensor, w: LayerWeights | None, num_tasks: int,
                mask: Tensor | None = None) -> Tensor:
        """``x`` [M, T·C_in, H, W] -> [M, T·C_out, H', W']; ``mask`` [M, T] (True = present)
        keeps removed samples out of the BatchNorm statistics."""
        s = self.spec
        e = self.effective(w, num_tasks)
        assert e.weight is not None and e.gamma is not None and e.beta is not None
        kernel = e.weight.reshape(num_tasks * s.out_channels, s.in_channels, s.kernel, s.kernel)
        bias = None if e.bias is None else e.bias.reshape(-1)
        x = conv_block(x, kernel, bias, s, self.activation, num_tasks)
        return batch_norm(x, e.gamma.reshape(-1), e.beta.reshape(-1), mask)


def conv_block(x: Tensor, kernel: Tensor, bias: Tensor | None, spec: ConvSpec, activation: str,
               groups: int = 1) -> Tensor:
    """A conv layer up to its BatchNorm: conv (TF padding) → [maxpool] → activation, on
    ``x`` [M, groups·C_in, H, W] with ``kernel`` [groups·C_out, C_in, k, k]."""
    padding = (0, 0)
    if spec.padding == "same":
        x, padding = pad_same(x, spec.kernel, spec.stride)
    x = F.conv2d(x, kernel, bias, stride=spec.stride, padding=padding, groups=groups)
    # max-pooling commutes with the (monotonic) activation: pool first, on 4x less data
    if spec.maxpool:
        x = F.max_pool2d(x, spec.maxpool)
    return cnn_activation(x, activation)


def last_features(x: Tensor, num_tasks: int, flatten: bool) -> Tensor:
    """The last conv layer's output [M, T·C, H, W] as per-task features [T, M, F]: flattened
    (C, H, W) for ``maxpool-4-layer``, else averaged over H, W."""
    x = from_grouped(x, num_tasks)
    return x.flatten(2) if flatten else x.mean(dim=(-2, -1))


class LogitsLayer(nn.Module):
    """flatten (or global average pool) → [dropout] → dense logits, generated per task."""

    def __init__(self, spec: LogitsSpec, *, add_trainable: bool, dropout: float) -> None:
        super().__init__()
        self.spec = spec
        n = spec.in_features
        self.weight = nn.Parameter(torch.zeros(n, spec.num_labels)) if add_trainable else None
        self.bias = nn.Parameter(torch.zeros(spec.num_labels)) if add_trainable else None
        self.dropout = nn.Dropout(dropout)

    num_tokens = property(lambda self: self.spec.num_labels)
    block_size = property(lambda self: self.spec.in_features + 1)

    def decode(self, blocks: Tensor) -> LayerWeights:
        n = self.spec.in_features
        return LayerWeights(weight=blocks[..., :n].transpose(1, 2), bias=blocks[..., n])

    def features(self, x: Tensor, num_tasks: int) -> Tensor:
        """``x`` [M, T·C, H, W] -> the logits layer's input [T, M, F]."""
        return last_features(x, num_tasks, self.spec.flatten)

    def effective(self, w: LayerWeights) -> tuple[Tensor, Tensor]:
        """(weight [T, F, N], bias [T, N]): the generated tensors plus trained residuals."""
        assert w.weight is not None and w.bias is not None
        weight = w.weight if self.weight is None else w.weight + self.weight
        bias = w.bias if self.bias is None else w.bias + self.bias
        return weight, bias

    @fp32  # the logits (or embedding) in float32 under bf16 autocast
    def forward(self, x: Tensor, w: LayerWeights, num_tasks: int) -> Tensor:
        weight, bias = self.effective(w)
        h = self.dropout(self.features(x, num_tasks))
        return torch.baddbmm(bias.unsqueeze(1), h, weight)
