"""Evaluation (SPEC §5), learning-curve plots and the offline demo."""

from hypertransformer.evaluation.evaluator import EvalResult, evaluate_model
from hypertransformer.evaluation.protocol import confidence_interval

__all__ = ["EvalResult", "confidence_interval", "evaluate_model"]
