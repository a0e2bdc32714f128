"""The HyperTransformer on a user's own images (docs/use.md): ``load`` a trained model,
``fit`` a classifier to a few labelled images, classify, export; or, with a Continual HT,
learn task after task (``load(...).stream()``)."""

from hypertransformer.inference.classifier import (
    FewShotModel,
    GeneratedClassifier,
    GeneratedCNN,
    load_classifier,
)
from hypertransformer.inference.images import Preprocessing
from hypertransformer.inference.pretrained import (
    PRETRAINED,
    available_pretrained,
    load,
    load_few_shot,
)
from hypertransformer.inference.stream import ContinualModel, Stream, load_stream

__all__ = ["PRETRAINED", "ContinualModel", "FewShotModel", "GeneratedCNN", "GeneratedClassifier",
           "Preprocessing", "Stream", "available_pretrained", "load", "load_classifier",
           "load_few_shot", "load_stream"]
