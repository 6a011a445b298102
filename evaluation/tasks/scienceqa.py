"""ScienceQA-IMG: LLaVA's `llava_test_CQM-A.json` multiple-choice questions, scored against `problems.json`."""

import argparse

from ..errors import EvaluationError
from ..files import read_json, require
from ..metrics.scienceqa import OPTIONS, parse_scienceqa_choice
from ..question import Question
from .base import Task, TaskResult, check_unique, percent

SINGLE_PRED_PROMPT = "\nAnswer with the option's letter from the given choices directly."


class ScienceQA(Task):
    name = "scienceqa"
    description = "ScienceQA: multiple-choice science questions; the paper reports accuracy on those with an image."
    dataset_name = "ScienceQA-IMG"
    dataset_type = "lmms-lab/ScienceQA"
    split = "test"
    max_new_tokens = 1024

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--question-file", required=True, help="llava_test_CQM-A.json (a JSON list of "
                            "{id, image?, conversations}).")  # fmt: skip
        parser.add_argument("--annotation-file", required=True, help="ScienceQA problems.json ({id: {choices, "
                            "answer}}).")  # fmt: skip
        parser.add_argument("--image-folder", help="ScienceQA test images.")
        parser.add_argument("--single-pred-prompt", action=argparse.BooleanOptionalAction, default=True,
                            help="Append the instruction to answer with the option's letter (the published "
                            "protocol; default on).")  # fmt: skip

    def load_questions(self, args: argparse.Namespace) -> list[Question]:
        records = read_json(args.question_file)
        if not isinstance(records, list):
            raise EvaluationError(f"{args.question_file}: expected a JSON list of questions.")
        questions = []
        for number, record in enumerate(records, start=1):
            where = f"{args.question_file}, question {number}"
            require(record, ("id", "conversations"), where)
            if not record["conversations"] or "value" not in record["conversations"][0]:
                raise EvaluationError(f"{where}: 'conversations' must start with a turn that has a 'value'.")
            # The original drops every <image> marker and re-inserts one in front when the sample has an image.
            text = record["conversations"][0]["value"].replace("<image>", "").strip()
            text += SINGLE_PRED_PROMPT if args.single_pred_prompt else ""
            questions.append(Question(record["id"], text, record.get("image")))
        return check_unique(questions, args.question_file)

    def score(self, args: argparse.Namespace, questions: list[Question], answers: dict[tuple, str]) -> TaskResult:
        problems = read_json(args.annotation_file)
        if not isinstance(problems, dict):
            raise EvaluationError(f"{args.annotation_file}: expected {{problem_id: {{choices, answer, ...}}}}.")
        outcomes = {"all": [], "image": []}
        parsed_failures = 0
        for question in questions:
            problem = problems.get(str(question.question_id))
            if problem is None:
                raise EvaluationError(f"{args.annotation_file}: no problem {question.question_id!r}.")
            require(problem, ("choices", "answer"), f"{args.annotation_file}, problem {question.question_id!r}")
            choice = parse_scienceqa_choice(answers[question.key], len(problem["choices"]))
            parsed_failures += choice is None
            correct = choice == problem["answer"]
            outcomes["all"].append(correct)
            if question.image is not None:
                outcomes["image"].append(correct)
        if not outcomes["image"]:
            raise EvaluationError(f"{args.question_file} has no question with an image: ScienceQA-IMG is undefined.")
        accuracy = {subset: sum(values) / len(values) for subset, values in outcomes.items()}
        metrics = {"accuracy": accuracy["image"], "accuracy_all": accuracy["all"]}
        details = {
            **metrics,
            "questions": len(outcomes["all"]),
            "questions_with_image": len(outcomes["image"]),
            "unparsed_answers": parsed_failures,
            "options": "".join(OPTIONS),
        }
        table = [
            ["subset", "questions", "accuracy"],
            ["IMG", str(len(outcomes["image"])), percent(accuracy["image"])],
            ["all", str(len(outcomes["all"])), percent(accuracy["all"])],
        ]
        return TaskResult(metrics=metrics, details=details, table=table)
