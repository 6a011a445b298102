"""The benchmarks, by CLI name."""

from .base import Task, TaskResult
from .gqa import GQA
from .mme import MME
from .pope import Pope
from .scienceqa import ScienceQA
from .vqa import TextVQA, VQAv2

TASKS: dict[str, type[Task]] = {task.name: task for task in (Pope, ScienceQA, TextVQA, VQAv2, GQA, MME)}

__all__ = ["GQA", "MME", "TASKS", "Pope", "ScienceQA", "Task", "TaskResult", "TextVQA", "VQAv2"]
