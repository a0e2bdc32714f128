"""Evaluation (SPEC §5), learning-curve plots and the offline demo."""

from hypertransformer.evaluation.evaluator import EvalResult, confidence_interval, evaluate_model

__all__ = ["EvalResult", "confidence_interval", "evaluate_model"]
