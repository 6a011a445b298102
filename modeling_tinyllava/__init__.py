"""TinyLLaVA for transformers: importing this package registers the classes with the Auto classes.

The three modules beside this file (configuration, modeling, processing, as in transformers' `models/llava/`) are
self-contained: they import only each other, transformers and torch, and ship unchanged inside every saved checkpoint
as Hub remote code. Building a NEW model from pretrained parts is `tinyllava_hf.assembly`'s job; the original chat
templates (`chat_templates/*.jinja`) are read by `tinyllava_hf.chat_templates`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_tinyllava import TinyLlavaConfig
from .modeling_tinyllava import (
    TinyLlavaCausalLMOutputWithPast,
    TinyLlavaForConditionalGeneration,
    TinyLlavaModel,
    TinyLlavaModelOutputWithPast,
    TinyLlavaPreTrainedModel,
)
from .processing_tinyllava import TinyLlavaProcessor

AutoConfig.register(TinyLlavaConfig.model_type, TinyLlavaConfig, exist_ok=True)
AutoModel.register(TinyLlavaConfig, TinyLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TinyLlavaConfig, TinyLlavaProcessor, exist_ok=True)

# With an `_auto_class` set, save_pretrained copies the module files next to the weights (the config's auto_map is
# complete already, see AUTO_MAP).
TinyLlavaConfig.register_for_auto_class()
TinyLlavaModel.register_for_auto_class("AutoModel")
TinyLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
TinyLlavaProcessor.register_for_auto_class()

__all__ = [
    "TinyLlavaCausalLMOutputWithPast",
    "TinyLlavaConfig",
    "TinyLlavaForConditionalGeneration",
    "TinyLlavaModel",
    "TinyLlavaModelOutputWithPast",
    "TinyLlavaPreTrainedModel",
    "TinyLlavaProcessor",
]
