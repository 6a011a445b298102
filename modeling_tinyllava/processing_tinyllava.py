"""Processor for TinyLLaVA: the original image handling, `<image>` expansion and tokenization.

Ships as Hub remote code with every checkpoint, so it holds only what a loaded processor needs; building a NEW
processor from pretrained parts (tokenizer setup, chat-template choice) lives in `tinyllava_hf.assembly`.
"""

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import ProcessorMixin

IMAGE_TOKEN = "<image>"
IMAGE_ASPECT_RATIOS = ("square", "pad")


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
    """Centres `image` on a square canvas of its longer side filled with `background` (the original `pad` mode).

    Kept instead of an image processor's padding: the towers' processors (SigLIP, CLIP, BiT) have no square padding,
    and this PIL paste is the original's exact operation (same offsets and integer background colour).
    """
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


def is_empty_media(media) -> bool:
    """Whether `media` is None or a (nested) list or tuple with no item in it."""
    return media is None or (isinstance(media, (list, tuple)) and all(is_empty_media(item) for item in media))


def load_image(image) -> Image.Image:
    """The package's one image loader: opens a path (or passes a PIL image or array through) as an RGB PIL image.

    Not `transformers.image_utils.load_image`: that one applies the EXIF orientation (the original does not, so the
    pixels would differ) and reads an unknown string as base64 or a URL, hiding a mistyped path.

    Raises:
        ValueError: naming the file when it cannot be decoded, or the type of an unsupported input.
    """
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
        chat_template: a Jinja chat template; `tinyllava_hf.chat_templates` has the original conversation styles.
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
        # TinyLLaVA reads images and text only. Generic harnesses send empty lists of the other media (lmms-eval's
        # `huggingface` model passes `videos=[]` and `audios=[]`), which transformers 5 would reject: drop those.
        for name, media in (("videos", videos), ("audio", audio), ("audios", kwargs.pop("audios", None))):
            if not is_empty_media(media):
                raise ValueError(
                    f"TinyLlavaProcessor handles images and text only, but got a non-empty {name}= argument."
                )
        outputs = super().__call__(images=images, text=text, **kwargs)
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

        A thin entry point to `tinyllava_hf.assembly` (installed with `pip install tinyllava-hf`; a checkpoint's
        remote code does not carry it).

        Args:
            llm: a local directory or Hub id of a causal LM (its tokenizer is used, with `<image>` added).
            vision_tower: a local directory or Hub id of a CLIP, SigLIP or DINOv2 model (its image processor is used).
            chat_template: a built-in name (`tinyllava_hf.chat_templates.CHAT_TEMPLATES`), `"llm"` for the LLM
                tokenizer's own template, a `.jinja` file, a Jinja string, or None for the original's template for
                the LLM family.
            image_aspect_ratio: `"square"` or `"pad"`.
            model_max_length: overrides the tokenizer's maximum length.
            **config_kwargs: the same [`TinyLlavaConfig`] fields given to the model (`connector_type`,
                `vision_feature_select_strategy`, ...), which decide the number of image tokens.

        Raises:
            ImportError: when the `tinyllava_hf` package is not installed.
        """
        try:  # in a try block, so that loading this file as remote code does not require the package
            from tinyllava_hf.assembly import assemble_processor
        except ImportError as error:
            raise ImportError(
                "TinyLlavaProcessor.from_pretrained_components builds a new processor with the TinyLLaVA-HF tools: "
                "pip install tinyllava-hf"
            ) from error
        return assemble_processor(
            cls,
            llm,
            vision_tower,
            chat_template=chat_template,
            image_aspect_ratio=image_aspect_ratio,
            model_max_length=model_max_length,
            **config_kwargs,
        )


__all__ = ["TinyLlavaProcessor", "load_image"]
