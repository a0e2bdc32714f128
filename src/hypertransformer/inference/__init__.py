"""The HyperTransformer on a user's own images (docs/use.md): ``load`` a trained model,
``fit`` a classifier to a few labelled images, classify, export."""

from hypertransformer.inference.classifier import (
    FewShotModel,
    GeneratedClassifier,
    GeneratedCNN,
    load_classifier,
)
from hypertransformer.inference.images import Preprocessing
from hypertransformer.inference.pretrained import PRETRAINED, available_pretrained, load

__all__ = ["PRETRAINED", "FewShotModel", "GeneratedCNN", "GeneratedClassifier", "Preprocessing",
           "available_pretrained", "load", "load_classifier"]
