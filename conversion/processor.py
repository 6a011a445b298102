"""The processor of a converted checkpoint, built only from what the source directory holds.

The original fetched its tokenizer and image processor from the Hub by name (reference §1.1); a conversion must not,
so the tokenizer comes from the source directory (or `--tokenizer`), and the image processor from the source's
`preprocessor_config.json`, else from the vision tower's defaults for the stored image size (logged).
"""

import logging
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedConfig
from transformers.image_utils import PILImageResampling
from transformers.models.bit import BitImageProcessorPil
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.siglip import SiglipImageProcessorPil

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaProcessor
from modeling_tinyllava.processing_tinyllava import processed_image_size

from ..assembly import add_image_token
from ..chat_templates import ORIGINAL_TEMPLATE, resolve_chat_template
from .errors import ConversionError

logger = logging.getLogger(__name__)

# Any of these makes a directory a tokenizer directory (fast, SentencePiece, byte-level BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(directory: Path, family: str, model_max_length: int | None, padding_side: str | None):
    """The source tokenizer with `<image>` added and the original's pad/unk rules applied (reference §1.4)."""
    kwargs = {k: v for k, v in (("model_max_length", model_max_length), ("padding_side", padding_side)) if v}
    if directory.is_dir() and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ConversionError(
            f"No tokenizer in {directory}: none of {', '.join(TOKENIZER_FILES)}. The original loads it from the "
            "config's tokenizer_name_or_path; pass that tokenizer's directory with --tokenizer DIR."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"No usable tokenizer in {directory} ({error}); pass --tokenizer DIR.") from error
    return add_image_token(tokenizer, family)


def default_image_processor(vision_config: PreTrainedConfig):
    """The image processor of the original's default tower checkpoints, at the stored image size."""
    size = vision_config.image_size
    if vision_config.model_type == "siglip_vision_model":  # google/siglip-*: plain bicubic resize, mean = std = 0.5
        return SiglipImageProcessorPil(size={"height": size, "width": size}, resample=PILImageResampling.BICUBIC)
    if vision_config.model_type == "clip_vision_model":  # openai/clip-*: resize the short side, centre crop
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # facebook/dinov2-*: resize the short side to 256, centre crop 224, ImageNet statistics
    return BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


def load_image_processor(directory: Path, vision_config: PreTrainedConfig, notes: list[str]):
    """`preprocessor_config.json` of `directory` when present, else the tower's default processor (noted)."""
    if (directory / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(directory, backend="pil")
    image_processor = default_image_processor(vision_config)
    note = (
        f"no preprocessor_config.json in {directory}: using {type(image_processor).__name__} with the original "
        f"tower's defaults for image size {vision_config.image_size}"
    )
    logger.warning(note)
    notes.append(note)
    return image_processor


def build_processor(
    tokenizer, image_processor, config: TinyLlavaConfig, image_aspect_ratio: str, chat_template: str | None = None
) -> TinyLlavaProcessor:
    """A `TinyLlavaProcessor` for a converted checkpoint, replicating the original's prompt tokenization.

    Args:
        chat_template: a built-in template name, `"llm"` (the tokenizer's own), a `.jinja` file or a Jinja string;
            None picks the original's template for the LLM family (`"original"`, see `tinyllava_hf.chat_templates`),
            the one the checkpoint was trained with, even when its tokenizer has a chat template of its own.

    Raises:
        ConversionError: for a chat template that does not resolve.
    """
    try:
        template = resolve_chat_template(chat_template or ORIGINAL_TEMPLATE, tokenizer, config.text_config.model_type)
    except (OSError, ValueError) as error:
        raise ConversionError(f"--chat-template: {error}") from error
    # The original tokenizes the text around each <image> separately (reference §2.1); for SentencePiece tokenizers
    # that differs from one pass (an extra "▁" after the image).
    return TinyLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        num_image_tokens=config.get_num_image_tokens(*processed_image_size(image_processor)),
        image_aspect_ratio=image_aspect_ratio,
        chunked_image_tokenization=True,
    )
