"""POPE (object hallucination): LLaVA's `llava_pope_test.jsonl` questions, scored per COCO split."""

import argparse
import logging
from pathlib import Path

from ..errors import EvaluationError
from ..files import read_jsonl, require
from ..metrics.pope import parse_pope_answer, parse_pope_answer_strict, pope_metrics, pope_metrics_strict
from ..question import Question
from .base import Task, TaskResult, percent, read_llava_questions

logger = logging.getLogger(__name__)

SPLITS = ("adversarial", "popular", "random")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


class Pope(Task):
    name = "pope"
    description = "POPE: yes/no object-hallucination questions on COCO (adversarial, popular, random)."
    dataset_name = "POPE"
    dataset_type = "lmms-lab/POPE"
    split = "test"
    max_new_tokens = 128

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--question-file", required=True, help="llava_pope_test.jsonl (question_id, image, "
                            "text, category).")  # fmt: skip
        parser.add_argument("--annotation-dir", required=True, help="Folder with coco_pope_{adversarial,popular,"
                            "random}.json (one JSON per line: question_id, image, text, label).")  # fmt: skip
        parser.add_argument("--image-folder", required=True, help="COCO val2014 images.")
        parser.add_argument("--strict", action="store_true", help="lmms-eval scoring: only an exact 'yes'/'no' "
                            "answer counts (default: the original first-sentence rule).")  # fmt: skip

    def load_questions(self, args: argparse.Namespace) -> list[Question]:
        return read_llava_questions(args.question_file, with_category=True)

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        parse, metrics = (parse_pope_answer_strict, pope_metrics_strict) if args.strict else (
            parse_pope_answer, pope_metrics)  # fmt: skip
        splits = {}
        for split in SPLITS:
            path = Path(args.annotation_dir) / f"coco_pope_{split}.json"
            if not path.is_file():
                logger.warning("%s not found: the %s split is not scored.", path, split)
                continue
            split_questions = [q for q in questions if q.category == split]
            labels = _aligned_labels(path, split_questions)
            try:
                result = metrics([parse(answers[q.key]) for q in split_questions], labels)
            except ValueError as error:  # e.g. a label other than yes/no
                raise EvaluationError(f"{path}: {error}") from error
            splits[split] = {**result, "questions": len(split_questions)}
        if not splits:
            raise EvaluationError(f"No coco_pope_{{{','.join(SPLITS)}}}.json in {args.annotation_dir}.")
        unscored = sum(question.category not in splits for question in questions)
        if unscored:
            logger.warning("%d questions have a category without annotations (%s) and are not scored.", unscored,
                           sorted({str(q.category) for q in questions} - set(splits)))  # fmt: skip
        mean = {name: sum(result[name] for result in splits.values()) / len(splits) for name in METRICS}
        table = [["split", "questions", *METRICS]]
        for split, result in splits.items():
            table.append([split, str(result["questions"]), *(percent(result[name]) for name in METRICS)])
        table.append(["mean", str(sum(r["questions"] for r in splits.values())), *(percent(mean[n]) for n in METRICS)])
        details = {"mode": "strict" if args.strict else "original", "splits": splits, "mean": mean}
        return TaskResult(metrics=mean, details=details, table=table)


def _aligned_labels(path: Path, questions: list[Question]) -> list[str]:
    """The labels of one split, matched to its questions by order as the original does (the annotation files number
    their questions from 1 in every split, so ids cannot be used); images are compared to catch a misalignment."""
    records = read_jsonl(path)
    if len(records) != len(questions):
        raise EvaluationError(
            f"{path} has {len(records)} labels but the question file has {len(questions)} questions with category "
            f"{path.stem.removeprefix('coco_pope_')!r}."
        )
    for number, (record, question) in enumerate(zip(records, questions), start=1):
        require(record, ("label",), f"{path}, line {number}")
        if "image" in record and question.image is not None and Path(record["image"]).name != Path(question.image).name:
            raise EvaluationError(
                f"{path}, line {number}: image {record['image']!r}, but question {question.question_id!r} in the same "
                f"position asks about {question.image!r}; the files are not in the same order."
            )
    return [record["label"] for record in records]
