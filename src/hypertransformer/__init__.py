"""HyperTransformer and Continual HyperTransformer for few-shot learning, in PyTorch."""

from hypertransformer.config import Config

__all__ = ["Config"]
__version__ = "0.1.0"
