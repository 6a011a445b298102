"""GQA (testdev-balanced): LLaVA's question file, exact-match accuracy against the official questions file."""

import argparse

from ..errors import EvaluationError
from ..files import read_json, require
from ..metrics.gqa import gqa_accuracy, gqa_prediction
from ..question import Question
from .base import Task, TaskResult, percent


class GQA(Task):
    name = "gqa"
    description = "GQA testdev-balanced: compositional questions; exact-match accuracy (binary and open)."
    dataset_name = "GQA"
    dataset_type = "lmms-lab/GQA"
    split = "testdev_balanced"
    max_new_tokens = 128

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--question-file", required=True, help="llava_gqa_testdev_balanced.jsonl (question_id, "
                            "image, text per line).")  # fmt: skip
        parser.add_argument("--annotation-file", required=True, help="Official testdev_balanced_questions.json "
                            "({question_id: {answer, types}}).")  # fmt: skip
        parser.add_argument("--image-folder", required=True, help="GQA images.")

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        annotations = read_json(args.annotation_file)
        if not isinstance(annotations, dict):
            raise EvaluationError(f"{args.annotation_file}: expected {{question_id: {{answer, ...}}}}.")
        predictions, gold, types = [], [], []
        for question in questions:
            record = annotations.get(str(question.question_id))
            where = f"{args.annotation_file}, question {question.question_id!r}"
            if record is None:
                raise EvaluationError(f"{where}: not annotated.")
            require(record, ("answer",), where)
            predictions.append(gqa_prediction(answers[question.key]))
            gold.append(record["answer"])
            types.append(record.get("types", {}).get("structural"))
        metrics = gqa_accuracy(predictions, gold, types)
        table = [["questions", *metrics], [str(len(questions)), *(percent(value) for value in metrics.values())]]
        # The official eval.py reads this file, for its consistency, validity and plausibility metrics.
        files = {"gqa_predictions.json": [{"questionId": q.question_id, "prediction": p}
                                          for q, p in zip(questions, predictions)]}  # fmt: skip
        return TaskResult(metrics=metrics, details={**metrics, "questions": len(questions)}, table=table, files=files)
