"""Held-out accuracy of a trained checkpoint, with the real images and with a blank image in their place.

The blank-image run asks the same questions of the same model, so the gap between the two numbers is what the model
reads from the image; a model that ignored its input would score the same on both. Answers come from
`tinyllava_hf.evaluation`'s batched greedy generation (the original eval prompt) and are kept as answer files.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tinyllava_hf.evaluation.answers import AnswerFile
from tinyllava_hf.evaluation.generation import generate_answers, load_model
from tinyllava_hf.evaluation.question import Question

from .synthetic import QUESTION_TYPES

TASK = "synthetic_shapes_qa"
# The longest answer ("bottom right") is 2 tokens, plus `</s>`; a few more show what a wrong model rambles.
MAX_NEW_TOKENS = 6


@dataclass(frozen=True)
class Accuracy:
    """Exact-match accuracy overall and per question type (`color`, `shape`, `count`, `position`)."""

    overall: float
    per_type: dict[str, float]

    @classmethod
    def from_matches(cls, matches: list[tuple[str, bool]]) -> "Accuracy":
        by_type = defaultdict(list)
        for kind, correct in matches:
            by_type[kind].append(correct)
        per_type = {kind: sum(v) / len(v) for kind in QUESTION_TYPES if (v := by_type.get(kind))}
        return cls(sum(correct for _, correct in matches) / len(matches), per_type)


def held_out_questions(eval_json: Path, image: str | None = None) -> list[Question]:
    """The held-out questions of `eval.json`, each about its own image, or about `image` for all of them."""
    return [
        Question(item["id"], item["question"], image or item["image"], category=item["type"])
        for item in json.loads(eval_json.read_text())
    ]


def score(questions: list[Question], answers: dict[tuple, str], expected: dict[str, str]) -> Accuracy:
    """Exact-match accuracy of `answers` (keyed by `Question.key`) against `expected` (question id -> answer)."""
    return Accuracy.from_matches([(q.category, answers[q.key] == expected[q.question_id]) for q in questions])


def evaluate_checkpoint(
    checkpoint: Path, eval_json: Path, image_folder: Path, blank_image: str, answers_dir: Path
) -> tuple[Accuracy, Accuracy]:
    """Accuracy of `checkpoint` on the held-out questions, with their images and with the blank image.

    Args:
        checkpoint: the trained TinyLLaVA directory.
        eval_json: the held-out questions (`id`, `image`, `type`, `question`, `answer`).
        image_folder: the folder their images (and `blank_image`) are in.
        blank_image: the blank image's file name in `image_folder`.
        answers_dir: where `synthetic_shapes_qa_answers.jsonl` and `..._blank_image_answers.jsonl` are written.

    Returns:
        `(real_image_accuracy, blank_image_accuracy)`.
    """
    expected = {item["id"]: item["answer"] for item in json.loads(eval_json.read_text())}
    model, processor = load_model(str(checkpoint), device="cpu")
    results = []
    for suffix, image in (("", None), ("_blank_image", blank_image)):
        questions = held_out_questions(eval_json, image)
        answer_file = AnswerFile(answers_dir / f"{TASK}{suffix}_answers.jsonl", str(checkpoint))
        # The demo retrains the checkpoint in place, so answers from an earlier run are stale, never resumable.
        answer_file.path.unlink(missing_ok=True)
        description = "held-out questions, " + ("blank image" if image else "real images")
        generate_answers(
            model, processor, questions, image_folder, answer_file, batch_size=32,
            max_new_tokens=MAX_NEW_TOKENS, description=description,
        )  # fmt: skip
        results.append(score(questions, answer_file.load(), expected))
    return results[0], results[1]


def eval_summary(real: Accuracy, blank: Accuracy, num_questions: int) -> dict:
    """The `{"results": [...]}` summary that `model_cards.merge_eval_results` puts on the model card: overall and
    per-category accuracy with the real image (`accuracy`, `accuracy_<category>`) and with the blank image
    (`blank_image_accuracy`, `blank_image_accuracy_<category>`)."""
    metrics = {"accuracy": real.overall, "blank_image_accuracy": blank.overall}
    metrics.update({f"accuracy_{kind}": value for kind, value in real.per_type.items()})
    metrics.update({f"blank_image_accuracy_{kind}": value for kind, value in blank.per_type.items()})
    return {
        "results": [
            {
                "task": TASK,
                "dataset_name": f"TinyLLaVA demo synthetic shapes ({num_questions} held-out questions)",
                "dataset_type": "synthetic-shapes",
                "split": "held_out",
                "metrics": metrics,
            }
        ]
    }


def margin_failures(metrics: dict[str, float], min_margin: float) -> list[str]:
    """The categories whose real-image accuracy does not beat their blank-image accuracy by `min_margin`.

    Args:
        metrics: an `eval_summary` result's metrics (`accuracy_<category>`, `blank_image_accuracy_<category>`).
        min_margin: the required absolute margin, e.g. 0.3 for 30 points.

    Returns:
        One line per failing category, e.g. `"shape: 34.0% vs 36.0% blank (+-2.0 points)"`; empty if all pass.
    """
    categories = [kind for kind in QUESTION_TYPES if f"accuracy_{kind}" in metrics]
    if not categories:
        raise ValueError(f"No per-category accuracies (accuracy_<category>) in the metrics: {sorted(metrics)}.")
    failures = []
    for kind in categories:
        real, blank = metrics[f"accuracy_{kind}"], metrics[f"blank_image_accuracy_{kind}"]
        if real - blank < min_margin - 1e-9:  # 0.85 - 0.55 is 0.2999...: a float, not a failure
            failures.append(f"{kind}: {real:.1%} vs {blank:.1%} blank ({(real - blank) * 100:+.1f} points)")
    return failures
