"""The HyperTransformer model (SPEC §3)."""

from hypertransformer.model.cnn import LayerWeights
from hypertransformer.model.hypertransformer import GeneratedWeights, HyperTransformer, LossOutput

__all__ = ["GeneratedWeights", "HyperTransformer", "LayerWeights", "LossOutput"]
