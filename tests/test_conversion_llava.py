"""TinyLLaVA-HF <-> transformers LLaVA: exact round trips, and lossy models refused unless asked."""

import json

import pytest
import torch
from conftest import assemble, make_image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.conversion import ConversionError, from_llava, to_llava
from tinyllava_hf.model_cards.publish import check_loads


def save(model, processor, path):
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@torch.no_grad()
def logits(model, processor, image):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    return inputs["input_ids"], model(**inputs).logits


@pytest.mark.parametrize("family, vision", [("qwen2", "siglip"), ("llama", "clip")])
def test_round_trip_is_exact(components_dir, tmp_path, family, vision):
    model, processor = assemble(components_dir, family, vision)
    src = save(model, processor, tmp_path / "ours")
    result = to_llava(src, tmp_path / "llava")
    assert result.max_abs_logit_diff == 0.0 and not result.lossy

    # The LLaVA directory is plain transformers: no remote code in it, none needed to load it.
    assert not list((tmp_path / "llava").glob("*.py"))
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["model_type"] == "llava"
    llava = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava", dtype=torch.float32).eval()
    llava_processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    assert isinstance(llava, LlavaForConditionalGeneration)
    image = make_image()
    ours_ids, ours_logits = logits(model.eval(), processor, image)
    llava_ids, llava_logits = logits(llava, llava_processor, image)
    assert torch.equal(ours_ids, llava_ids) and torch.equal(ours_logits, llava_logits)

    from_llava(tmp_path / "llava", tmp_path / "back")
    back = TinyLlavaForConditionalGeneration.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    back_processor = TinyLlavaProcessor.from_pretrained(tmp_path / "back")
    original_state, back_state = model.state_dict(), back.state_dict()
    assert original_state.keys() == back_state.keys()
    assert all(torch.equal(original_state[key], back_state[key]) for key in original_state)
    for field in (
        "connector_type",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_token_id",
        "tie_word_embeddings",
        "lm_head_bias",
        "image_features_scale",
    ):
        assert getattr(back.config, field) == getattr(model.config, field), field
    assert back.config.text_config.to_dict() == model.config.text_config.to_dict()
    assert back_processor.num_image_tokens == processor.num_image_tokens
    assert back_processor.chat_template == processor.chat_template
    back_ids, back_logits = logits(back, back_processor, image)
    assert torch.equal(back_ids, ours_ids) and torch.equal(back_logits, ours_logits)


def test_lossy_models_are_refused_then_measured(components_dir, tmp_path):
    model, processor = assemble(components_dir, "phi", "siglip")
    with torch.no_grad():
        model.lm_head.bias.normal_()  # a trained Phi-2 head has a bias LLaVA cannot hold
    src = save(model, processor, tmp_path / "phi")
    with pytest.raises(ConversionError, match="non-zero bias") as error:
        to_llava(src, tmp_path / "refused")
    assert "--allow-lossy" in str(error.value) and not (tmp_path / "refused").exists()
    result = to_llava(src, tmp_path / "lossy", allow_lossy=True)
    record = json.loads((tmp_path / "lossy" / "conversion.json").read_text())
    assert record["lossy"] is True and record["max_abs_logit_diff"] == result.max_abs_logit_diff > 0


def test_zero_phi_bias_converts_exactly(components_dir, tmp_path):
    model, processor = assemble(components_dir, "phi", "siglip")  # fresh head: zero bias, nothing is lost
    result = to_llava(save(model, processor, tmp_path / "phi"), tmp_path / "llava")
    assert result.max_abs_logit_diff == 0.0 and not result.lossy


@pytest.mark.parametrize(
    "family, vision, kwargs, processor_kwargs, reason",
    [
        ("gemma", "siglip", {"image_features_scale": 5.0}, {}, "scaled by 5"),
        ("llama", "dinov2", {}, {}, "'dinov2'"),
        ("llama", "siglip", {}, {"image_aspect_ratio": "pad"}, "image_aspect_ratio='pad'"),
    ],
)
def test_unrepresentable_features_are_named(components_dir, tmp_path, family, vision, kwargs, processor_kwargs, reason):
    model, processor = assemble(components_dir, family, vision, **kwargs)
    for name, value in processor_kwargs.items():
        setattr(processor, name, value)
    src = save(model, processor, tmp_path / "src")
    with pytest.raises(ConversionError, match=reason):
        to_llava(src, tmp_path / "dst")


@pytest.mark.parametrize("connector_type", ["resampler", "linear", "mlp3x_gelu"])
def test_other_connectors_are_never_converted(components_dir, tmp_path, connector_type):
    model, processor = assemble(components_dir, "llama", "siglip", connector_type=connector_type)
    src = save(model, processor, tmp_path / "src")
    with pytest.raises(ConversionError, match="no LLaVA equivalent"):
        to_llava(src, tmp_path / "dst", allow_lossy=True)


def test_llava_export_is_plain_transformers(components_dir, tmp_path):
    """No remote-code entry and no load-time leftover anywhere; loads and generates where this package cannot load."""
    model, processor = assemble(components_dir, "qwen2", "siglip")
    export = tmp_path / "export"
    to_llava(save(model, processor, tmp_path / "ours"), export)
    for path in export.glob("*.json"):
        text = path.read_text()
        assert "auto_map" not in text and "tinyllava" not in text.lower(), path.name
        assert "local_files_only" not in text and "is_local" not in text, path.name
    assert sorted(path.name for path in export.iterdir() if path.suffix not in (".json", ".md")) == [
        "chat_template.jinja",
        "model.safetensors",
    ]
    # A fresh interpreter with this repository's packages unimportable, trust_remote_code=False, greedy generation.
    assert check_loads(export, trust_remote_code=False) == "loaded LlavaForConditionalGeneration + LlavaProcessor"
