"""GQA exact-match accuracy (LLaVA's `convert_gqa_for_eval.py` + the official `eval.py` accuracy)."""

from collections.abc import Sequence


def gqa_prediction(answer: str) -> str:
    """The prediction the official evaluator compares: trailing periods removed, lower case (`"Yes."` -> `"yes"`)."""
    return answer.rstrip(".").lower()


def gqa_accuracy(predictions: Sequence[str], gold: Sequence[str], structural_types: Sequence[str | None]) -> dict:
    """Exact-match accuracy over all questions, and over binary and open questions as the official script splits them.

    Args:
        predictions: normalised predictions from [`gqa_prediction`].
        gold: the annotated answers, in the same order.
        structural_types: each question's `types.structural` ("query" questions are open, the rest binary), or None
            when the annotation has no types.

    Returns:
        `accuracy`, and `accuracy_binary` / `accuracy_open` when questions of that kind exist; fractions.
    """
    if not (len(predictions) == len(gold) == len(structural_types)) or not predictions:
        raise ValueError(f"GQA needs equally many predictions ({len(predictions)}) and answers ({len(gold)}), > 0.")
    correct = [p == g for p, g in zip(predictions, gold)]
    result = {"accuracy": sum(correct) / len(correct)}
    for kind, selected in (("binary", lambda t: t not in (None, "query")), ("open", lambda t: t == "query")):
        subset = [c for c, t in zip(correct, structural_types) if selected(t)]
        if subset:
            result[f"accuracy_{kind}"] = sum(subset) / len(subset)
    return result
