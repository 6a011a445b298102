"""What a finished stage leaves in its output directory besides the weights: the run record, the loss curve and the
model card. Together with `save_pretrained` of the model and processor this makes a complete Hub repo, and the next
stage starts from it with `--model_name_or_path`."""

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_RECORD = "tinyllava_run.json"
LOSS_CURVE = "loss_curve.png"


def previous_stages(checkpoint: str | None) -> list[dict]:
    """The `stages` list of the run record in a local checkpoint dir (empty for a Hub id or a new model)."""
    if checkpoint is None or not (Path(checkpoint) / RUN_RECORD).is_file():
        return []
    return json.loads((Path(checkpoint) / RUN_RECORD).read_text())["stages"]


def write_run_record(output_dir: str | Path, stage: dict, base_checkpoint: str | None) -> Path:
    """Writes `tinyllava_run.json`: the stages of `base_checkpoint`'s record followed by `stage`.

    `stage` has the keys `recipe`, `llm`, `vision_tower`, `base_checkpoint`, `datasets`, `hyperparameters`,
    `steps`, `final_loss` and `lora` (the model-card contract).
    """
    path = Path(output_dir) / RUN_RECORD
    path.write_text(json.dumps({"stages": previous_stages(base_checkpoint) + [stage]}, indent=2) + "\n")
    return path


def plot_loss_curve(log_history: list[dict], output_dir: str | Path) -> Path | None:
    """Plots the logged training loss against the step into `loss_curve.png`; None when nothing was logged."""
    points = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    if not points:
        logger.warning("No training loss was logged (logging_steps > steps?), so %s is not written.", LOSS_CURVE)
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 3.5))
    axes.plot(*zip(*points), marker="." if len(points) < 50 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(output_dir) / LOSS_CURVE
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def write_model_card(output_dir: str | Path) -> Path:
    """The model card (`README.md`) from what the directory holds, by `model_cards.write_model_card`."""
    from tinyllava_hf.model_cards import write_model_card as write_card

    return write_card(output_dir)
