"""Writes the demo's synthetic data: LLaVA-format JSON for pretraining and finetuning, plus held-out questions."""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .synthetic import (
    CAPTION_PROMPT,
    QUESTION_TYPES,
    ask,
    blank_image,
    draw_scene,
    question_types_for,
    random_scene,
)

# The blank-image baseline asks every held-out question about this image instead of its own.
BLANK_IMAGE = "blank.png"


@dataclass(frozen=True)
class DemoData:
    """Where the generated data lives. The JSON files name images relative to `image_folder`, which also holds
    `blank_image`, the empty scene of the blank-image baseline."""

    image_folder: Path
    pretrain_json: Path
    finetune_json: Path
    eval_json: Path
    blank_image: str = BLANK_IMAGE


def _write_image(scene, name: str, image_folder: Path, image_size: int, rng: random.Random) -> str:
    draw_scene(scene, image_size, rng).save(image_folder / name)
    return name


def _pretrain_sample(index: int, image: str, scene) -> dict:
    """One image-caption pair; the `pretrain` template ignores the question and supervises the caption."""
    return {
        "id": f"pretrain-{index:05d}",
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": scene.caption()},
        ],
    }


def _finetune_sample(index: int, image: str, scene, rng: random.Random) -> dict:
    """A 2- or 3-turn conversation about one image; the image marker sits in the first question only."""
    kinds = list(question_types_for(scene))
    rng.shuffle(kinds)
    conversation = []
    for turn, kind in enumerate(kinds[: rng.randint(2, 3)]):
        question = ask(kind, rng)
        conversation.append({"from": "human", "value": f"<image>\n{question}" if turn == 0 else question})
        conversation.append({"from": "gpt", "value": scene.answer(kind)})
    return {"id": f"finetune-{index:05d}", "image": image, "conversations": conversation}


def _eval_sample(index: int, image: str, scene, kind: str, rng: random.Random) -> dict:
    return {
        "id": f"eval-{index:05d}",
        "image": image,
        "type": kind,
        "question": ask(kind, rng),
        "answer": scene.answer(kind),
    }


def write_demo_data(
    root: Path, num_pretrain: int, num_finetune: int, num_eval: int, image_size: int, seed: int = 0
) -> DemoData:
    """Generates the images and the three JSON files under `root`.

    Args:
        root: output directory; `images/` (with `blank.png`), `pretrain.json`, `finetune.json` and `eval.json` are
            written in it.
        num_pretrain: number of image-caption pairs.
        num_finetune: number of multi-turn conversations (each with its own image).
        num_eval: number of held-out single questions, spread evenly over the question types, each on a new image.
        image_size: side of the square images in pixels.
        seed: the data is a deterministic function of the seed.
    """
    image_folder = root / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pretrain, finetune, held_out = [], [], []
    progress = tqdm(total=num_pretrain + num_finetune + num_eval, desc="Generating synthetic images", unit="img")
    for index in range(num_pretrain):
        scene = random_scene(rng)
        pretrain.append(
            _pretrain_sample(
                index, _write_image(scene, f"pretrain-{index:05d}.png", image_folder, image_size, rng), scene
            )
        )
        progress.update()
    for index in range(num_finetune):
        scene = random_scene(rng)
        image = _write_image(scene, f"finetune-{index:05d}.png", image_folder, image_size, rng)
        finetune.append(_finetune_sample(index, image, scene, rng))
        progress.update()
    for index in range(num_eval):
        kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        scene = random_scene(rng)
        while kind not in question_types_for(scene):
            scene = random_scene(rng)
        image = _write_image(scene, f"eval-{index:05d}.png", image_folder, image_size, rng)
        held_out.append(_eval_sample(index, image, scene, kind, rng))
        progress.update()
    progress.close()
    blank_image(image_size).save(image_folder / BLANK_IMAGE)

    data = DemoData(image_folder, root / "pretrain.json", root / "finetune.json", root / "eval.json")
    for path, samples in ((data.pretrain_json, pretrain), (data.finetune_json, finetune), (data.eval_json, held_out)):
        path.write_text(json.dumps(samples, indent=1))
    return data
