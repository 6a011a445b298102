"""MME yes/no scoring (the official `eval_tool/calculation.py`)."""

from collections import defaultdict
from collections.abc import Iterable

MME_CATEGORIES = {
    "perception": (
        "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    ),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}  # fmt: skip


def parse_mme_answer(answer: str) -> str:
    """Parses an answer to "yes", "no" or "other" (always wrong).

    The lower-cased answer is used if it is exactly "yes" or "no"; otherwise its first 4 characters are searched for
    "yes", then for "no" ("Yes, it is" -> "yes", "Not really" -> "no", "I think so" -> "other").
    """
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    return "no" if "no" in answer[:4] else "other"


def mme_scores(items: Iterable[tuple[str, str, str, str]]) -> dict:
    """Per-category accuracy, acc+ and score, and the perception / cognition totals.

    Args:
        items: `(category, image, parsed_prediction, label)` per question; MME asks two questions per image.

    Returns:
        `{"categories": {name: {"accuracy", "accuracy_plus", "score", "questions", "other"}}, "perception": float,
        "cognition": float}`. accuracy and acc+ (the share of images whose questions are all right) are fractions;
        a category's score is `100 * (accuracy + acc+)` and a total is the sum over its categories present.
    """
    by_image = defaultdict(list)
    for category, image, prediction, label in items:
        if label not in ("yes", "no"):
            raise ValueError(f"MME labels must be 'yes' or 'no', got {label!r} for {category}/{image}.")
        by_image[category, image].append((prediction, label))
    categories = defaultdict(lambda: {"correct": 0, "questions": 0, "images": 0, "images_correct": 0, "other": 0})
    for (category, _), pairs in by_image.items():
        stats = categories[category]
        right = [prediction == label for prediction, label in pairs]
        stats["correct"] += sum(right)
        stats["questions"] += len(pairs)
        stats["other"] += sum(prediction == "other" for prediction, _ in pairs)
        stats["images"] += 1
        stats["images_correct"] += all(right)
    result = {"categories": {}}
    for name, stats in sorted(categories.items()):
        accuracy, accuracy_plus = stats["correct"] / stats["questions"], stats["images_correct"] / stats["images"]
        result["categories"][name] = {
            "accuracy": accuracy,
            "accuracy_plus": accuracy_plus,
            "score": 100 * (accuracy + accuracy_plus),
            "questions": stats["questions"],
            "other": stats["other"],
        }
    for total, names in MME_CATEGORIES.items():
        result[total] = sum(result["categories"][name]["score"] for name in names if name in result["categories"])
    return result
