"""Pure metric functions: answer parsing and scoring rules of each benchmark, with no file or model access."""

from .gqa import gqa_accuracy, gqa_prediction
from .mme import MME_CATEGORIES, mme_scores, parse_mme_answer
from .pope import parse_pope_answer, parse_pope_answer_strict, pope_metrics, pope_metrics_strict
from .scienceqa import parse_scienceqa_choice
from .vqa import normalize_vqa_answer, vqa_accuracy

__all__ = [
    "MME_CATEGORIES",
    "gqa_accuracy",
    "gqa_prediction",
    "mme_scores",
    "normalize_vqa_answer",
    "parse_mme_answer",
    "parse_pope_answer",
    "parse_pope_answer_strict",
    "parse_scienceqa_choice",
    "pope_metrics",
    "pope_metrics_strict",
    "vqa_accuracy",
]
