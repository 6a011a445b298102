"""The demo's results: the evaluation summary on the checkpoint, the printed report, and the pass/fail rule."""

import json
from pathlib import Path

from .evaluate import Accuracy, eval_summary, margin_failures


def publish_results(checkpoint: Path, real: Accuracy, blank: Accuracy, num_questions: int, output_dir: Path) -> Path:
    """Writes `eval/synthetic_shapes_qa_summary.json`, merges it into the checkpoint's `eval_results.json` and
    regenerates the model card, so the Hub-ready checkpoint carries its own results.

    Returns:
        The summary's path.
    """
    from tinyllava_hf.model_cards import merge_eval_results, write_model_card

    summary_path = output_dir / "eval" / "synthetic_shapes_qa_summary.json"
    summary_path.parent.mkdir(exist_ok=True)
    summary_path.write_text(json.dumps(eval_summary(real, blank, num_questions), indent=2) + "\n")
    merge_eval_results(checkpoint, [summary_path])
    write_model_card(checkpoint)
    return summary_path


def check_margins(summary_path: Path, min_margin: float | None) -> None:
    """Exits non-zero, naming each failing category, unless in every category the real image beats the blank image
    by `min_margin` in the published summary. None: the margins are printed, not enforced (`--quick`)."""
    metrics = json.loads(summary_path.read_text())["results"][0]["metrics"]
    failures = margin_failures(metrics, min_margin if min_margin is not None else 0.0)
    if min_margin is None:
        print("(--quick: too few steps to learn anything; the margins are computed but not enforced.)")
    elif failures:
        raise SystemExit(
            f"Demo FAILED: the real image must beat the blank image by >= {min_margin * 100:.0f} points in every "
            f"category ({summary_path}):\n  " + "\n  ".join(failures)
        )
    else:
        print(f"Margin check passed: the real image wins by >= {min_margin * 100:.0f} points in every category.")


def accuracy_table(real: Accuracy, blank: Accuracy, min_margin: float | None) -> str:
    """Per-category accuracy with the real and the blank image, and the margin between them."""
    required = f"  (required: >= {min_margin * 100:+.0f} per category)" if min_margin is not None else ""
    rows = [f"  {'category':<10} {'real image':>10} {'blank image':>12} {'margin':>8}"]
    for kind, value in real.per_type.items():
        margin = (value - blank.per_type[kind]) * 100
        rows.append(f"  {kind:<10} {value:>10.1%} {blank.per_type[kind]:>12.1%} {margin:>+8.1f}")
    margin = (real.overall - blank.overall) * 100
    rows.append(f"  {'overall':<10} {real.overall:>10.1%} {blank.overall:>12.1%} {margin:>+8.1f}{required}")
    return "\n".join(rows)


def print_report(
    real: Accuracy,
    blank: Accuracy,
    min_margin: float | None,
    num_questions: int,
    example: dict,
    answer: str,
    locations: dict[str, Path],
    timings: dict[str, float],
) -> None:
    """The final summary: accuracies, the pipeline's answer, where everything is, how long each phase took, and
    the commands that chat with and publish the model."""
    print("\n" + "=" * 80)
    print("TinyLLaVA demo finished.\n")
    print(f"Held-out accuracy ({num_questions} questions, exact match):")
    print(accuracy_table(real, blank, min_margin))
    print(f"\npipeline('image-text-to-text') on {example['image']}:")
    print(f"  Q: {example['question']}\n  A: {answer!r}   (expected {example['answer']!r})")
    print("\nWhere everything is:")
    for label, path in locations.items():
        print(f"  {label:<28} {path}")
    print("\nWall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"Publish the checkpoint with: tinyllava-push {locations['Hub-ready checkpoint']} <user>/<repo>")
    print(f"Chat with the model:         tinyllava-chat {locations['Hub-ready checkpoint']}")
    print("=" * 80)
