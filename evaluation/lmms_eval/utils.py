"""Functions of the `tinyllava_pope_local` lmms-eval task (tinyllava_pope_local.yaml), loaded by lmms-eval.

Only PIL is imported: lmms-eval runs this file in its own environment, which need not have this repository installed.
Scoring is lmms-eval's POPE rule, the same as `tinyllava-eval pope --strict`: the lower-cased, stripped answer must be
exactly "yes" or "no"; anything else counts as wrong for accuracy and in none of TP/FP/FN. `yes_ratio` is the share of
"yes" *predictions*, as in `tinyllava-eval` (lmms-eval's own POPE task reports the share of "yes" labels).
"""

from pathlib import Path

from PIL import Image


def pope_local_doc_to_visual(doc: dict) -> list[Image.Image]:
    """The question's image: a path (absolute, or relative to the working directory) or an embedded image."""
    image = doc["image"]
    if not isinstance(image, Image.Image):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Question {doc['question_id']!r}: image {path.resolve()} not found.")
        image = Image.open(path)
    return [image.convert("RGB")]


def pope_local_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question'].strip()}{kwargs.get('post_prompt', '')}"


def pope_local_process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The same record for every metric: the parsed prediction ("yes", "no" or "other") and the label."""
    label = doc["answer"].lower().strip()
    if label not in ("yes", "no"):
        raise ValueError(f"Question {doc['question_id']!r}: answer must be 'yes' or 'no', got {doc['answer']!r}.")
    prediction = results[0].lower().strip()
    prediction = prediction if prediction in ("yes", "no") else "other"
    record = {"question_id": doc["question_id"], "prediction": prediction, "label": label}
    metrics = ("accuracy", "precision", "recall", "f1_score", "yes_ratio")
    return {f"pope_{name}": record for name in metrics}


def _counts(results: list[dict]) -> tuple[int, int, int]:
    pairs = [(result["prediction"], result["label"]) for result in results]
    true_positives = sum(pair == ("yes", "yes") for pair in pairs)
    false_positives = sum(pair == ("yes", "no") for pair in pairs)
    false_negatives = sum(pair == ("no", "yes") for pair in pairs)
    return true_positives, false_positives, false_negatives


def pope_local_accuracy(results: list[dict]) -> float:
    return sum(result["prediction"] == result["label"] for result in results) / len(results)


def pope_local_precision(results: list[dict]) -> float:
    true_positives, false_positives, _ = _counts(results)
    return true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0


def pope_local_recall(results: list[dict]) -> float:
    true_positives, _, false_negatives = _counts(results)
    return true_positives / (true_positives + false_negatives) if true_positives + false_negatives else 0.0


def pope_local_f1_score(results: list[dict]) -> float:
    precision, recall = pope_local_precision(results), pope_local_recall(results)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def pope_local_yes_ratio(results: list[dict]) -> float:
    return sum(result["prediction"] == "yes" for result in results) / len(results)
