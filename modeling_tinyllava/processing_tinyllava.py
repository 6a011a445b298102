"""Processor for TinyLLaVA: the original image handling, `<image>` expansion, tokenization and chat templates."""

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedConfig, ProcessorMixin
from transformers.tokenization_utils_base import AddedToken

from .configuration_tinyllava import TinyLlavaConfig

IMAGE_TOKEN = "<image>"
IMAGE_ASPECT_RATIOS = ("square", "pad")

# The system prompt shared by every conversation template of the original.
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Sets `num_images` and `text` for `message`, whose content is a string with inline "<image>" markers or a list of
# {"type": "image"} / {"type": "text"} parts.
_READ_MESSAGE = (
    "{%- if message['content'] is string -%}"
    "{%- set num_images = message['content'].count('<image>') -%}"
    "{%- set text = message['content'].replace('<image>', '') -%}"
    "{%- else -%}"
    "{%- set num_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') -%}"
    "{%- endif -%}"
)

# `USER: <q> ASSISTANT: <a><eos>` turns after the system prompt. The original moves every image to the front of its
# user turn ("<image>\n" + text.strip()) and renders an open assistant turn as "ASSISTANT:" with no trailing space.
# `{% generation %}` marks exactly what the original supervises: the answer (with its leading space, which merges into
# the answer's first token) and the end-of-turn string.
_CONVERSATION_TEMPLATE = (
    "{%- set ns = namespace(system='" + SYSTEM_PROMPT.replace("'", "\\'") + "', start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.start = 1 -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for message in messages[ns.start:] -%}" + _READ_MESSAGE + "{%- if message['role'] == 'user' -%}"
    "{%- if num_images > 0 -%}{%- set text = '<image>\\n' * num_images + text | trim -%}{%- endif -%}"
    "{{- 'USER: ' + text + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT:' -}}{%- generation -%}{{- ' ' + text + '@EOS@' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Pretraining on captions: every user turn is just its image(s) (the question is ignored; like the original, a turn
# renders at least one "<image>") and every answer is followed by a newline, with no system prompt and no end-of-turn.
_PRETRAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    + _READ_MESSAGE
    + "{%- if message['role'] == 'user' -%}{{- '<image>' * ([num_images, 1] | max) -}}"
    "{%- elif message['role'] == 'assistant' -%}{%- generation -%}{{- text + '\\n' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# End-of-turn strings of the original templates (reference §3.2).
_TEMPLATE_EOS = {
    "phi": "<|endoftext|>",
    "qwen2_base": "<|endoftext|>",
    "qwen2_instruct": "<|im_end|>",
    "llama": "</s>",
    "gemma": "<eos>",
}
CHAT_TEMPLATES = {name: _CONVERSATION_TEMPLATE.replace("@EOS@", eos) for name, eos in _TEMPLATE_EOS.items()}
CHAT_TEMPLATES["pretrain"] = _PRETRAIN_TEMPLATE

# The original's template for each LLM family (its README's conv_version mapping).
DEFAULT_TEMPLATE_FOR_MODEL_TYPE = {
    "phi": "phi",
    "stablelm": "phi",
    "llama": "llama",
    "gemma": "gemma",
    "qwen2": "qwen2_base",
}


def default_chat_template_name(text_model_type: str, tokenizer) -> str:
    """The original's template for an LLM family; Qwen2 tokenizers ending turns with `<|im_end|>` are instruct models."""
    if text_model_type == "qwen2" and tokenizer.eos_token == "<|im_end|>":
        return "qwen2_instruct"
    if text_model_type not in DEFAULT_TEMPLATE_FOR_MODEL_TYPE:
        raise ValueError(
            f"No default chat template for LLM family {text_model_type!r}; pass chat_template= one of "
            f"{sorted(CHAT_TEMPLATES)} or 'llm' for the tokenizer's own template."
        )
    return DEFAULT_TEMPLATE_FOR_MODEL_TYPE[text_model_type]


def add_image_token(tokenizer, text_model_type: str):
    """Prepares an LLM tokenizer for TinyLLaVA.

    Adds `<image>` as a special token, sets the pad token by the original's rules (reference §1.4) and pads on the
    left, as batched generation (and the image-text-to-text pipeline, which pads with the tokenizer's side) needs.
    Training collators pad on the right explicitly.
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
    """The tokenizer of `llm` with `<image>` added and its pad token set."""
    tokenizer = AutoTokenizer.from_pretrained(llm, **tokenizer_kwargs)
    return add_image_token(tokenizer, AutoConfig.from_pretrained(llm).model_type)


def load_component_configs(llm: str, vision_tower: str) -> tuple[PreTrainedConfig, PreTrainedConfig]:
    """Text and vision configs of pretrained components; a dual CLIP/SigLIP config is reduced to its vision part."""
    vision_config = AutoConfig.from_pretrained(vision_tower)
    vision_config = getattr(vision_config, "vision_config", None) or vision_config
    if getattr(vision_config, "vision_use_head", False):
        vision_config.vision_use_head = False  # SigLIP's pooling head: TinyLLaVA never uses it, so don't compute it
    return AutoConfig.from_pretrained(llm), vision_config


def processed_image_size(image_processor) -> tuple[int, int]:
    """(height, width) of the pixel values the image processor produces."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    if "height" not in size:
        raise ValueError(f"{type(image_processor).__name__} has no fixed output size ({size}); set crop_size or size.")
    return size["height"], size["width"]


def chunk_start_prefix(tokenizer, image_token: str = IMAGE_TOKEN) -> str:
    """Text that makes whole-string tokenization equal the original's chunk-wise tokenization around images.

    The original tokenizes the text between images as separate strings (reference §2.1). SentencePiece-style
    tokenizers (Llama, Gemma) prefix a fresh string with "▁", so the text after an image starts with an extra "▁"
    token. Tokenizing the whole string instead, that prefix is reproduced by one space after the image run; byte-level
    tokenizers (Qwen2, Phi) need nothing.

    Raises:
        ValueError: if neither choice reproduces chunk-wise tokenization for this tokenizer.
    """
    probe = "\nWhat is it?"
    alone = tokenizer(probe, add_special_tokens=False).input_ids
    for prefix in ("", " "):
        if tokenizer(image_token + prefix + probe, add_special_tokens=False).input_ids[1:] == alone:
            return prefix
    raise ValueError(f"Chunk-wise image tokenization cannot be reproduced for {type(tokenizer).__name__}.")


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centres `image` on a square canvas of its longer side filled with `background` (the original `pad` mode)."""
    width, height = image.size
    if width == height:
        return image
    canvas = Image.new(image.mode, (max(width, height),) * 2, background)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def flatten_images(images) -> list:
    """The images of a batch in order, from one image, a list, or a list of per-sample lists (paths allowed)."""
    if not isinstance(images, (list, tuple)):
        return [images]
    return [image for item in images for image in flatten_images(item)]


def load_image(image) -> Image.Image:
    """Opens a path (or passes a PIL image through) and converts it to RGB as the original does."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"Could not decode image file {os.fspath(image)!r}: {error}") from error
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"Unsupported image input of type {type(image).__name__}; pass PIL images, paths or arrays.")
    return image if image.mode == "RGB" else image.convert("RGB")


class TinyLlavaProcessor(ProcessorMixin):
    r"""Turns chat messages or text with `<image>` markers, plus images, into TinyLLaVA model inputs.

    Args:
        image_processor: the vision tower's image processor (e.g. `SiglipImageProcessor`, `CLIPImageProcessor`).
        tokenizer: the LLM's tokenizer, with `<image>` added as a special token.
        chat_template: a Jinja chat template; see `CHAT_TEMPLATES` for the original conversation styles.
        image_token: the placeholder token.
        num_image_tokens: placeholders per image; each `<image>` in the text expands to this many.
        image_aspect_ratio: `"square"` feeds images to the image processor as they are; `"pad"` first centres them
            on a square canvas filled with the image processor's mean colour, as the original `pad` mode does.
        chunked_image_tokenization: tokenize as the original does, as if the text between images were separate
            strings (see `chunk_start_prefix`). Converted original checkpoints set it, for exact token ids.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token: str = IMAGE_TOKEN,
        num_image_tokens: int = 1,
        image_aspect_ratio: str = "square",
        chunked_image_tokenization: bool = False,
        **kwargs,
    ):
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {image_aspect_ratio!r}.")
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        self.image_aspect_ratio = image_aspect_ratio
        self.chunked_image_tokenization = chunked_image_tokenization
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token) if tokenizer is not None else None
        self._image_suffix = chunk_start_prefix(tokenizer, image_token) if chunked_image_tokenization else ""
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens + self._image_suffix

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        # Text-only inputs get an empty image batch, so that they collate with image samples (the pipeline
        # concatenates `pixel_values` of its samples) and the model still checks that no placeholder is left empty.
        if "pixel_values" not in outputs and isinstance(outputs.get("input_ids"), torch.Tensor):
            outputs["pixel_values"] = torch.zeros(0, 3, *processed_image_size(self.image_processor))
        return outputs

    def _process_images(self, images, **kwargs):
        images = [load_image(image) for image in flatten_images(images)]
        if self.image_aspect_ratio == "pad":
            background = tuple(int(mean * 255) for mean in self.image_processor.image_mean)
            images = [expand_to_square(image, background) for image in images]
        return super()._process_images(images, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Open file paths here so that an undecodable file is reported by name.
        if images is not None:
            images = [load_image(image) for image in flatten_images(images)]
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    @classmethod
    def from_pretrained_components(
        cls,
        llm: str,
        vision_tower: str,
        chat_template: str | None = None,
        image_aspect_ratio: str = "square",
        model_max_length: int | None = None,
        **config_kwargs,
    ) -> "TinyLlavaProcessor":
        """The processor matching [`TinyLlavaForConditionalGeneration.from_pretrained_components`].

        Args:
            llm: a local directory or Hub id of a causal LM (its tokenizer is used).
            vision_tower: a local directory or Hub id of a CLIP, SigLIP or DINOv2 model (its image processor is used).
            chat_template: a name from `CHAT_TEMPLATES`, `"llm"` for the tokenizer's own template, a Jinja string,
                or None for the original's template for the LLM family.
            image_aspect_ratio: `"square"` or `"pad"`.
            model_max_length: overrides the tokenizer's maximum length.
            **config_kwargs: the same [`TinyLlavaConfig`] fields given to the model (`connector_type`,
                `vision_feature_select_strategy`, ...), which decide the number of image tokens.
        """
        tokenizer_kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
        tokenizer = load_tokenizer_with_image_token(llm, **tokenizer_kwargs)
        text_config, vision_config = load_component_configs(llm, vision_tower)
        config = TinyLlavaConfig(text_config=text_config, vision_config=vision_config, **config_kwargs)
        image_processor = AutoImageProcessor.from_pretrained(vision_tower)
        if chat_template is None:
            chat_template = CHAT_TEMPLATES[default_chat_template_name(text_config.model_type, tokenizer)]
        elif chat_template == "llm":
            chat_template = tokenizer.chat_template
        elif chat_template in CHAT_TEMPLATES:
            chat_template = CHAT_TEMPLATES[chat_template]
        elif "{" not in chat_template:
            raise ValueError(
                f"Unknown chat template {chat_template!r}; expected one of {sorted(CHAT_TEMPLATES)}, 'llm' or Jinja."
            )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            num_image_tokens=config.get_num_image_tokens(*processed_image_size(image_processor)),
            image_aspect_ratio=image_aspect_ratio,
        )


__all__ = ["CHAT_TEMPLATES", "TinyLlavaProcessor"]
