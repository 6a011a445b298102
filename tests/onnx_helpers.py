"""Held-out answers of an ONNX export, through the shipped NumPy + ONNX Runtime example."""

import json
from pathlib import Path

from PIL import Image
from transformers import AutoTokenizer

from tinyllava_hf.conversion import onnx_runtime_example as example


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
