"""POPE scoring: the original (LLaVA / TinyLLaVA `eval_pope.py`) protocol and lmms-eval's strict variant.

Both treat "yes" as the positive class. They differ in how a free-form answer becomes yes/no and in how empty
denominators are handled, which is why the two give slightly different numbers for the same answers.
"""

from collections.abc import Sequence

# The original adds this to the precision, recall and F1 denominators (main branch), so it never divides by zero.
EPS = 1e-6
LABELS = ("yes", "no")


def parse_pope_answer(answer: str) -> str:
    """The original rule: "no" if the first sentence contains the word `No`, `no` or `not`, else "yes".

    Only the text before the first "." counts, commas are removed and words are split on single spaces. So "No."
    and "not sure" are "no", while "NO", "Nope", "No,there is none" ("No,there" becomes one word) and the empty
    answer are "yes".
    """
    words = answer.split(".")[0].replace(",", "").split(" ")
    return "no" if any(word in ("No", "not", "no") for word in words) else "yes"


def parse_pope_answer_strict(answer: str) -> str:
    """lmms-eval's rule: the lower-cased, stripped answer must be exactly "yes" or "no"; anything else is "other"."""
    answer = answer.lower().strip()
    return answer if answer in LABELS else "other"


def _check_labels(predictions: Sequence[str], labels: Sequence[str]) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels.")
    if not labels:
        raise ValueError("No POPE answers to score.")
    bad = sorted({label for label in labels} - set(LABELS))
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad}.")


def _confusion(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    pairs = list(zip(predictions, labels))
    return {
        "tp": sum(p == "yes" and g == "yes" for p, g in pairs),
        "fp": sum(p == "yes" and g == "no" for p, g in pairs),
        "tn": sum(p == "no" and g == "no" for p, g in pairs),
        "fn": sum(p == "no" and g == "yes" for p, g in pairs),
    }


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of parsed yes/no predictions, exactly as `eval_pope.py`.

    Args:
        predictions: "yes"/"no" per question, from [`parse_pope_answer`].
        labels: the ground truth "yes"/"no", in the same order.

    Returns:
        `accuracy`, `precision`, `recall`, `f1`, `yes_ratio` (share of "yes" predictions) as fractions, plus the
        `tp`, `fp`, `tn`, `fn` counts.
    """
    _check_labels(predictions, labels)
    counts = _confusion(predictions, labels)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp + EPS)
    recall = tp / (tp + fn + EPS)
    return {
        "accuracy": (tp + counts["tn"]) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall + EPS),
        "yes_ratio": sum(p == "yes" for p in predictions) / len(predictions),
        **counts,
    }


def pope_metrics_strict(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """lmms-eval's POPE aggregation of exact yes/no/other predictions.

    An "other" prediction is wrong for accuracy and counts in none of TP/FP/FN (so it lowers neither precision nor
    recall); empty denominators give 0 instead of an epsilon. One deliberate difference: lmms-eval's `yes_ratio`
    is the share of "yes" *labels*; here it is the share of "yes" *predictions*, as in the original protocol.

    Args:
        predictions: "yes"/"no"/"other" per question, from [`parse_pope_answer_strict`].
        labels: the ground truth "yes"/"no", in the same order.

    Returns:
        the keys of [`pope_metrics`] plus `other`, the number of answers that were neither "yes" nor "no".
    """
    _check_labels(predictions, labels)
    counts = _confusion(predictions, labels)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == g for p, g in zip(predictions, labels)) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p in predictions) / len(predictions),
        **counts,
        "other": sum(p == "other" for p in predictions),
    }
