"""Held-out accuracy of a trained checkpoint, with the real images and with a blank image in their place.

The blank-image run asks the same questions of the same model, so the gap between the two numbers is what the model
reads from the image; a model that ignored its input would score the same on both.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor

from .synthetic import QUESTION_TYPES, blank_image


@dataclass(frozen=True)
class Accuracy:
    """Exact-match accuracy overall and per question type (`color`, `shape`, `count`, `position`)."""

    overall: float
    per_type: dict[str, float]

    @classmethod
    def from_matches(cls, matches: list[tuple[str, bool]]) -> "Accuracy":
        by_type = defaultdict(list)
        for kind, correct in matches:
            by_type[kind].append(correct)
        per_type = {kind: sum(v) / len(v) for kind in QUESTION_TYPES if (v := by_type.get(kind))}
        return cls(sum(correct for _, correct in matches) / len(matches), per_type)


@torch.no_grad()
def answer_questions(
    model, processor, questions: list[dict], images: list[Image.Image], batch_size: int = 32, desc: str = "Answering"
) -> list[str]:
    """Greedy answers to single-turn questions, one image each, in batches (left-padded for generation).

    Args:
        questions: dicts with a `question` string.
        images: one PIL image per question.

    Returns:
        The decoded new text of each answer, stripped.
    """
    tokenizer = processor.tokenizer
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in tqdm(range(0, len(questions), batch_size), desc=desc, unit="batch"):
            chunk = questions[start : start + batch_size]
            conversations = [
                [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": image}, {"type": "text", "text": item["question"]}],
                    }
                ]
                for item, image in zip(chunk, images[start : start + batch_size])
            ]
            inputs = processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True},
            ).to(model.device)
            generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            answers += [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
    return answers


def evaluate_checkpoint(checkpoint: Path, eval_json: Path, image_folder: Path) -> tuple[Accuracy, Accuracy]:
    """Accuracy of `checkpoint` on the held-out questions, with their images and with a blank image.

    Returns:
        `(real_image_accuracy, blank_image_accuracy)`.
    """
    model = TinyLlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = TinyLlavaProcessor.from_pretrained(checkpoint)
    questions = json.loads(eval_json.read_text())
    real_images = [Image.open(image_folder / item["image"]).convert("RGB") for item in questions]
    blanks = [blank_image(image.width) for image in real_images]
    results = []
    for images, desc in ((real_images, "Held-out questions, real images"), (blanks, "Same questions, blank image")):
        answers = answer_questions(model, processor, questions, images, desc=desc)
        matches = [(item["type"], answer == item["answer"]) for item, answer in zip(questions, answers)]
        results.append(Accuracy.from_matches(matches))
    return results[0], results[1]


def eval_summary(real: Accuracy, blank: Accuracy, num_questions: int) -> dict:
    """The `{"results": [...]}` summary that `model_cards.merge_eval_results` puts on the model card."""
    metrics = {"accuracy": real.overall, "blank_image_accuracy": blank.overall}
    metrics.update({f"accuracy_{kind}": value for kind, value in real.per_type.items()})
    return {
        "results": [
            {
                "task": "synthetic_shapes_qa",
                "dataset_name": f"TinyLLaVA demo synthetic shapes ({num_questions} held-out questions)",
                "dataset_type": "synthetic-shapes",
                "split": "held_out",
                "metrics": metrics,
            }
        ]
    }
