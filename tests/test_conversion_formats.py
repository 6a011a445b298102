"""Original checkpoint layouts (Factory full/split, safetensors/.bin, legacy) convert strictly and faithfully."""

import argparse
import json
import math

import pytest
import torch
from conversion_helpers import component_parts, save_state_dict, write_factory_checkpoint, write_legacy_checkpoint
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.conversion import ConversionError, convert_original
from tinyllava_hf.conversion.cli import main
from tinyllava_hf.conversion.keymap import FACTORY, LEGACY


def load(dst):
    return TinyLlavaForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()


def assert_every_key_carried(source_state, keymap, model, vocab_rows):
    """Each source tensor reaches the converted model unchanged (vocabulary matrices: their original rows)."""
    state = model.state_dict()
    for key, tensor in source_state.items():
        converted = state[keymap.rename(key)]
        if converted.shape != tensor.shape:
            converted = converted[:vocab_rows]
        assert torch.equal(converted, tensor), key


@torch.no_grad()
def assert_text_logits_match_llm(model, components_dir, family, source_state):
    """Text-only logits equal the source LLM's own (the HF causal LM holding the source's `language_model.*`)."""
    llm = AutoModelForCausalLM.from_pretrained(components_dir / family, dtype=torch.float32).eval()
    prefix = "language_model."
    llm.load_state_dict({k[len(prefix) :]: v for k, v in source_state.items() if k.startswith(prefix)}, strict=False)
    ids = torch.tensor([[5, 17, 42, 99, 3, 7]])
    expected = llm(ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits[..., : expected.shape[-1]], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "family, vision, weights",
    [
        ("llama", "clip", "model.safetensors"),
        ("phi", "siglip", "pytorch_model.bin"),
        ("stablelm", "dinov2", "model.safetensors"),
    ],
)
def test_factory_full_save(components_dir, tmp_path, family, vision, weights):
    source = write_factory_checkpoint(components_dir, tmp_path / "src", family, vision, weights=weights)
    result = convert_original("factory", tmp_path / "src", tmp_path / "dst")
    assert result.max_abs_logit_diff <= 1e-4
    model = load(tmp_path / "dst")
    assert_every_key_carried(source, FACTORY, model, vocab_rows=model.config.text_config.vocab_size - 1)
    assert_text_logits_match_llm(model, components_dir, family, source)
    assert model.config.lm_head_bias == (family == "phi")
    assert model.config.vision_feature_select_strategy == "default"  # 'patch' drops the CLS token
    processor = TinyLlavaProcessor.from_pretrained(tmp_path / "dst")
    # No preprocessor_config.json in these sources: the towers' default processors at the stored image size (32 px,
    # patch 8) give CLIP 16 patches + CLS - CLS, SigLIP 16 patches - the first; DINOv2's default crop is 224 px.
    assert processor.num_image_tokens == {"clip": 16, "siglip": 15, "dinov2": 28 * 28}[vision]
    assert processor.tokenizer.model_max_length == 128


def test_factory_split_pretrain_layout_and_sharded_bf16_output(components_dir, tmp_path):
    source = write_factory_checkpoint(components_dir, tmp_path / "src", "qwen2", "siglip", split=True)
    assert not list((tmp_path / "src").glob("*.bin"))
    result = convert_original("factory", tmp_path / "src", tmp_path / "dst", dtype="bfloat16", max_shard_size="20KB")
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    for shard in shards:
        with safe_open(tmp_path / "dst" / shard, framework="pt") as handle:
            assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"BF16"}  # noqa: SIM118
    model = TinyLlavaForConditionalGeneration.from_pretrained(tmp_path / "dst")
    assert model.dtype == torch.bfloat16 and model.config.tie_word_embeddings
    assert "lm_head.weight" not in index["weight_map"]
    rows = model.config.text_config.vocab_size - 1
    for key, tensor in source.items():
        converted = model.state_dict()[FACTORY.rename(key)]
        torch.testing.assert_close(
            converted[: tensor.shape[0]] if converted.shape != tensor.shape else converted,
            tensor.to(torch.bfloat16),
            atol=0,
            rtol=0,
        )
    assert rows == len(TinyLlavaProcessor.from_pretrained(tmp_path / "dst").tokenizer) - 1
    assert result.max_abs_logit_diff <= 1e-4


def test_gemma_keeps_the_original_image_feature_scaling(components_dir, tmp_path):
    write_factory_checkpoint(components_dir, tmp_path / "src", "gemma", "siglip")
    result = convert_original("factory", tmp_path / "src", tmp_path / "dst")
    model = load(tmp_path / "dst")
    assert model.config.image_features_scale == pytest.approx(math.sqrt(model.config.text_config.hidden_size))
    assert result.max_abs_logit_diff <= 1e-4  # against the replay that scales the whole spliced sequence


@torch.no_grad()
def test_legacy_checkpoint(components_dir, tmp_path):
    source = write_legacy_checkpoint(components_dir, tmp_path / "src", "phi")
    result = convert_original(
        "legacy", tmp_path / "src", tmp_path / "dst", vision_config=tmp_path / "src" / "vision_tower_config"
    )
    assert result.max_abs_logit_diff <= 1e-4
    model = load(tmp_path / "dst")
    assert_every_key_carried(source, LEGACY, model, vocab_rows=model.config.text_config.vocab_size - 1)
    # The legacy tower dropped its last layer and head and fed every token of its last layer to the LLM: the full
    # tower's penultimate layer, all tokens.
    assert model.config.vision_config.num_hidden_layers == 1 and not model.config.vision_config.vision_use_head
    assert model.config.vision_feature_select_strategy == "full" and model.config.lm_head_bias is False
    *_, connector = component_parts(components_dir, "phi", "siglip")
    full_tower = AutoModel.from_pretrained(components_dir / "siglip", dtype=torch.float32).eval()
    pixels = torch.randn(1, 3, 32, 32)
    features = full_tower(pixels, output_hidden_states=True).hidden_states[-2]
    expected = torch.nn.functional.gelu(features @ connector["0.weight"].T + connector["0.bias"])
    expected = expected @ connector["2.weight"].T + connector["2.bias"]
    torch.testing.assert_close(torch.stack(model.get_image_features(pixels).pooler_output), expected, atol=1e-5, rtol=0)
    processor = TinyLlavaProcessor.from_pretrained(tmp_path / "dst")
    assert processor.image_aspect_ratio == "pad" and processor.num_image_tokens == 16
    notes = json.loads((tmp_path / "dst" / "conversion.json").read_text())["notes"]
    assert any("lm_head_bias=False" in note for note in notes) and any("1 of 2 layers" in note for note in notes)


def test_unknown_llm_family_is_named(components_dir, tmp_path):
    write_factory_checkpoint(components_dir, tmp_path / "src", "llama", "siglip")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["text_config"]["model_type"] = "openelm"
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="Unknown LLM family 'openelm'"):
        convert_original("factory", tmp_path / "src", tmp_path / "dst")


def test_missing_unexpected_and_misshapen_keys_are_listed(components_dir, tmp_path):
    state = write_factory_checkpoint(components_dir, tmp_path / "src", "llama", "siglip")
    state.pop("language_model.model.norm.weight")
    state["connector._connector.9.weight"] = torch.zeros(2)
    state["stray.tensor"] = torch.zeros(2)
    state["connector._connector.0.bias"] = torch.zeros(7)
    save_state_dict(state, tmp_path / "src" / "model.safetensors")
    with pytest.raises(ConversionError) as error:
        convert_original("factory", tmp_path / "src", tmp_path / "dst")
    message = str(error.value)
    assert (
        "model.language_model.norm.weight" in message
        and "Missing keys, needed by the model (1):\n  model.language_model.norm.weight" in message
    )
    assert "stray.tensor" in message and "connector._connector.9.weight -> model.connector.9.weight" in message
    assert "connector._connector.0.bias -> model.connector.0.bias: checkpoint [7], model [32]" in message
    assert not (tmp_path / "dst" / "model.safetensors").exists()  # nothing written before the check passes


def test_bin_files_are_loaded_weights_only(components_dir, tmp_path):
    write_factory_checkpoint(components_dir, tmp_path / "src", "llama", "siglip", weights="pytorch_model.bin")
    state = torch.load(tmp_path / "src" / "pytorch_model.bin", weights_only=True)
    # Any object beyond tensors and containers needs full unpickling (code execution), which weights_only refuses.
    torch.save({**state, "payload": argparse.Namespace(run="code")}, tmp_path / "src" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert_original("factory", tmp_path / "src", tmp_path / "dst")


def test_cli(components_dir, tmp_path, capsys):
    write_factory_checkpoint(components_dir, tmp_path / "src", "llama", "siglip")
    assert main(["factory", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "float16"]) == 0
    assert "max abs logit difference" in capsys.readouterr().out
    assert load(tmp_path / "dst").model.connector[0].weight.dtype == torch.float32  # loaded as asked
    assert TinyLlavaForConditionalGeneration.from_pretrained(tmp_path / "dst").dtype == torch.float16
    assert main(["factory", str(tmp_path / "src"), str(tmp_path / "dst")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["legacy", str(tmp_path / "src"), str(tmp_path / "dst2")]) == 1
    assert "architectures[0]" in capsys.readouterr().err


def test_source_repo_becomes_the_cards_base_model(components_dir, tmp_path, capsys):
    write_factory_checkpoint(components_dir, tmp_path / "src", "llama", "siglip")
    repo = "tinyllava/TinyLLaVA-Tiny-Test"
    assert main(["factory", str(tmp_path / "src"), str(tmp_path / "dst"), "--source-repo", repo, "--no-verify"]) == 0
    record = json.loads((tmp_path / "dst" / "conversion.json").read_text())
    assert (record["source"], record["source_path"]) == (repo, str(tmp_path / "src"))
    assert ModelCard.load(tmp_path / "dst" / "README.md").data.base_model == [repo]
    assert main(["factory", str(tmp_path / "src"), str(tmp_path / "dst2"), "--source-repo", "not a repo"]) == 1
    assert "--source-repo 'not a repo'" in capsys.readouterr().err
    assert not (tmp_path / "dst2").exists()  # refused before anything is written
