"""Feature extractors that turn support activations into per-sample vectors (SPEC §3.1, §3.2).

Both are ordinary trained modules shared by all tasks; they take ``[B, C, H, W]`` and return
``[B, F]``.  Convolutions use TensorFlow's padding rules ("same" pads the extra row/column at
the bottom/right when the total padding is odd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.model.ops import batch_norm, conv_output_size, pad_same, to_grouped


class Conv2dTF(nn.Conv2d):
    """A convolution with TF "same"/"valid" padding (bias on, PyTorch default init)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 padding: str) -> None:
        super().__init__(in_channels, out_channels, kernel, stride)
        if padding not in ("same", "valid"):
            raise ValueError(f"unknown padding {padding!r}; use same or valid")
        self.tf_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_padding == "valid":
            return super().forward(x)
        x, padding = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, padding)


SHARED_EXTRACTORS = {"2-layer": (2, False), "3-layer": (3, False), "4-layer": (4, False),
                     "2-layer-bn": (2, True), "3-layer-bn": (3, True)}


class SharedFeatureExtractor(nn.Module):
    """``layers`` 3×3 convs (stride 2 but the last), each ReLU (then BatchNorm with batch
    statistics in the ``-bn`` variants), then global average pooling."""

    def __init__(self, name: str, in_channels: int, dim: int, padding: str,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if name not in SHARED_EXTRACTORS:
            raise ValueError(f"unknown shared_feature_extractor {name!r}; use none or one of "
                             f"{', '.join(SHARED_EXTRACTORS)}")
        layers, use_bn = SHARED_EXTRACTORS[name]
        self.convs = nn.ModuleList(
            Conv2dTF(in_channels if i == 0 else dim, dim, 3, 2 if i < layers - 1 else 1, padding)
            for i in range(layers))
        # BatchNorm γ, β per conv; statistics always from the current task's batch.
        self.bn_weight = nn.Parameter(torch.ones(layers, dim)) if use_bn else None
        self.bn_bias = nn.Parameter(torch.zeros(layers, dim)) if use_bn else None
        self.dropout = nn.Dropout(dropout)
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Support images [T, S, C, H, W] -> [T, S, dim]; ``mask`` [T, S] keeps removed
        samples out of the BatchNorm statistics."""
        t, s = x.shape[:2]
        x = x.flatten(0, 1)
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if self.bn_weight is not None and self.bn_bias is not None:
                g = batch_norm(to_grouped(x.unflatten(0, (t, s))), self.bn_weight[i].repeat(t),
                               self.bn_bias[i].repeat(t), None if mask is None else mask.T)
                x = g.view(s, t, *x.shape[1:]).transpose(0, 1).flatten(0, 1)
        return self.dropout(x.mean(dim=(-2, -1))).view(t, s, -1)


class LayerFeatureExtractor(nn.Module):
    """The per-layer ("local") feature extractor of SPEC §3.2.

    ``layers`` valid k×k convs of width ``dim`` (stride 2 but the last).  If the input is
    smaller than k, k shrinks to the input size and every stride is 1.  A conv is skipped
    (and so are the rest) when the current map is smaller than k.  The output concatenates
    each applied conv's spatial mean, pre-activation (post-ReLU with ``nonlinear``); the next
    conv consumes the ReLU.
    """

    def __init__(self, in_channels: int, in_size: int, dim: int, layers: int, kernel: int,
                 nonlinear: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        stride = 2
        if in_size < kernel:
            kernel, stride = in_size, 1
        self.kernel = kernel
        self.nonlinear = nonlinear
        convs = []
        size = in_size
        for i in range(layers):
            if size < kernel:
                break
            s = stride if i < layers - 1 else 1
            convs.append(nn.Conv2d(in_channels if i == 0 else dim, dim, kernel, s))
            size = conv_output_size(size, kernel, s, "valid")
        self.convs = nn.ModuleList(convs)
        self.num_features = dim * len(convs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        features = []
        for conv in self.convs:
            pre = conv(x)
            x = F.relu(pre)
            features.append((x if self.nonlinear else pre).mean(dim=(-2, -1)))
        return self.dropout(torch.cat(features, dim=-1))
