"""A test-size model trained in seconds on the demo's synthetic shapes task, and its held-out answers through ONNX.

The model is the demo's Llama + SigLIP at its smallest, trained with a plain full-batch loop (no Trainer, whose setup
alone takes longer than this training) on single questions with one image each, the loss on the answer only.
"""

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.conversion import onnx_runtime_example as example
from tinyllava_hf.demo.components import ModelSize, build_components
from tinyllava_hf.demo.dataset import write_demo_data

NUM_HELD_OUT = 40
NUM_TRAIN = 64
# Enough for the answer format and each question type's likely answers (held-out accuracy ~30%, as with a blank
# image); reading the shapes off the images takes the demo's ~600 steps, too slow for a test.
STEPS = 60


def _conversation(item: dict, answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item["question"]}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def train_tiny_vlm(root: Path) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor, list[dict], list[dict]]:
    """Trains a tiny model; returns it (eval mode), its processor, the held-out and the training items (question,
    answer, type, `image_path`)."""
    size = ModelSize(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1)
    llm, vision = build_components(root / "components", size)
    data = write_demo_data(
        root / "data", num_pretrain=0, num_finetune=0, num_eval=NUM_TRAIN + NUM_HELD_OUT, image_size=32
    )
    items = json.loads(data.eval_json.read_text())
    for item in items:
        item["image_path"] = data.image_folder / item["image"]
    held_out, train = items[:NUM_HELD_OUT], items[NUM_HELD_OUT:]

    torch.manual_seed(0)
    kwargs = {"llm": str(llm), "vision_tower": str(vision), "vision_feature_layer": -1}
    model = TinyLlavaForConditionalGeneration.from_pretrained_components(**kwargs)
    processor = TinyLlavaProcessor.from_pretrained_components(**kwargs)
    images = [Image.open(item["image_path"]).convert("RGB") for item in train]
    texts = [processor.apply_chat_template(_conversation(item, item["answer"])) for item in train]
    prompts = [processor.apply_chat_template(_conversation(item), add_generation_prompt=True) for item in train]
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
    return model.eval(), processor, held_out, train


def held_out_answers(model_dir: Path, held_out: list[dict], int8: bool) -> list[str]:
    """Greedy answers (up to 6 tokens) of an ONNX export to the held-out questions, with their images."""
    sessions = example.load_sessions(model_dir, int8=int8)
    config = json.loads((model_dir / "config.json").read_text())
    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = []
    for item in held_out:
        input_ids, pixel_values = example.prepare_inputs(model_dir, item["question"], Image.open(item["image_path"]))
        tokens = example.generate(sessions, input_ids, pixel_values, config["image_token_id"], eos_ids, 6)
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return answers
