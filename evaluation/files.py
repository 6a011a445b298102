"""Reading benchmark files with errors that name the file, line and key at fault; writing JSON results."""

import json
import os
from pathlib import Path
from typing import Any

from .errors import EvaluationError


def read_json(path: str | os.PathLike) -> Any:
    """Loads a JSON file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"File not found: {path}")
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path} is not valid JSON: {error}") from error


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Loads a file with one JSON object per line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"File not found: {path}")
    records = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluationError(f"{path}, line {number}: not valid JSON ({error}).") from error
            if not isinstance(record, dict):
                raise EvaluationError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
    return records


def require(record: dict, keys: tuple[str, ...], where: str) -> None:
    """Raises if `record` lacks one of `keys`; `where` names the file and line or sample for the message."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise EvaluationError(f"{where}: missing key(s) {missing}; it has {sorted(record)}.")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Writes `data` as indented JSON (atomically, so an interrupted run never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(path)
    return path
