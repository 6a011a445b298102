"""Evaluation of TinyLLaVA checkpoints on the paper's benchmarks (POPE, ScienceQA-IMG, TextVQA, VQAv2, GQA, MME).

`tinyllava-eval <task> ...` answers the benchmark's questions with batched greedy generation (resumable), scores them
with the original protocol and writes a `{"results": [...]}` summary that `tinyllava-card --eval-results` puts into
the model card. The metric functions in `evaluation.metrics` are pure and usable on their own.
"""

from .errors import EvaluationError
from .question import Question
from .tasks import TASKS

__all__ = ["TASKS", "EvaluationError", "Question"]
