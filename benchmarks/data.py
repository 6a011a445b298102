"""Synthetic image-QA data for the benchmarks: random 224 px images and short question/answer conversations.

The same samples are written in the two formats the compared paths read: LLaVA JSON + an image folder
(`tinyllava-train`) and TRL's `messages` + `images` records (TRL's stock VLM collator).
"""

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
COLORS = ["red", "green", "blue", "yellow", "white", "black"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre"]
QUESTIONS = [
    "What color is the {shape} in the {place}?",
    "Which shape is in the {place} of this image?",
    "Describe the object in the {place}.",
]
ANSWERS = [
    "The {shape} in the {place} is {color}.",
    "It is a {color} {shape}.",
    "A {color} {shape} sits in the {place}.",
]
CORPUS = [SYSTEM_PROMPT, "USER: ASSISTANT:"] + [
    template.format(shape=shape, place=place, color=color)
    for template in QUESTIONS + ANSWERS
    for shape in SHAPES
    for place in PLACES
    for color in COLORS
]


def make_conversation(index: int) -> tuple[str, str]:
    """A deterministic (question, answer) pair for sample `index`."""
    rng = random.Random(index)
    fields = {"shape": rng.choice(SHAPES), "place": rng.choice(PLACES), "color": rng.choice(COLORS)}
    return rng.choice(QUESTIONS).format(**fields), rng.choice(ANSWERS).format(**fields)


def make_image(index: int, size: int) -> Image.Image:
    """A deterministic random RGB image."""
    pixels = np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_llava_dataset(directory: Path, num_samples: int, image_size: int) -> tuple[Path, Path]:
    """LLaVA-format JSON (`id`, `image`, `conversations`) plus its image folder.

    Returns:
        (path of the JSON file, the image folder).
    """
    image_folder = directory / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(num_samples):
        question, answer = make_conversation(index)
        name = f"{index:05d}.png"
        make_image(index, image_size).save(image_folder / name)
        records.append(
            {
                "id": str(index),
                "image": name,
                "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
            }
        )
    data_path = directory / "data.json"
    data_path.write_text(json.dumps(records))
    return data_path, image_folder


def trl_messages_records(num_samples: int, image_size: int) -> list[dict]:
    """The same samples as TRL `messages` + `images` records (structured content, one image each)."""
    records = []
    for index in range(num_samples):
        question, answer = make_conversation(index)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [make_image(index, image_size)],
            }
        )
    return records
