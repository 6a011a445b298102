"""The resumable answers file: one JSON line per answered question, appended and flushed batch by batch."""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import EvaluationError
from .question import Question

logger = logging.getLogger(__name__)


class AnswerFile:
    """`<task>_answers.jsonl`: `{"question_id", "prompt", "text", "model"}` per line, in LLaVA's answer format.

    A question counts as done when a line with its id and prompt exists, so a restarted run skips it. A line cut
    off by a crash (no final newline) is removed when the file is opened for appending.

    Args:
        path: the JSONL file (created on the first append).
        model: identifies the model that writes the answers; answers written by another model are refused, since
            mixing two models' answers would give a meaningless score.
    """

    def __init__(self, path: str | os.PathLike, model: str):
        self.path = Path(path)
        self.model = model
        self._tail_checked = False

    def load(self) -> dict[tuple, str]:
        """The answers already in the file, keyed by [`Question.key`]."""
        if not self.path.exists():
            return {}
        answers, lines = {}, self.path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, text = (record["question_id"], record["prompt"]), record["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                if number == len(lines):  # the last line is incomplete: the run was interrupted while writing it
                    logger.warning("%s: ignoring an incomplete last line (interrupted run).", self.path)
                    continue
                raise EvaluationError(f"{self.path}, line {number}: not an answer record ({error!r}).") from error
            if record.get("model", self.model) != self.model:
                raise EvaluationError(
                    f"{self.path}, line {number}: answer by model {record['model']!r}, but this run evaluates "
                    f"{self.model!r}. Use another --output-dir, or --overwrite to discard the old answers."
                )
            answers[key] = text
        return answers

    def append(self, questions: Sequence[Question], texts: Sequence[str]) -> None:
        """Appends one batch of answers and flushes it to disk."""
        if not self._tail_checked:
            self._drop_incomplete_last_line()
            self._tail_checked = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            for question, text in zip(questions, texts, strict=True):
                record = {"question_id": question.question_id, "prompt": question.text, "text": text,
                          "model": self.model}  # fmt: skip
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def _drop_incomplete_last_line(self) -> None:
        if not self.path.exists():
            return
        content = self.path.read_bytes()
        if content and not content.endswith(b"\n"):
            self.path.write_bytes(content[: content.rfind(b"\n") + 1])
