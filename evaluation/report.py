"""Result files and the printed table."""

from pathlib import Path

from .files import write_json
from .tasks import Task, TaskResult


def summary(task: Task, result: TaskResult) -> dict:
    """The `{"results": [...]}` summary that `tinyllava-card --eval-results` merges into the model card.

    A run without headline metrics (VQAv2 test-dev, scored by the EvalAI server) gives an empty list.
    """
    if not result.metrics:
        return {"results": []}
    entry = {"task": task.name, "dataset_name": task.dataset_name, "dataset_type": task.dataset_type,
             "split": task.split, "metrics": result.metrics}  # fmt: skip
    return {"results": [entry]}


def write_results(output_dir: Path, task: Task, result: TaskResult) -> list[Path]:
    """Writes `<task>_results.json` (details), `<task>_summary.json` and the task's extra files."""
    paths = [
        write_json(output_dir / f"{task.name}_results.json", result.details),
        write_json(output_dir / f"{task.name}_summary.json", summary(task, result)),
    ]
    paths += [write_json(output_dir / name, data) for name, data in result.files.items()]
    return paths


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the header row."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
