"""Verification loads a converted directory strictly with its weights left on disk, and computes the same logits."""

import pytest
import torch
from conftest import chat, make_image
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, SiglipVisionConfig

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.conversion import ConversionError
from tinyllava_hf.conversion.strict_load import load_strict


def untied_llama_with_pooling_head(directory):
    """A model whose SigLIP tower keeps its pooling head (as converted checkpoints do): an `nn.MultiheadAttention`."""
    config = TinyLlavaConfig(
        text_config=LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=16,
            vision_use_head=True,
        ),
        image_token_id=63,
    )
    torch.manual_seed(0)
    TinyLlavaForConditionalGeneration(config).save_pretrained(directory)
    ids = torch.tensor([[1, 2] + [63] * config.get_num_image_tokens(32, 32) + [3, 4]])
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}


@torch.no_grad()
def test_offloaded_model_gives_the_resident_logits(saved_model_dir):
    processor = TinyLlavaProcessor.from_pretrained(saved_model_dir)
    prompt = processor.apply_chat_template(chat(image=make_image()), add_generation_prompt=True)
    inputs = processor(text=prompt, images=make_image(), return_tensors="pt")
    resident = TinyLlavaForConditionalGeneration.from_pretrained(saved_model_dir, dtype=torch.float32).eval()
    with load_strict(saved_model_dir) as offloaded:
        # Decoder weights stay on disk between forwards; only the (tied) embedding matrix is resident.
        assert offloaded.model.language_model.layers[0].mlp.up_proj.weight.device.type == "meta"
        assert offloaded.get_input_embeddings().weight.device.type == "cpu"
        assert torch.equal(offloaded(**inputs).logits, resident(**inputs).logits)


@torch.no_grad()
def test_offloaded_model_runs_a_vision_pooling_head(tmp_path):
    inputs = untied_llama_with_pooling_head(tmp_path)
    resident = TinyLlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with load_strict(tmp_path) as offloaded:
        assert offloaded.lm_head.weight.device.type == "meta"
        assert torch.equal(offloaded(**inputs).logits, resident(**inputs).logits)


def test_a_missing_tensor_is_named(tmp_path):
    untied_llama_with_pooling_head(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.connector.2.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"missing_keys.*model\.connector\.2\.bias"), load_strict(tmp_path):
        pass
