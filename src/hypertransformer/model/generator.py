"""One layer's weight generator: features → tokens → transformer → weight blocks (SPEC §3.3-3.5).

Sequence per task: ``[n weight tokens ; S sample tokens]``, no positional encoding, so the
generated weights do not depend on the order of the support samples.

- sample token: ``[label_emb(y) | F | zeros]`` with F = [local features | shared features];
- weight token j: ``[w_emb_j | content_j | zeros]``; ``content`` is zeros for the HT and is the
  door through which the Continual HT feeds the previously generated weights back in.

Token width E = d + max(B, |F|).  Output block j = Y[j, d:d+B].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.model.feature_extractors import LayerFeatureExtractor
from hypertransformer.model.transformer import Decoder, Encoder, TransformerParams


class WeightGenerator(nn.Module):
    def __init__(self, cfg: Config, *, num_tokens: int, block_size: int, in_channels: int,
                 in_size: int, local_features: int, feature_layers: int, kernel: int,
                 nonlinear_feature: bool, shared_features: int,
                 label_aligned: bool = False) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.num_tokens = num_tokens
        self.block_size = block_size
        self.embedding_dim = d
        self.feature_extractor = None
        if local_features > 0:
            self.feature_extractor = LayerFeatureExtractor(
                in_channels, in_size, local_features, feature_layers, kernel,
                nonlinear=nonlinear_feature, dropout=cfg.fe_dropout)
        local = self.feature_extractor.num_features if self.feature_extractor else 0
        self.num_features = local + shared_features
        if self.num_features == 0:
            raise ValueError("a generated layer needs features: set num_layerwise_features > 0 "
                             "or a shared_feature_extractor")
        self.separate = cfg.layerwise_generator == "separate"
        if cfg.layerwise_generator not in ("joint", "separate"):
            raise ValueError(f"unknown layerwise_generator {cfg.layerwise_generator!r}")
        self.width = d + (self.num_features if self.separate
                          else max(block_size, self.num_features))

        def params(width: int, skip_last: bool) -> TransformerParams:
            return TransformerParams.sized(
                width, key_query=cfg.lw_key_query_dim, value=cfg.lw_value_dim,
                inner=cfg.lw_inner_dim, num_layers=cfg.num_layers, heads=cfg.heads,
                dropout=cfg.dropout_rate, nonlinearity=cfg.transformer_nonlinearity,
                attention=cfg.transformer_activation, skip_last_nonlinearity=skip_last)

        skip = cfg.transformer_skip_last_nonlinearity
        self.decoder: Decoder | None = None
        if self.separate:  # samples through an encoder, weight tokens through a decoder
            self.encoder = Encoder(params(self.width, False))
            self.decoder = Decoder(params(d + block_size, skip), memory_width=self.width)
        elif cfg.use_decoder:  # encoder, then a decoder over the same sequence
            self.encoder = Encoder(params(self.width, False))
            self.decoder = Decoder(params(self.width, skip), memory_width=self.width)
        else:
            self.encoder = Encoder(params(self.width, skip))
        self.label_embedding = nn.Parameter(torch.randn(cfg.num_labels + 1, d))
        self.weight_embedding = nn.Parameter(torch.randn(num_tokens, d))
        if label_aligned:
            self._align_labels()

    @torch.no_grad()
    def _align_labels(self) -> None:
        """Weight token j := label token j, first key map := first query map: the attention
        logit of weight token j on a sample of class j starts at ~|label_emb|²·√(dh)/E, on
        other classes' samples at ~0, so the label matching is in place at step 0."""
        if self.separate or self.decoder is not None or self.num_tokens > len(
                self.label_embedding) - 1:
            raise ValueError("label_aligned_init needs the joint encoder-only generator "
                             "(layerwise_generator=joint, use_decoder=false) and one logits "
                             "token per class")
        self.weight_embedding.copy_(self.label_embedding[:self.num_tokens])
        first = self.encoder.layers[0].attention
        first.k.weight.copy_(first.q.weight)

    def features(self, x: Tensor, num_tasks: int, shared: Tensor | None) -> Tensor:
        """``x`` [T·S, C, H, W] (task-major) -> F [T, S, |F|]."""
        parts = []
        if self.feature_extractor is not None:
            parts.append(self.feature_extractor(x).view(num_tasks, -1,
                                                        self.feature_extractor.num_features))
        if shared is not None:
            parts.append(shared)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward(self, x: Tensor, labels: Tensor, mask: Tensor | None,
                shared: Tensor | None = None, content: Tensor | None = None) -> Tensor:
        """Weight blocks [T, n, B] for T tasks.

        x: support activations entering the layer, [T·S, C, H, W] task-major;
        labels [T, S] (N = unlabelled); mask [T, S] bool, True = present (None: all present);
        shared [T, S, Fs]; content [T, n, ≤B] written into the weight tokens (CHT).
        """
        t, s = labels.shape
        d, n = self.embedding_dim, self.num_tokens
        feats = self.features(x, t, shared)
        samples = torch.cat([self.label_embedding[labels], feats], dim=-1)
        weight_width = d + self.block_size if self.separate else self.width
        weights = self.weight_embedding.expand(t, n, d)
        if content is not None:
            weights = torch.cat([weights, content], dim=-1)
        weights = nn.functional.pad(weights, (0, weight_width - weights.shape[-1]))
        if self.separate:
            samples = nn.functional.pad(samples, (0, self.width - samples.shape[-1]))
            memory = self.encoder(samples, mask)
            assert self.decoder is not None
            out = self.decoder(weights, memory, None, mask)
        else:
            samples = nn.functional.pad(samples, (0, self.width - samples.shape[-1]))
            seq = torch.cat([weights, samples], dim=1)
            key_mask = None
            if mask is not None:
                key_mask = torch.cat([mask.new_ones(t, n), mask], dim=1)
            out = self.encoder(seq, key_mask)
            if self.decoder is not None:
                out = self.decoder(seq, out, key_mask, key_mask)
        return out[:, :n, d:d + self.block_size]
