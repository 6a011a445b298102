"""The offline demo (`tinyllava-demo`, also `tinyllava-train demo`): its synthetic data says what its images show, its
pass/fail rule holds every question category to the margin, and a reduced-size run (`--quick`) goes through the real
CLI end to end, checks the margins and leaves every promised output behind."""

import json
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel, pipeline

from tinyllava_hf.demo.components import ModelSize, build_components
from tinyllava_hf.demo.dataset import write_demo_data
from tinyllava_hf.demo.evaluate import Accuracy, eval_summary, margin_failures
from tinyllava_hf.demo.report import check_margins
from tinyllava_hf.demo.synthetic import (
    BACKGROUND,
    COLORS,
    QUADRANTS,
    QUESTION_TYPES,
    blank_image,
    draw_scene,
    question_types_for,
    random_scene,
)
from tinyllava_hf.demo.vision_pretraining import CATEGORIES, pretrain_vision_tower
from tinyllava_hf.training.cli import main as train_main
from tinyllava_hf.training.data import llava_record_to_sample


def shape_pixels(image, quadrant: int) -> np.ndarray:
    """Boolean mask of the clearly non-background pixels of one quadrant (anti-aliased edges excluded)."""
    pixels = np.asarray(image, dtype=np.int32)
    half = pixels.shape[0] // 2
    row, column = divmod(quadrant, 2)
    block = pixels[row * half : (row + 1) * half, column * half : (column + 1) * half]
    return np.abs(block - np.array(BACKGROUND)).sum(-1) > 120, block


def test_scene_answers_describe_what_is_drawn():
    """Colour, count, position and shape answers agree with the pixels, so the task is learnable and fair."""
    rng = random.Random(0)
    for _ in range(60):
        scene = random_scene(rng)
        image = draw_scene(scene, 64, rng)
        occupied = []
        for quadrant in range(len(QUADRANTS)):
            mask, block = shape_pixels(image, quadrant)
            if mask.sum() < 20:
                continue
            occupied.append(quadrant)
            mean = block[mask].mean(0)
            nearest = min(COLORS, key=lambda name: np.abs(mean - np.array(COLORS[name])).sum())
            assert nearest == scene.answer("color")
            rows, columns = np.nonzero(mask)
            fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(columns) + 1))
            expected_fill = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[scene.answer("shape")]
            assert fill == pytest.approx(expected_fill, abs=0.12), scene
        assert len(occupied) == scene.count
        if scene.count == 1:
            assert QUADRANTS[occupied[0]] == scene.answer("position")
        else:
            assert "position" not in question_types_for(scene)
            with pytest.raises(ValueError, match="single shape"):
                scene.answer("position")
    assert not shape_pixels(blank_image(64), 0)[0].any()


def test_demo_data_is_valid_llava_json_with_balanced_held_out_questions(tmp_path):
    data = write_demo_data(tmp_path, num_pretrain=8, num_finetune=8, num_eval=12, image_size=32)
    for path in (data.pretrain_json, data.finetune_json):
        for index, record in enumerate(json.loads(path.read_text())):
            sample = llava_record_to_sample(record, index, str(path))  # the training loader's own parser
            assert (data.image_folder / record["image"]).is_file()
            roles = [message["role"] for message in sample["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            assert sum(part["type"] == "image" for m in sample["messages"] for part in m["content"]) == 1
    held_out = json.loads(data.eval_json.read_text())
    assert [item["type"] for item in held_out] == [QUESTION_TYPES[i % 4] for i in range(12)]
    train_images = {r["image"] for p in (data.pretrain_json, data.finetune_json) for r in json.loads(p.read_text())}
    assert train_images.isdisjoint(item["image"] for item in held_out)


def test_demo_tokenizer_round_trips_the_template_and_keeps_answers_short(tmp_path):
    llm_dir, _ = build_components(tmp_path, ModelSize(vision_layers=1, text_hidden=32, text_layers=1))
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    text = "USER: <image>\nHow many shapes are there? ASSISTANT: three</s>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for answer in [*COLORS, "circle", "square", "triangle", "one", "four"]:
        assert len(tokenizer(" " + answer)["input_ids"]) == 1, answer


def test_vision_pretraining_teaches_the_tower_shape_and_position():
    """Why the demo pretrains its tower: shape and position, which a random tower trained through the LM never
    learned, become readable from the patch features in a few hundred steps (chance: 33% shape, 25% position)."""
    config = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, vision_use_head=False,
    )  # fmt: skip
    torch.manual_seed(0)
    tower = SiglipVisionModel(config)
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    before = {name: tensor.clone() for name, tensor in tower.state_dict().items()}
    accuracy = pretrain_vision_tower(tower, processor, image_size=32, steps=150, num_images=500)
    assert set(accuracy) == set(CATEGORIES)
    assert accuracy["shape"] > 0.6 and accuracy["position"] > 0.6, accuracy
    # Every weight up to the layer TinyLLaVA reads has moved (post_layernorm lies after it and is never used).
    trained = {name: tensor for name, tensor in tower.state_dict().items() if "post_layernorm" not in name}
    assert all(not torch.equal(before[name], tensor) for name, tensor in trained.items())


def summary_file(tmp_path, real: dict[str, float], blank: dict[str, float]):
    """An evaluation summary as the demo publishes it, with the given per-category accuracies."""
    summary = eval_summary(Accuracy(0.5, real), Accuracy(0.5, blank), num_questions=8)
    path = tmp_path / "synthetic_shapes_qa_summary.json"
    path.write_text(json.dumps(summary))
    return path


def test_margin_rule_holds_every_category_to_the_margin(tmp_path):
    blank = {"color": 0.3, "shape": 0.35, "count": 0.5, "position": 0.25}
    seeing = {"color": 1.0, "shape": 0.9, "count": 0.95, "position": 0.6}
    check_margins(summary_file(tmp_path, seeing, blank), min_margin=0.3)  # passes: every margin >= 30 points
    # One blind category fails the demo although the overall accuracy is far above the blank image's.
    blind_to_shape = {**seeing, "shape": 0.4}
    assert margin_failures(
        eval_summary(Accuracy(0.8, blind_to_shape), Accuracy(0.3, blank), 8)["results"][0]["metrics"], 0.3
    ) == ["shape: 40.0% vs 35.0% blank (+5.0 points)"]
    with pytest.raises(SystemExit, match=r"every category.*\n  shape: 40.0% vs 35.0% blank"):
        check_margins(summary_file(tmp_path, blind_to_shape, blank), min_margin=0.3)
    # A margin of exactly 30 points passes, whatever the float arithmetic makes of 0.85 - 0.55.
    check_margins(summary_file(tmp_path, {**seeing, "shape": 0.85}, {**blank, "shape": 0.55}), min_margin=0.3)


def test_quick_demo_runs_end_to_end_through_the_cli_and_checks_the_margins(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    # Three steps per stage learn nothing, so a 100-point margin cannot hold: the run must fail on its margin check,
    # naming every category, after writing all its outputs.
    with pytest.raises(SystemExit, match="Demo FAILED") as failure:
        train_main(["demo", "--output_dir", str(output_dir), "--quick", "--min_margin", "1.0"])
    for kind in QUESTION_TYPES:
        assert f"\n  {kind}: " in str(failure.value)
    printed = capsys.readouterr().out

    for name in ("pretrain.json", "finetune.json", "eval.json"):
        assert (output_dir / "data" / name).is_file()
    assert (output_dir / "loss_curves.png").stat().st_size > 0
    checkpoint = output_dir / "finetune"
    for name in ("model.safetensors", "config.json", "processor_config.json", "modeling_tinyllava.py", "README.md"):
        assert (checkpoint / name).is_file(), name
    stages = json.loads((checkpoint / "tinyllava_run.json").read_text())["stages"]
    assert [stage["recipe"] for stage in stages] == ["pretrain", "finetune"]
    assert stages[1]["base_checkpoint"] == str(output_dir / "pretrain")

    # Per category, the accuracies with the real and the blank image are printed, saved in the evaluation summary and
    # carried by the checkpoint's eval results and model card.
    summary = json.loads((output_dir / "eval" / "synthetic_shapes_qa_summary.json").read_text())
    metrics = json.loads((checkpoint / "eval_results.json").read_text())["results"][0]["metrics"]
    assert summary["results"][0]["metrics"] == metrics
    for kind in (*QUESTION_TYPES, None):
        real, blank = (metrics[f"{prefix}accuracy{f'_{kind}' if kind else ''}"] for prefix in ("", "blank_image_"))
        assert 0.0 <= real <= 1.0 and 0.0 <= blank <= 1.0
        cells = (kind or "overall", f"{real:.1%}", f"{blank:.1%}", f"{(real - blank) * 100:+.1f}")
        row = "\n  " + r"\s+".join(map(re.escape, cells))
        assert re.search(row, printed), printed
    assert "blank_image_accuracy_position" in (checkpoint / "README.md").read_text()
    answers = (output_dir / "eval" / "synthetic_shapes_qa_blank_image_answers.jsonl").read_text().splitlines()
    assert len(answers) == len(json.loads((output_dir / "data" / "eval.json").read_text()))

    # The printed answer is what the image-text-to-text pipeline gives for the first held-out question.
    example = json.loads((output_dir / "data" / "eval.json").read_text())[0]
    printed_answer = re.search(r"  A: '(.*)'   \(expected", printed).group(1)
    generator = pipeline("image-text-to-text", model=str(checkpoint), trust_remote_code=True)
    image = Image.open(output_dir / "data" / "images" / example["image"])
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": example["question"]}]}
    ]
    output = generator(text=messages, max_new_tokens=6, return_full_text=False, generate_kwargs={"do_sample": False})
    assert output[0]["generated_text"].strip() == printed_answer
    assert str(checkpoint) in printed and "Wall time" in printed
    assert f"tinyllava-chat {checkpoint}" in printed
