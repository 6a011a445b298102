"""Evaluation results: the `{"results": [...]}` files written by `tinyllava-eval`, merged into `eval_results.json`.

One result is `{"task": "pope", "dataset_name": "POPE", "dataset_type": "lmms-lab/POPE", "split": "test",
"metrics": {"accuracy": 0.85, "f1": 0.84}}`.
"""

import json
import logging
import math
from pathlib import Path

from huggingface_hub import EvalResult

from .checkpoint import read_json

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"
REQUIRED_STRING_KEYS = ("task", "dataset_name", "dataset_type")
TASK_TYPE = "image-text-to-text"


def load_results(path: Path) -> list[dict]:
    """Reads and validates one results file.

    Raises:
        ValueError: naming the file, the result index and the key at fault.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f'{path}: expected {{"results": [...]}}.')
    for index, result in enumerate(data["results"]):
        where = f"{path}: results[{index}]"
        if not isinstance(result, dict):
            raise ValueError(f"{where} is not an object.")
        for key in REQUIRED_STRING_KEYS:
            if not isinstance(result.get(key), str) or not result[key]:
                raise ValueError(f"{where} needs a non-empty string {key!r}.")
        metrics = result.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"{where} needs a non-empty 'metrics' object.")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: metric {name!r} must be a finite number, got {value!r}.")
    return data["results"]


def result_key(result: dict) -> tuple:
    return result["task"], result["dataset_type"], result.get("split")


def merge_eval_results(checkpoint_dir: str | Path, files: list[str | Path]) -> Path:
    """Merges results files into `<checkpoint_dir>/eval_results.json`.

    A result for the same (task, dataset, split) as an existing one replaces it; the others are kept in order.

    Returns:
        The path of the merged file.
    """
    target = Path(checkpoint_dir) / EVAL_RESULTS_FILE
    merged = {result_key(r): r for r in (load_results(target) if target.is_file() else [])}
    for file in files:
        for result in load_results(Path(file)):
            if result_key(result) in merged:
                logger.info("%s replaces the earlier %s result on %s.", file, result["task"], result["dataset_type"])
            merged[result_key(result)] = result
    target.write_text(json.dumps({"results": list(merged.values())}, indent=2) + "\n", encoding="utf-8")
    return target


def to_eval_results(results: list[dict]) -> list[EvalResult]:
    """One huggingface_hub `EvalResult` per metric: the model-index entries of the card metadata."""
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=result["task"],
            dataset_type=result["dataset_type"],
            dataset_name=result["dataset_name"],
            dataset_split=result.get("split"),
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for result in results
        for metric, value in result["metrics"].items()
    ]
