"""Assembles a NEW TinyLLaVA model and its processor from a pretrained causal LM and a pretrained vision encoder.

This is the work behind the public entry points [`TinyLlavaForConditionalGeneration.from_pretrained_components`] and
[`TinyLlavaProcessor.from_pretrained_components`]: loading the parts, adding `<image>` to the tokenizer with the
original's pad-token rules, and choosing the chat template. It lives outside `modeling_tinyllava/` because a saved
checkpoint never needs it: only the config/modeling/processing trio ships with the weights as Hub remote code.
"""

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.tokenization_utils_base import AddedToken

from modeling_tinyllava.configuration_tinyllava import TinyLlavaConfig
from modeling_tinyllava.modeling_tinyllava import build_connector
from modeling_tinyllava.processing_tinyllava import IMAGE_TOKEN, processed_image_size

from .chat_templates import resolve_chat_template


def add_image_token(tokenizer, text_model_type: str):
    """Prepares an LLM tokenizer for TinyLLaVA, in place.

    Adds `<image>` as a special token, sets the pad token by the original's rules (reference §1.4) and pads on the
    left, as batched generation (and the image-text-to-text pipeline, which pads with the tokenizer's side) needs.
    Training collators pad on the right explicitly.

    Returns:
        The same tokenizer.
    """
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"  # init_kwargs is what gets saved
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = IMAGE_TOKEN
    if text_model_type in ("phi", "llama", "gemma") and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif text_model_type == "qwen2" and tokenizer.unk_token is None:
        tokenizer.unk_token = tokenizer.pad_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer_with_image_token(llm: str, **tokenizer_kwargs):
    """The tokenizer of `llm` with `<image>` added and its pad token set (see `add_image_token`)."""
    tokenizer = AutoTokenizer.from_pretrained(llm, **tokenizer_kwargs)
    return add_image_token(tokenizer, AutoConfig.from_pretrained(llm).model_type)


def load_component_configs(llm: str, vision_tower: str):
    """Text and vision configs of pretrained components; a dual CLIP/SigLIP config is reduced to its vision part.

    Returns:
        `(text_config, vision_config)`.
    """
    vision_config = AutoConfig.from_pretrained(vision_tower)
    vision_config = getattr(vision_config, "vision_config", None) or vision_config
    if getattr(vision_config, "vision_use_head", False):
        vision_config.vision_use_head = False  # SigLIP's pooling head: TinyLLaVA never uses it, so don't compute it
    return AutoConfig.from_pretrained(llm), vision_config


def build_skeleton(cls, config, dtype: torch.dtype | str):
    """The model whose LM, vision tower and head are replaced at once by the pretrained parts, built cheaply.

    Normally on the meta device, so the throwaway parts cost nothing. Under DeepSpeed ZeRO-3 (which transformers
    treats as active as soon as a ZeRO-3 `TrainingArguments` exists) transformers builds every sub-model through
    `deepspeed.zero.Init` and initialises it through gathered parameters, which cannot run on meta tensors ("Cannot
    copy out of meta tensor"); the skeleton is then built partitioned, each rank holding 1/world_size of it. Its
    random init runs under a forked RNG, so the connector initialised next gets the same weights as in one process.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        with torch.random.fork_rng(devices=[]):
            return cls._from_config(config, dtype=dtype)
    with torch.device("meta"):
        return cls(config)


def assemble_model(
    cls,
    llm: str,
    vision_tower: str,
    connector_type: str = "mlp2x_gelu",
    dtype: torch.dtype | str = torch.float32,
    **config_kwargs,
):
    """See [`TinyLlavaForConditionalGeneration.from_pretrained_components`]; `cls` is the class to build."""
    tokenizer = load_tokenizer_with_image_token(llm)
    text_config, vision_config = load_component_configs(llm, vision_tower)
    config = cls.config_class(
        text_config=text_config,
        vision_config=vision_config,
        connector_type=connector_type,
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        **config_kwargs,
    )
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
    vision_model = AutoModel.from_pretrained(vision_tower, config=vision_config, dtype=dtype)
    model = build_skeleton(cls, config, dtype)
    # Swap in the pretrained parts, then materialise the only fresh module, the connector.
    model.model.language_model = getattr(language_model, language_model.base_model_prefix)
    model.model.vision_tower = vision_model
    # One config object per part, as `cls(config)` has it: transformers finds a sub-model by its config's identity
    # (`set_attn_implementation({"text_config": ...})`, sub-config defaults), and the loaded parts bring their own.
    model.config.text_config = model.model.language_model.config
    model.config.vision_config = vision_model.config
    lm_head = language_model.get_output_embeddings()
    if config.lm_head_bias and lm_head.bias is None:
        raise ValueError(f"{llm} has an LM head without bias, but lm_head_bias=True was requested.")
    model.lm_head = lm_head
    model.model.connector = build_connector(config).to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.model.connector.apply(model._init_weights)
    model.config.dtype = model.model.language_model.dtype
    if len(tokenizer) > config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.tie_weights()
    model.generation_config = language_model.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def assemble_processor(
    cls,
    llm: str,
    vision_tower: str,
    chat_template: str | None = None,
    image_aspect_ratio: str = "square",
    model_max_length: int | None = None,
    **config_kwargs,
):
    """See [`TinyLlavaProcessor.from_pretrained_components`]; `cls` is the class to build."""
    tokenizer_kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = load_tokenizer_with_image_token(llm, **tokenizer_kwargs)
    text_config, vision_config = load_component_configs(llm, vision_tower)
    # The config decides the number of image tokens (connector, select strategy), exactly as the model's does.
    config = TinyLlavaConfig(text_config=text_config, vision_config=vision_config, **config_kwargs)
    image_processor = AutoImageProcessor.from_pretrained(vision_tower)
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=resolve_chat_template(chat_template, tokenizer, text_config.model_type),
        num_image_tokens=config.get_num_image_tokens(*processed_image_size(image_processor)),
        image_aspect_ratio=image_aspect_ratio,
    )


__all__ = [
    "add_image_token",
    "assemble_model",
    "assemble_processor",
    "load_component_configs",
    "load_tokenizer_with_image_token",
]
