"""The demo's combined loss plot: every stage's logged training loss on one step axis."""

import json
from pathlib import Path


def stage_losses(stage_dir: Path) -> list[tuple[int, float]]:
    """`(step, loss)` pairs logged by the Trainer, read from the stage's `trainer_state.json`."""
    history = json.loads((stage_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def plot_stage_losses(stages: dict[str, Path], path: Path) -> Path:
    """Draws the stages one after another (each stage's steps continue the previous one's) into `path` (PNG).

    Args:
        stages: stage name -> its output directory, in training order.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3.5))
    offset = 0
    for name, stage_dir in stages.items():
        points = stage_losses(stage_dir)
        if not points:
            raise ValueError(f"{stage_dir / 'trainer_state.json'} logs no training loss for stage {name!r}.")
        steps, losses = zip(*points)
        axes.plot([offset + step for step in steps], losses, label=name)
        offset += steps[-1]
        axes.axvline(offset, color="grey", linewidth=0.5)
    axes.set_xlabel("step (stages in order)")
    axes.set_ylabel("training loss")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path
