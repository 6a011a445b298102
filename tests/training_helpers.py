"""Helpers for the training tests: tiny LLaVA-format datasets on disk and `tinyllava-train` argument lists."""

import json
from pathlib import Path

from conftest import make_image

# The 2-turn conversation of reference §3.2.
Q1, A1 = "<image>\nWhat is shown in the image?", "A red square on a blue background."
Q2, A2 = "What color is the square?", "The square is red."
# Answers a tiny model can memorize in a few steps.
ANSWERS = ("red square", "blue circle", "green triangle", "yellow square")


def llava_record(sample_id: str, image: str | list | None, *turns: str) -> dict:
    """A LLaVA-format record whose turns alternate human / gpt."""
    record = {
        "id": sample_id,
        "conversations": [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(turns)],
    }
    if image is not None:
        record["image"] = image
    return record


def write_llava_dataset(root: Path, num_samples: int = 4, records: list[dict] | None = None) -> tuple[Path, Path]:
    """Writes images and a LLaVA JSON file under `root`.

    By default sample i shows image i and answers `ANSWERS[i % 4]`, so the batch is memorizable.

    Returns:
        (json path, image folder).
    """
    image_folder = root / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    for index in range(max(num_samples, 4)):
        make_image(seed=index).save(image_folder / f"{index}.png")
    if records is None:
        records = [
            llava_record(f"s{index}", f"{index}.png", "<image>\nWhat is in the image?", ANSWERS[index % len(ANSWERS)])
            for index in range(num_samples)
        ]
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path, image_folder


def train_argv(recipe: str, output_dir: Path, data: tuple[Path, Path], *extra: str, max_steps: int = 3) -> list[str]:
    """`tinyllava-train` arguments for a short CPU run: constant LR, no checkpointing, no workers."""
    data_path, image_folder = data
    return [
        recipe,
        "--data_path", str(data_path),
        "--image_folder", str(image_folder),
        "--output_dir", str(output_dir),
        "--max_steps", str(max_steps),
        "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "1",
        "--activation_checkpointing", "false",
        "--dataloader_num_workers", "0",
        "--lr_scheduler_type", "constant",
        "--warmup_steps", "0",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--report_to", "none",
        *extra,
    ]  # fmt: skip
