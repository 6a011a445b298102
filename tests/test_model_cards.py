"""Model cards: what write_model_card reads from a checkpoint dir, its metadata, and that its usage snippets run."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessorPil,
)

from tinyllava_hf.chat_templates import CHAT_TEMPLATES
from tinyllava_hf.model_cards import merge_eval_results, write_model_card
from tinyllava_hf.model_cards.card import placeholder_repo_id
from tinyllava_hf.model_cards.checkpoint import read_architecture

LLM_ID = "Qwen/Qwen2-0.5B"
VISION_ID = "google/siglip-so400m-patch14-384"
POPE = {
    "task": "pope",
    "dataset_name": "POPE",
    "dataset_type": "lmms-lab/POPE",
    "split": "test",
    "metrics": {"accuracy": 0.85, "f1": 0.84},
}


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")


def add_training_run(checkpoint_dir, pretrain_dir):
    """The files a two-stage run (pretrain from Hub components, then LoRA finetune) leaves in its output dir."""
    write_json(
        checkpoint_dir / "tinyllava_run.json",
        {
            "stages": [
                {
                    "recipe": "pretrain",
                    "llm": LLM_ID,
                    "vision_tower": VISION_ID,
                    "base_checkpoint": None,
                    "datasets": ["liuhaotian/LLaVA-Pretrain"],
                    "hyperparameters": {"learning_rate": 1e-3, "tune": "connector"},
                    "steps": 2181,
                    "final_loss": 2.5,
                    "lora": False,
                },
                {
                    "recipe": "finetune_lora",
                    "llm": None,
                    "vision_tower": None,
                    "base_checkpoint": str(pretrain_dir),
                    "datasets": ["data/llava_v1_5_mix665k.json"],
                    "hyperparameters": {"learning_rate": 2e-4, "lora_r": 128},
                    "steps": 5197,
                    "final_loss": 1.25,
                    "lora": True,
                    "skipped_or_truncated_samples": {"truncated": 3},
                },
            ]
        },
    )
    write_json(
        checkpoint_dir / "trainer_state.json",
        {
            "global_step": 5197,
            "epoch": 1.0,
            "train_batch_size": 4,
            "log_history": [{"loss": 1.5, "step": 10}, {"loss": 1.25, "step": 5190}, {"train_runtime": 812.5}],
        },
    )
    Image.new("RGB", (8, 8), "white").save(checkpoint_dir / "loss_curve.png")


def python_blocks(card_text):
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL)


def run_snippets(card_text, placeholder, local_dir, cwd):
    """Runs each Python block of a card, as written but for the repo id, in a fresh offline interpreter."""
    blocks = [block.replace(placeholder, str(local_dir)) for block in python_blocks(card_text)]
    # One interpreter for all blocks (start-up is the slow part); each block gets its own namespace.
    driver = (
        "import sys\nfor block in sys.argv[1:]:\n    exec(compile(block, '<card>', 'exec'), {'__name__': '__main__'})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", driver, *blocks],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return blocks


@pytest.fixture
def checkpoint_copy(saved_model_dir, tmp_path):
    path = tmp_path / "tiny-tinyllava"
    shutil.copytree(saved_model_dir, path)
    return path


@pytest.fixture(scope="module")
def native_llava_dir(components_dir, tmp_path_factory):
    """A tiny transformers LlavaForConditionalGeneration dir, as `tinyllava-convert to-llava` writes one."""
    path = tmp_path_factory.mktemp("llava") / "tiny-llava"
    tokenizer = AutoTokenizer.from_pretrained(components_dir / "qwen2")
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    text_config = AutoConfig.from_pretrained(components_dir / "qwen2")
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(
        vision_config=AutoConfig.from_pretrained(components_dir / "siglip"),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATES["qwen2_base"],
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    write_json(
        path / "conversion.json",
        {"source": "someone/TinyLLaVA-Qwen2-0.5B-SigLIP", "format": "llava", "max_abs_logit_diff": 0.0, "lossy": False},
    )
    return path, model


def test_parameter_counts_match_the_model(tiny_model_and_processor, saved_model_dir):
    model, _ = tiny_model_and_processor
    counts = read_architecture(saved_model_dir).parameters
    assert counts["vision_tower"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert counts["connector"] == sum(p.numel() for p in model.model.connector.parameters())
    assert counts["total"] == model.num_parameters()  # the tied lm_head is counted once


def test_card_of_a_trained_checkpoint(checkpoint_copy, tmp_path):
    pretrain_dir = tmp_path / "out" / "pretrain"
    pretrain_dir.mkdir(parents=True)
    add_training_run(checkpoint_copy, pretrain_dir)
    write_json(checkpoint_copy / "eval_results.json", {"results": [POPE]})

    card = ModelCard.load(write_model_card(checkpoint_copy))
    data = card.data
    assert (data.pipeline_tag, data.library_name, data.license, data.language) == (
        "image-text-to-text",
        "transformers",
        "apache-2.0",
        "en",
    )
    # The LoRA stage started from a local dir made by the pretrain stage, which started from two Hub models.
    assert data.base_model == [LLM_ID, VISION_ID]
    assert data.base_model_relation == "finetune"
    assert data.datasets == ["liuhaotian/LLaVA-Pretrain"]  # the local JSON file is not a Hub dataset
    assert {"tinyllava", "llava", "vision-language", "image-text-to-text", "trl", "sft", "lora"} <= set(data.tags)
    metrics = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert metrics == {("lmms-lab/POPE", "accuracy"): 0.85, ("lmms-lab/POPE", "f1"): 0.84}
    assert data.to_dict()["model-index"][0]["name"] == "tiny-tinyllava"

    text = card.text
    assert "![Training loss](loss_curve.png)" in text
    assert "| 2 | `finetune_lora` | `pretrain` (local) | `llava_v1_5_mix665k.json` | 5197 | 1.2500 | yes |" in text
    assert "| `lora_r` | 128 |" in text
    assert "| `skipped_or_truncated_samples` | {'truncated': 3} |" in text  # keys beyond the contract are kept
    assert "| pope | [POPE](https://huggingface.co/datasets/lmms-lab/POPE) | test | accuracy | 0.85 |" in text
    assert "| Image tokens per image | 16 |" in text and "| Context length | 256 tokens" in text
    assert "@misc{zhou2024tinyllava" in text and "## Limitations and bias" in text
    assert str(tmp_path) not in text  # local paths are shown by name only


def test_card_of_a_bare_checkpoint_claims_nothing_it_does_not_know(checkpoint_copy):
    write_json(checkpoint_copy / "eval_results.json", {"results": [{**POPE, "dataset_type": "synthetic-shapes"}]})
    assert "| pope | POPE | test |" in write_model_card(checkpoint_copy).read_text()  # no link for a bare name
    (checkpoint_copy / "eval_results.json").unlink()
    data = ModelCard.load(write_model_card(checkpoint_copy)).data.to_dict()
    # The components were local dirs: no base model, no datasets, no training tags, no model-index.
    assert not {"base_model", "base_model_relation", "datasets", "model-index"} & set(data)
    assert "trl" not in data["tags"]
    text = (checkpoint_copy / "README.md").read_text()
    assert "## Training details" not in text and "## Evaluation" not in text and "loss_curve" not in text


def test_regenerating_keeps_the_chosen_license(checkpoint_copy):
    write_model_card(checkpoint_copy, license="mit", language=["en", "fr"])
    data = ModelCard.load(write_model_card(checkpoint_copy)).data
    assert (data.license, data.language) == ("mit", ["en", "fr"])


def test_usage_snippets_run_as_written(checkpoint_copy, tmp_path):
    text = (write_model_card(checkpoint_copy)).read_text()
    blocks = run_snippets(text, placeholder_repo_id(checkpoint_copy), checkpoint_copy, tmp_path)
    assert len(blocks) == 2 and all("trust_remote_code=True" in block for block in blocks)
    assert 'pipeline("image-text-to-text"' in blocks[0] and "AutoModelForImageTextToText" in blocks[1]
    assert "tinyllava-convert to-llava" in text  # mlp2x_gelu + SigLIP + Qwen2 maps onto LLaVA exactly


def test_native_llava_card_runs_without_remote_code(native_llava_dir, tmp_path):
    path, model = native_llava_dir
    card = ModelCard.load(write_model_card(path))
    assert card.data.base_model == ["someone/TinyLLaVA-Qwen2-0.5B-SigLIP"]
    assert "## Conversion" in card.text and "[someone/TinyLLaVA-Qwen2-0.5B-SigLIP]" in card.text
    assert read_architecture(path).parameters["total"] == model.num_parameters()  # legacy on-disk keys counted
    blocks = run_snippets(card.content, placeholder_repo_id(path), path, tmp_path)
    assert len(blocks) == 2 and not any("trust_remote_code" in block for block in blocks)


def test_llava_blockers_are_explained(components_dir, tmp_path):
    from conftest import assemble

    model, processor = assemble(components_dir, "phi", "dinov2")
    model.save_pretrained(tmp_path / "phi-dinov2")
    processor.save_pretrained(tmp_path / "phi-dinov2")
    text = write_model_card(tmp_path / "phi-dinov2").read_text()
    assert "LM head has a bias" in text and "no DINOv2 vision tower" in text
    assert "tinyllava-convert to-llava --allow-lossy" in text


def test_merge_eval_results_replaces_same_benchmark(checkpoint_copy, tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write_json(
        old,
        {
            "results": [
                POPE,
                {
                    **POPE,
                    "task": "mme",
                    "dataset_type": "lmms-lab/MME",
                    "dataset_name": "MME",
                    "metrics": {"score": 1400.0},
                },
            ]
        },
    )
    write_json(new, {"results": [{**POPE, "metrics": {"accuracy": 0.9}}]})
    merged = json.loads(merge_eval_results(checkpoint_copy, [old, new]).read_text())["results"]
    assert [(r["task"], r["metrics"]) for r in merged] == [("pope", {"accuracy": 0.9}), ("mme", {"score": 1400.0})]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({**POPE, "dataset_type": ""}, r"results\[0\] needs a non-empty string 'dataset_type'"),
        ({**POPE, "metrics": {"accuracy": "high"}}, r"results\[0\]: metric 'accuracy' must be a finite number"),
        ({**POPE, "metrics": {}}, r"results\[0\] needs a non-empty 'metrics'"),
    ],
)
def test_bad_eval_results_are_named(checkpoint_copy, tmp_path, result, message):
    bad = tmp_path / "pope_summary.json"
    write_json(bad, {"results": [result]})
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*" + message):
        merge_eval_results(checkpoint_copy, [bad])


def test_bad_run_metadata_is_named(checkpoint_copy):
    write_json(checkpoint_copy / "tinyllava_run.json", {"stages": [{"recipe": "pretrain", "datasets": "a.json"}]})
    with pytest.raises(ValueError, match=r"tinyllava_run.json: stages\[0\] needs 'datasets' as a list"):
        write_model_card(checkpoint_copy)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        write_model_card(tmp_path)
    write_json(tmp_path / "config.json", {"model_type": "bert"})
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        write_model_card(tmp_path)


def test_card_cli_merges_eval_results_and_regenerates(checkpoint_copy, tmp_path, capsys):
    from tinyllava_hf.model_cards.cli import card_main

    summary = tmp_path / "pope_summary.json"
    write_json(summary, {"results": [POPE]})
    card_main([str(checkpoint_copy), "--eval-results", str(summary), "--repo-id", "me/tiny"])
    assert capsys.readouterr().out.strip() == str(checkpoint_copy / "README.md")
    card = ModelCard.load(checkpoint_copy / "README.md")
    assert len(card.data.eval_results) == 2 and 'model_id = "me/tiny"' in card.text
    assert json.loads((checkpoint_copy / "eval_results.json").read_text()) == {"results": [POPE]}
