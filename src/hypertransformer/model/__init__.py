"""The HyperTransformer (SPEC §3), the Continual HyperTransformer (SPEC §7) and its baselines
(MergedHT, ProtoNet); :func:`build_model` picks one by ``config.model_type``."""

from torch import nn

from hypertransformer.config import Config
from hypertransformer.model.cnn import LayerWeights
from hypertransformer.model.continual import (
    ContinualHyperTransformer,
    MergedHyperTransformer,
    TaskStream,
)
from hypertransformer.model.hypertransformer import GeneratedWeights, HyperTransformer, LossOutput
from hypertransformer.model.protonet import ProtoNet

MODEL_TYPES = {"ht": HyperTransformer, "cht": ContinualHyperTransformer,
               "merged_ht": MergedHyperTransformer, "protonet": ProtoNet}


def build_model(config: Config) -> nn.Module:
    """The model of ``config.model_type`` (ht | cht | merged_ht | protonet)."""
    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}; got "
                         f"{config.model_type!r}")
    return MODEL_TYPES[config.model_type](config)


__all__ = ["MODEL_TYPES", "ContinualHyperTransformer", "GeneratedWeights", "HyperTransformer",
           "LayerWeights", "LossOutput", "MergedHyperTransformer", "ProtoNet", "TaskStream",
           "build_model"]
