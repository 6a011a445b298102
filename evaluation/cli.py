"""`tinyllava-eval <task> --model DIR ... --output-dir DIR`: the paper's benchmarks, batched and resumable."""

import argparse
import logging
import sys

from .errors import EvaluationError
from .tasks import TASKS

DTYPES = ("float32", "bfloat16", "float16", "auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllava-eval",
        description="Evaluate a TinyLLaVA checkpoint with the original protocol: batched greedy answers appended to "
        "<output-dir>/<task>_answers.jsonl (a rerun resumes), then <task>_results.json and <task>_summary.json "
        "(for `tinyllava-card --eval-results`).",
    )
    subparsers = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, task in TASKS.items():
        sub = subparsers.add_parser(name, help=task.description, description=task.description)
        sub.add_argument("--model", required=True, help="Checkpoint directory (or Hub id).")
        sub.add_argument("--output-dir", required=True, help="Where answers and results go.")
        task.add_arguments(sub)
        sub.add_argument("--batch-size", type=int, default=8, help="Questions per generate() call (default 8).")
        sub.add_argument("--max-new-tokens", type=int, help=f"Default: {task.max_new_tokens}, as the original.")
        sub.add_argument("--dtype", choices=DTYPES, default="float32", help="Model weights dtype (default "
                         "float32, as the original evaluation ran).")  # fmt: skip
        sub.add_argument("--device", help="Default: cuda if available, else cpu.")
        sub.add_argument("--num-workers", type=int, default=2, help="Image-loading worker processes (default 2).")
        sub.add_argument("--overwrite", action="store_true", help="Discard existing answers instead of resuming.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("batch_size", "max_new_tokens"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1.")
    if args.num_workers < 0:
        parser.error("--num-workers must be at least 0.")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .runner import run  # after argument parsing, so that --help does not import torch and transformers

    try:
        run(args)
    except EvaluationError as error:
        print(f"tinyllava-eval {args.task}: error: {error}", file=sys.stderr)
        return 2
    return 0
