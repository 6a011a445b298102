"""One evaluation run: answer what is not answered yet, then score everything and write the results."""

import argparse
import logging
import os
from pathlib import Path

from .answers import AnswerFile
from .generation import check_images, generate_answers, load_model
from .report import format_table, write_results
from .tasks import TASKS, TaskResult

logger = logging.getLogger(__name__)


def model_id(model: str) -> str:
    """How the answers file records the model: the absolute path of a directory, else the Hub id."""
    return str(Path(model).resolve()) if os.path.isdir(model) else model


def run(args: argparse.Namespace) -> TaskResult:
    """Runs `args.task` as parsed by [`evaluation.cli`]: resumes from `<task>_answers.jsonl` in the output dir,
    generates the missing answers, scores, writes `<task>_results.json` and `<task>_summary.json`, prints a table."""
    task = TASKS[args.task]()
    questions = task.load_questions(args)
    output_dir = Path(args.output_dir)
    answer_file = AnswerFile(output_dir / f"{task.name}_answers.jsonl", model_id(args.model))
    if args.overwrite and answer_file.path.exists():
        logger.info("--overwrite: discarding %s", answer_file.path)
        answer_file.path.unlink()
    done = answer_file.load()
    pending = [question for question in questions if question.key not in done]
    unknown = len(set(done) - {question.key for question in questions})
    logger.info(
        "%s: %d questions, %d already answered in %s, %d to answer%s.", task.name, len(questions),
        len(questions) - len(pending), answer_file.path, len(pending),
        f" ({unknown} answers there are not in the question file and are ignored)" if unknown else "",
    )  # fmt: skip
    if pending:
        image_folder = getattr(args, "image_folder", None)
        check_images(pending, image_folder)  # before the (slow) model load
        model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
        generate_answers(
            model, processor, pending, image_folder, answer_file, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens or task.max_new_tokens, num_workers=args.num_workers,
            description=task.name,
        )  # fmt: skip
        done = answer_file.load()
    result = task.score(args, questions, {question.key: done[question.key] for question in questions})
    for path in write_results(output_dir, task, result):
        logger.info("wrote %s", path)
    print(f"\n{task.dataset_name} ({args.model})\n{format_table(result.table)}\n")
    return result
