"""MME: LLaVA's `llava_mme.jsonl` yes/no questions, scored against the benchmark's own answer files."""

import argparse
import logging
from pathlib import Path

from ..errors import EvaluationError
from ..metrics.mme import MME_CATEGORIES, mme_scores, parse_mme_answer
from ..question import Question
from .base import Task, TaskResult, percent

logger = logging.getLogger(__name__)

SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_NO = " Please answer yes or no."


class MME(Task):
    name = "mme"
    description = "MME: yes/no perception and cognition questions; accuracy, acc+ and the summed scores."
    dataset_name = "MME"
    dataset_type = "lmms-lab/MME"
    split = "test"
    max_new_tokens = 128

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--question-file", required=True, help="llava_mme.jsonl (question_id "
                            "'<category>/<image>', image, text per line).")  # fmt: skip
        parser.add_argument("--image-folder", required=True, help="MME_Benchmark_release_version.")
        parser.add_argument("--annotation-dir", help="Where the per-image '<question>\\t<answer>' .txt files are "
                            "(default: the image folder, as MME ships them).")  # fmt: skip

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        ground_truth = _GroundTruth(Path(args.annotation_dir or args.image_folder))
        items = []
        for question in questions:
            category = str(question.question_id).split("/")[0]
            label = ground_truth.label(category, Path(str(question.question_id)).stem, question)
            items.append((category, question.image, parse_mme_answer(answers[question.key]), label.lower()))
        try:
            scores = mme_scores(items)
        except ValueError as error:  # an answer file with a label other than yes/no
            raise EvaluationError(f"{ground_truth.root}: {error}") from error
        missing = [name for names in MME_CATEGORIES.values() for name in names if name not in scores["categories"]]
        if missing:
            logger.warning("MME categories without questions, left out of the totals: %s", ", ".join(missing))
        table = [["category", "questions", "accuracy", "acc+", "score"]]
        for name, result in scores["categories"].items():
            table.append([name, str(result["questions"]), percent(result["accuracy"]),
                          percent(result["accuracy_plus"]), f"{result['score']:.2f}"])  # fmt: skip
        table += [[total, "", "", "", f"{scores[total]:.2f}"] for total in MME_CATEGORIES]
        metrics = {total: scores[total] for total in MME_CATEGORIES}
        return TaskResult(metrics=metrics, details={**scores, "missing_categories": missing}, table=table)


class _GroundTruth:
    """MME's answer files: `<category>/questions_answers_YN/<image>.txt` for the categories that keep their images
    in `<category>/images/`, else `<category>/<image>.txt`; each line is `question<TAB>answer`."""

    def __init__(self, root: Path):
        self.root = root
        self._files: dict[tuple[str, str], dict[str, str]] = {}

    def _answers(self, category: str, stem: str) -> dict[str, str]:
        if (category, stem) not in self._files:
            folder = self.root / category
            path = (folder / "questions_answers_YN" if (folder / "images").is_dir() else folder) / f"{stem}.txt"
            if not path.is_file():
                raise EvaluationError(f"MME answer file not found: {path}")
            answers = {}
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    parts = line.strip().split("\t")
                    if len(parts) != 2:
                        raise EvaluationError(f"{path}, line {number}: expected 'question<TAB>answer'.")
                    answers[parts[0]] = parts[1]
            self._files[category, stem] = answers
        return self._files[category, stem]

    def label(self, category: str, stem: str, question: Question) -> str:
        """The answer to `question`, matched on its text as LLaVA's `convert_answer_to_mme.py` does."""
        answers = self._answers(category, stem)
        text = question.text.replace(SHORT_ANSWER, "").strip() if SHORT_ANSWER in question.text else question.text
        candidates = [text] if YES_NO.strip() in text else [text + YES_NO, text + " " + YES_NO]
        for candidate in candidates:
            if candidate in answers:
                return answers[candidate]
        raise EvaluationError(
            f"No answer for question {question.question_id!r} ({text!r}) in MME's {category}/{stem}.txt."
        )
