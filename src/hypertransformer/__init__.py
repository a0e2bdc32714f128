"""HyperTransformer and Continual HyperTransformer for few-shot learning, in PyTorch."""

from hypertransformer import presets
from hypertransformer.config import Config
from hypertransformer.inference import load
from hypertransformer.model import GeneratedWeights, HyperTransformer

__all__ = ["Config", "GeneratedWeights", "HyperTransformer", "load", "presets"]
__version__ = "0.1.0"
