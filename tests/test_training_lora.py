"""LoRA stages: the adapter, its offline base and the merged checkpoint give the same model; `tinyllava-merge`."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image
from safetensors.torch import load_file
from training_helpers import train_argv, write_llava_dataset

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.training.cli import run
from tinyllava_hf.training.collator import TinyLlavaCollator
from tinyllava_hf.training.data import text_to_parts
from tinyllava_hf.training.merge import load_adapter_model
from tinyllava_hf.training.merge import main as merge_main


@pytest.fixture(scope="module")
def lora_run(components_dir, tmp_path_factory):
    """A 3-step finetune_lora stage on a NEW Phi + SigLIP model (so its base is saved next to the adapter)."""
    root = tmp_path_factory.mktemp("lora")
    data = write_llava_dataset(root)
    output_dir = run(train_argv(
        "finetune_lora", root / "out", data, "--llm", str(components_dir / "phi"), "--vision_tower",
        str(components_dir / "siglip"), "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0",
        "--learning_rate", "1e-2",
    ))  # fmt: skip
    return Path(output_dir)


def batch(processor):
    messages = [{"role": "user", "content": text_to_parts("<image>\nWhat is in the image?")},
                {"role": "assistant", "content": text_to_parts("A red square.")}]  # fmt: skip
    return TinyLlavaCollator(processor)([{"id": "x", "messages": messages, "images": [make_image()]}])


def test_lora_stage_writes_adapter_offline_base_and_merged_model(lora_run):
    adapter_config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    base = Path(adapter_config["base_model_name_or_path"])
    assert base.is_absolute() and base == (lora_run / "base_model").resolve()
    assert (base / "model.safetensors").is_file() and (base / "processor_config.json").is_file()
    assert (lora_run / "model.safetensors").is_file() and (lora_run / "README.md").is_file()
    stage = json.loads((lora_run / "tinyllava_run.json").read_text())["stages"][-1]
    assert stage["lora"] and stage["hyperparameters"]["lora_r"] == 4
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in adapter.items())
    assert any("connector" in key for key in adapter)
    assert not any("vision_tower" in key for key in adapter)
    # The merged LLM differs from the base (the adapter did something), the vision tower does not.
    merged, original = load_file(lora_run / "model.safetensors"), load_file(base / "model.safetensors")
    assert not torch.equal(merged["model.language_model.layers.0.self_attn.q_proj.weight"],
                           original["model.language_model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    assert all(torch.equal(merged[k], original[k]) for k in original if k.startswith("model.vision_tower."))


def test_adapter_on_its_base_equals_the_merged_checkpoint(lora_run):
    processor = TinyLlavaProcessor.from_pretrained(lora_run)
    inputs = batch(processor)
    merged = TinyLlavaForConditionalGeneration.from_pretrained(lora_run)
    adapted = load_adapter_model(lora_run / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, merged(**inputs).logits, rtol=1e-4, atol=1e-5)


def test_tinyllava_merge_reproduces_the_merged_checkpoint(lora_run, tmp_path):
    merge_main([str(lora_run / "adapter"), str(tmp_path / "merged")])
    expected = load_file(lora_run / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[key], expected[key]) for key in expected)
    assert (tmp_path / "merged" / "processor_config.json").is_file()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        merge_main([str(tmp_path), str(tmp_path / "x")])
