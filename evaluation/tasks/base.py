"""What every benchmark provides: its questions, its scoring, and how it appears in the model card."""

import argparse
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvaluationError
from ..files import read_jsonl, require
from ..question import Question


@dataclass
class TaskResult:
    """The outcome of scoring a task.

    Attributes:
        metrics: the headline numbers for `<task>_summary.json` and the model card (fractions, or MME scores).
        details: everything else worth keeping, written to `<task>_results.json`.
        table: the printed table, header row first.
        files: extra output files, name -> JSON data (e.g. a submission file for an evaluation server).
    """

    metrics: dict[str, float]
    details: dict
    table: list[list[str]]
    files: dict[str, object] = field(default_factory=dict)


class Task(ABC):
    """A benchmark: subclasses set the class attributes and implement the three methods."""

    name: str  # the CLI subcommand and the prefix of the output files
    description: str  # the CLI help
    dataset_name: str  # model-index dataset name
    dataset_type: str  # model-index dataset id (Hub)
    split: str
    max_new_tokens: int  # the original runner's default for this benchmark (reference §7)

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds the task's own arguments (question, annotation and image files) to its subcommand."""

    def load_questions(self, args: argparse.Namespace) -> list[Question]:
        """Reads the question file into [`Question`]s, in file order (by default a LLaVA-1.5 question JSONL)."""
        return read_llava_questions(args.question_file)

    @abstractmethod
    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        """Scores the answers (keyed by [`Question.key`], one per question) against the annotations."""


def read_llava_questions(path: str | Path, with_category: bool = False) -> list[Question]:
    """Questions from a LLaVA-style JSONL file: `question_id`, `image`, `text` (and `category`) per line."""
    keys = ("question_id", "image", "text") + (("category",) if with_category else ())
    questions = []
    for number, record in enumerate(read_jsonl(path), start=1):
        require(record, keys, f"{path}, question {number}")
        questions.append(Question(record["question_id"], record["text"], record["image"], record.get("category")))
    return check_unique(questions, path)


def check_unique(questions: list[Question], path: str | Path) -> list[Question]:
    """Raises if two questions share id and text (their answers could not be told apart).

    Questions are numbered from 1 in file order, as in the other errors about the question file.
    """
    if not questions:
        raise EvaluationError(f"{path} has no questions.")
    positions = defaultdict(list)
    for number, question in enumerate(questions, start=1):
        positions[question.key].append(number)
    repeated = [numbers for numbers in positions.values() if len(numbers) > 1]
    if repeated:
        first = questions[repeated[0][0] - 1]
        raise EvaluationError(
            f"{path}: {len(repeated)} question(s) appear more than once with the same id and text, so their answers "
            f"could not be told apart; e.g. id {first.question_id!r} is question "
            f"{' and '.join(map(str, repeated[0]))}."
        )
    return questions


def percent(value: float) -> str:
    """A fraction as a percentage with two decimals, the way papers report these benchmarks."""
    return f"{100 * value:.2f}"
