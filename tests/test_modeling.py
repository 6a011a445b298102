"""The model: every LLM family and vision tower, the forward contract, generation and the connectors."""

import copy
import math

import pytest
import torch
from conftest import LLM_FAMILIES, assemble, chat, make_image

from modeling_tinyllava import (
    TinyLlavaCausalLMOutputWithPast,
    TinyLlavaConfig,
    TinyLlavaForConditionalGeneration,
    TinyLlavaModelOutputWithPast,
)


def _inputs(processor, messages, **kwargs):
    return processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, **kwargs},
    )


@pytest.mark.parametrize("vision", ["clip", "siglip"])
@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_every_family_and_tower_runs_forward_and_generate(components_dir, family, vision):
    model, processor = assemble(components_dir, family, vision)
    inputs = _inputs(processor, chat(image=make_image()))
    logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_dinov2_tower_runs(components_dir):
    model, processor = assemble(components_dir, "llama", "dinov2")
    assert torch.isfinite(model(**_inputs(processor, chat(image=make_image()))).logits).all()


def test_phi_lm_head_has_bias_and_qwen2_is_tied(components_dir):
    phi, _ = assemble(components_dir, "phi", "siglip")
    assert phi.lm_head.bias is not None
    qwen, _ = assemble(components_dir, "qwen2", "siglip")
    assert qwen.config.tie_word_embeddings
    assert qwen.lm_head.weight.data_ptr() == qwen.get_input_embeddings().weight.data_ptr()


def test_pretrained_components_keep_their_weights(components_dir):
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    model, _ = assemble(components_dir, "llama", "siglip")
    llm = AutoModelForCausalLM.from_pretrained(components_dir / "llama")
    vision = SiglipVisionModel.from_pretrained(components_dir / "siglip")
    layer = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(layer, llm.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(
        model.model.vision_tower.embeddings.patch_embedding.weight, vision.embeddings.patch_embedding.weight
    )
    assert not hasattr(model.model.vision_tower, "head"), "SigLIP's unused pooling head should not be built"
    # The tokenizer gained <image>, so the embeddings grew by one row and kept the old ones.
    old = llm.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight[: len(old)], old)


def test_labels_give_the_shifted_loss_ignoring_minus_100(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor, chat(image=make_image()))
    labels = inputs["input_ids"].clone()
    labels[:, :10] = -100
    out = model(**inputs, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_inputs_embeds_logits_to_keep_hidden_states_and_attentions(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor, chat(image=make_image()))
    full = model(**inputs, output_hidden_states=True)
    assert len(full.hidden_states) == model.config.text_config.num_hidden_layers + 1
    last = model(**inputs, logits_to_keep=1)
    torch.testing.assert_close(last.logits, full.logits[:, -1:])
    embeds = model.model.merge_image_features(
        inputs["input_ids"],
        model.get_input_embeddings()(inputs["input_ids"]),
        torch.stack(model.get_image_features(inputs["pixel_values"]).pooler_output),
    )
    from_embeds = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(from_embeds.logits, full.logits)
    eager, _ = _reload_with_attention(model, "eager")
    attentions = eager(**inputs, output_attentions=True).attentions
    assert len(attentions) == model.config.text_config.num_hidden_layers
    assert attentions[0].shape[-1] == inputs["input_ids"].shape[1]


def _reload_with_attention(model, implementation):
    clone = TinyLlavaForConditionalGeneration(copy.deepcopy(model.config))
    clone.load_state_dict(model.state_dict())
    clone.set_attn_implementation(implementation)
    return clone.eval(), implementation


def test_sdpa_is_the_default_and_matches_eager(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    inputs = _inputs(processor, chat(image=make_image()))
    eager, _ = _reload_with_attention(model, "eager")
    torch.testing.assert_close(eager(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_each_part_sets_its_own_attention(components_dir):
    """A model assembled from pretrained parts keeps one config object per part, so a per-part attention choice
    reaches the part (transformers finds sub-models by their config's identity)."""
    model, _ = assemble(components_dir, "llama", "siglip")
    assert model.config.text_config is model.model.language_model.config
    assert model.config.vision_config is model.model.vision_tower.config
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})
    assert model.model.language_model.layers[0].self_attn.config._attn_implementation == "eager"
    assert model.model.vision_tower.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_gives_the_same_gradients(components_dir):
    model, processor = assemble(components_dir, "llama", "siglip")
    inputs = _inputs(processor, chat(image=make_image()))
    model.train()

    def connector_grad():
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return model.model.connector[0].weight.grad.clone()

    plain = connector_grad()
    model.gradient_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing
    torch.testing.assert_close(connector_grad(), plain)


def test_generation_with_cache_equals_without(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor, chat(image=make_image()))
    with_cache = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    without = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_pixel_values_reach_the_model_only_on_prefill(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("pixel_values") is not None), with_kwargs=True
    )
    try:
        model.generate(**_inputs(processor, chat(image=make_image())), max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    assert seen == [True, False, False, False]


def test_left_padded_batch_generates_like_each_prompt_alone(varied_model_and_processor):
    model, processor = varied_model_and_processor
    conversations = [
        chat("Describe the picture.", image=make_image()),
        chat("How many circles are there? Is there a green triangle?", image=make_image(seed=1)),
    ]
    alone = [
        model.generate(**_inputs(processor, conversation), max_new_tokens=5, do_sample=False)[0, -5:]
        for conversation in conversations
    ]
    assert not torch.equal(alone[0], alone[1]), "the prompts must give different answers, or the test proves nothing"
    batch = _inputs(processor, conversations)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the shorter prompt must be left-padded"
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
    for row in range(len(conversations)):
        assert torch.equal(generated[row], alone[row])


def test_several_images_and_text_only_samples_share_a_batch(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    two_images = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": make_image()},
                {"type": "image", "image": make_image(seed=2)},
                {"type": "text", "text": "Compare."},
            ],
        }
    ]
    text_only = chat("What color is the square?")
    batch = _inputs(processor, [two_images, text_only])
    assert batch["pixel_values"].shape[0] == 2
    logits = model(**batch).logits
    for row, conversation in enumerate([two_images, text_only]):
        alone = _inputs(processor, conversation)
        length = alone["input_ids"].shape[1]
        torch.testing.assert_close(logits[row, -length:][-1], model(**alone).logits[0, -1], rtol=1e-4, atol=1e-4)


def test_placeholder_and_feature_count_mismatch_is_an_error(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor, chat(image=make_image()))
    inputs["input_ids"][0, inputs["input_ids"][0].tolist().index(processor.image_token_id)] = 0
    n = processor.num_image_tokens
    with pytest.raises(ValueError, match=f"{n - 1} image placeholder tokens but the images give {n} features"):
        model(**inputs)


@pytest.mark.parametrize(
    ("connector_type", "expected_keys"),
    [
        ("mlp2x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias"}),
        ("mlp3x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
        ("linear", {"weight", "bias"}),
    ],
)
def test_connectors_keep_the_original_parameter_layout(components_dir, connector_type, expected_keys):
    model, processor = assemble(components_dir, "llama", "siglip", connector_type=connector_type)
    assert set(model.model.connector.state_dict()) == expected_keys
    assert torch.isfinite(model(**_inputs(processor, chat(image=make_image()))).logits).all()


def test_resampler_connector_outputs_num_queries_tokens(components_dir):
    model, processor = assemble(
        components_dir, "llama", "siglip", connector_type="resampler", num_queries=4, num_resampler_layers=2
    )
    keys = set(model.model.connector.state_dict())
    assert {"latents", "linear.weight", "layers.1.0.to_kv.weight", "layers.1.1.3.weight", "norm.weight"} <= keys
    inputs = _inputs(processor, chat(image=make_image()))
    assert torch.stack(model.get_image_features(inputs["pixel_values"]).pooler_output).shape == (
        1,
        4,
        model.config.text_config.hidden_size,
    )
    assert torch.isfinite(model(**inputs).logits).all()


def test_identity_connector_needs_equal_widths(components_dir):
    with pytest.raises(ValueError, match="equal vision and text hidden sizes"):
        assemble(components_dir, "llama", "siglip", connector_type="identity", vision_feature_layer=[-2, -1])


def test_vision_feature_layers_are_concatenated(components_dir):
    model, processor = assemble(components_dir, "llama", "siglip", vision_feature_layer=[-2, -1])
    assert model.model.connector[0].in_features == 2 * model.config.vision_config.hidden_size
    pixel_values = _inputs(processor, chat(image=make_image()))["pixel_values"]
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    expected = model.model.connector(torch.cat([hidden[-2], hidden[-1]], dim=-1))
    torch.testing.assert_close(torch.stack(model.get_image_features(pixel_values).pooler_output), expected)


def test_default_strategy_drops_the_first_token(components_dir):
    model, processor = assemble(components_dir, "llama", "siglip", vision_feature_select_strategy="default")
    pixel_values = _inputs(processor, chat(image=make_image()))["pixel_values"]
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(
        torch.stack(model.get_image_features(pixel_values).pooler_output), model.model.connector(hidden[:, 1:])
    )


def test_image_features_scale_multiplies_the_connector_output(components_dir):
    model, processor = assemble(components_dir, "gemma", "siglip")
    pixel_values = _inputs(processor, chat(image=make_image()))["pixel_values"]
    plain = torch.stack(model.get_image_features(pixel_values).pooler_output)
    model.config.image_features_scale = math.sqrt(model.config.text_config.hidden_size)
    torch.testing.assert_close(
        torch.stack(model.get_image_features(pixel_values).pooler_output), plain * model.config.image_features_scale
    )


def test_unknown_connector_and_model_types_are_errors():
    with pytest.raises(ValueError, match="Unknown connector_type 'mlp2x_relu'"):
        TinyLlavaConfig(connector_type="mlp2x_relu")
    with pytest.raises(ValueError, match="Unsupported vision_config.model_type 'vit'"):
        TinyLlavaConfig(vision_config={"model_type": "vit"})
    with pytest.raises(ValueError, match="not_a_model"):
        TinyLlavaConfig(text_config={"model_type": "not_a_model"})
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        TinyLlavaConfig(vision_feature_select_strategy="patch")


def test_config_is_self_contained_and_builds_offline():
    config = TinyLlavaConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 100,
            "tie_word_embeddings": True,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        image_token_id=99,
    )
    restored = TinyLlavaConfig.from_dict(config.to_dict())
    assert restored.text_config.model_type == "qwen2" and restored.vision_config.hidden_size == 16
    assert restored.tie_word_embeddings and restored.vision_feature_select_strategy == "full"
    model = TinyLlavaForConditionalGeneration(restored)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_outputs_carry_the_image_features_and_return_dict_false_gives_a_tuple(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor, chat(image=make_image()))
    out = model(**inputs)
    assert isinstance(out, TinyLlavaCausalLMOutputWithPast)
    features = torch.stack(model.get_image_features(inputs["pixel_values"]).pooler_output)
    assert out.image_hidden_states.shape == (1, processor.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(out.image_hidden_states, features)
    backbone = model.model(**inputs)
    assert isinstance(backbone, TinyLlavaModelOutputWithPast)
    torch.testing.assert_close(backbone.image_hidden_states, features)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)
    assert isinstance(model.model(**inputs, return_dict=False), tuple)
    assert isinstance(model.get_image_features(inputs["pixel_values"], return_dict=False), tuple)
    text_only = _inputs(processor, chat())
    assert model(**text_only).image_hidden_states is None


def test_get_image_features_takes_llava_overrides(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    pixel_values = _inputs(processor, chat(image=make_image()))["pixel_values"]
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    full = model.get_image_features(pixel_values, vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.testing.assert_close(torch.stack(full.pooler_output), model.model.connector(hidden[-1]))


@pytest.mark.parametrize("vision", ["siglip", "clip", "dinov2"])
def test_no_split_modules_name_only_classes_the_model_contains(components_dir, vision):
    # FSDP auto-wrap fails on a listed class the model lacks (e.g. SiglipTextEmbeddings from the SigLIP base class).
    model, _ = assemble(components_dir, "llama", vision)
    present = {type(module).__name__ for module in model.modules()}
    assert model._no_split_modules, "the decoder and encoder layers should stay unsplit"
    assert set(model._no_split_modules) <= present, set(model._no_split_modules) - present
    assert "LlamaDecoderLayer" in model._no_split_modules
    reloaded = TinyLlavaForConditionalGeneration(model.config)
    assert set(reloaded._no_split_modules) == set(model._no_split_modules)
