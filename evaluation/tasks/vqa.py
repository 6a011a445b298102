"""Short-answer VQA benchmarks in LLaVA's question files: TextVQA (val) and VQAv2 (test-dev or val)."""

import argparse

from ..errors import EvaluationError
from ..files import read_json, read_jsonl, require
from ..metrics.vqa import normalize_vqa_answer, vqa_accuracy
from ..question import Question
from .base import Task, TaskResult, percent

_QUESTION_HELP = "LLaVA question file (question_id, image, text per line)."


def _answer_strings(answers: list, where: str) -> list[str]:
    """Human answers as strings: TextVQA lists strings, the official VQA annotations list {"answer": ...}."""
    if not answers:
        raise EvaluationError(f"{where}: no answers.")
    return [answer["answer"] if isinstance(answer, dict) else answer for answer in answers]


def _accuracy_result(scores: list[float]) -> TaskResult:
    accuracy = sum(scores) / len(scores)
    return TaskResult(
        metrics={"accuracy": accuracy},
        details={"accuracy": accuracy, "questions": len(scores)},
        table=[["questions", "accuracy"], [str(len(scores)), percent(accuracy)]],
    )


def textvqa_question(prompt: str) -> str:
    """The bare question in a TextVQA prompt, lower-cased, as the original `eval_textvqa.py` recovers it.

    LLaVA's prompts are `"<question>\\nReference OCR token: ...\\nAnswer the question using a single word or phrase."`
    (or the same without OCR tokens); the question is the line that is not the OCR tokens or the instruction.
    """
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    return prompt.lower()


class TextVQA(Task):
    name = "textvqa"
    description = "TextVQA (val): questions about text in images; VQA accuracy with EvalAI answer normalisation."
    dataset_name = "TextVQA"
    dataset_type = "lmms-lab/textvqa"
    split = "validation"
    max_new_tokens = 128

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--question-file", required=True, help="llava_textvqa_val_v051_ocr.jsonl; " + _QUESTION_HELP
        )
        parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json ({data: [{question_id, "
                            "image_id, question, answers}]}).")  # fmt: skip
        parser.add_argument("--image-folder", required=True, help="TextVQA train_images.")

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        data = read_json(args.annotation_file)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise EvaluationError(f"{args.annotation_file}: expected {{'data': [...]}} (TextVQA format).")
        # LLaVA's question file stores the image id as question_id, so the original matches on (image, question).
        by_image_question, by_id = {}, {}
        for number, record in enumerate(data["data"], start=1):
            require(record, ("question", "answers"), f"{args.annotation_file}, data[{number - 1}]")
            if "image_id" in record:
                by_image_question[record["image_id"], record["question"].lower()] = record
            if "question_id" in record:
                by_id[record["question_id"]] = record
        scores = []
        for question in questions:
            record = by_image_question.get((question.question_id, textvqa_question(question.text)))
            record = record or by_id.get(question.question_id)
            if record is None:
                raise EvaluationError(
                    f"{args.annotation_file}: no annotation for question {question.question_id!r} "
                    f"({textvqa_question(question.text)!r})."
                )
            where = f"{args.annotation_file}, question {question.question_id!r}"
            scores.append(vqa_accuracy(answers[question.key], _answer_strings(record["answers"], where)))
        return _accuracy_result(scores)


class VQAv2(Task):
    name = "vqav2"
    description = ("VQAv2: writes the EvalAI submission for test-dev; with --annotation-file (val annotations) "
                   "also scores VQA accuracy locally.")  # fmt: skip
    dataset_name = "VQAv2"
    dataset_type = "lmms-lab/VQAv2"
    split = "validation"
    max_new_tokens = 128

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--question-file", required=True, help="llava_vqav2_mscoco_test-dev2015.jsonl (or a val "
                            "file); " + _QUESTION_HELP)  # fmt: skip
        parser.add_argument("--image-folder", required=True, help="COCO images (test2015 or val2014).")
        parser.add_argument("--annotation-file", help="Official VQA annotations ({annotations: [{question_id, "
                            "answers: [{answer}]}]}), for local scoring of a val split.")  # fmt: skip
        parser.add_argument("--submission-question-file", help="The full llava_vqav2_mscoco_test2015.jsonl: its "
                            "questions missing from the answers get '' in the submission, as EvalAI requires.")  # fmt: skip

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        submission = {q.question_id: normalize_vqa_answer(answers[q.key]) for q in questions}
        if args.submission_question_file:
            for number, record in enumerate(read_jsonl(args.submission_question_file), start=1):
                require(record, ("question_id",), f"{args.submission_question_file}, line {number}")
                submission.setdefault(record["question_id"], "")
        files = {
            "vqav2_submission.json": [{"question_id": qid, "answer": answer} for qid, answer in submission.items()]
        }
        if not args.annotation_file:
            return TaskResult(
                metrics={}, details={"questions": len(questions), "submission": "vqav2_submission.json"},
                table=[["questions", "accuracy"], [str(len(questions)), "submit vqav2_submission.json to EvalAI"]],
                files=files,
            )  # fmt: skip
        annotations = read_json(args.annotation_file)
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise EvaluationError(f"{args.annotation_file}: expected {{'annotations': [...]}} (official VQA format).")
        by_id = {record.get("question_id"): record for record in annotations["annotations"]}
        scores = []
        for question in questions:
            record = by_id.get(question.question_id)
            where = f"{args.annotation_file}, question {question.question_id!r}"
            if record is None:
                raise EvaluationError(f"{where}: not annotated.")
            require(record, ("answers",), where)
            scores.append(vqa_accuracy(answers[question.key], _answer_strings(record["answers"], where)))
        result = _accuracy_result(scores)
        result.files = files
        return result
