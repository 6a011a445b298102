"""A test-size model trained in seconds to read the color of the demo's shapes off the image.

The deployment tests (ONNX int8, GGUF through llama.cpp) compare another runtime's answers with ours on held-out
questions. That comparison only means something if the answers depend on the image, so the model is trained until
it reads the color (held-out accuracy ~1.0, against ~0.25 with a blank image), which the tests check first.

The model is the demo's Llama + SigLIP at its smallest, with every image token kept (`full`: what llama.cpp's mmproj
can express), trained with a plain full-batch loop (no Trainer, whose setup alone takes longer than this training)
on one color question per image, the loss on the answer and its end of turn only.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from chat_helpers import greedy_answer
from conftest import chat, save_model_dir
from PIL import Image

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.demo.components import ModelSize, build_components
from tinyllava_hf.demo.dataset import write_demo_data
from tinyllava_hf.demo.synthetic import blank_image

NUM_HELD_OUT = 40
NUM_TRAIN = 96
STEPS = 100
MAX_NEW_TOKENS = 6


@dataclass
class TrainedVLM:
    """The trained model (eval mode), saved at `path` with its processor, and its held-out answers in torch."""

    model: TinyLlavaForConditionalGeneration
    processor: TinyLlavaProcessor
    path: Path
    held_out: list[dict]  # question, answer, image_path
    answers: list[str]  # greedy, with each question's own image
    blank_answers: list[str]  # greedy, with a blank image

    def accuracy(self, answers: list[str]) -> float:
        return sum(a == item["answer"] for a, item in zip(answers, self.held_out, strict=True)) / len(self.held_out)


def greedy_answers(model, processor, questions: list[str], images: list) -> list[str]:
    return [
        greedy_answer(model, processor, chat(question, image), MAX_NEW_TOKENS)
        for question, image in zip(questions, images, strict=True)
    ]


def train_color_reader(root: Path) -> TrainedVLM:
    size = ModelSize(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1)
    llm, vision = build_components(root / "components", size)
    per_kind = NUM_TRAIN + NUM_HELD_OUT
    data = write_demo_data(root / "data", num_pretrain=0, num_finetune=0, num_eval=4 * per_kind, image_size=32)
    items = [item for item in json.loads(data.eval_json.read_text()) if item["type"] == "color"]
    for item in items:
        item["image_path"] = data.image_folder / item["image"]
    held_out, train = items[:NUM_HELD_OUT], items[NUM_HELD_OUT:per_kind]

    torch.manual_seed(0)
    parts = {"llm": str(llm), "vision_tower": str(vision), "vision_feature_select_strategy": "full"}
    model = TinyLlavaForConditionalGeneration.from_pretrained_components(**parts, vision_feature_layer=-1)
    processor = TinyLlavaProcessor.from_pretrained_components(**parts, vision_feature_layer=-1)
    images = [Image.open(item["image_path"]).convert("RGB") for item in train]
    texts = [processor.apply_chat_template(chat(i["question"], im, i["answer"])) for i, im in zip(train, images)]
    prompts = [
        processor.apply_chat_template(chat(i["question"], im), add_generation_prompt=True)
        for i, im in zip(train, images)
    ]
    processor.tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    prompt_lengths = processor(text=prompts, images=images, return_tensors="pt", padding=True)["attention_mask"].sum(1)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100  # supervise the answer and its end-of-turn token only
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    processor.tokenizer.padding_side = "left"

    path = save_model_dir(model, processor, root / "color-reader")
    questions = [item["question"] for item in held_out]
    real = [Image.open(item["image_path"]).convert("RGB") for item in held_out]
    return TrainedVLM(
        model=model,
        processor=processor,
        path=path,
        held_out=held_out,
        answers=greedy_answers(model, processor, questions, real),
        blank_answers=greedy_answers(model, processor, questions, [blank_image(32)] * len(questions)),
    )


@pytest.fixture(scope="session")
def color_reader(tmp_path_factory) -> TrainedVLM:
    trained = train_color_reader(tmp_path_factory.mktemp("color-reader"))
    # The precondition of every agreement test that uses it: the answers come from the image.
    assert trained.accuracy(trained.answers) >= 0.9, list(zip(trained.answers, trained.held_out))
    assert trained.accuracy(trained.blank_answers) <= 0.5, trained.blank_answers
    return trained
