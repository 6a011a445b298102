"""Numeric parity: our converted model against a replay of the original TinyLLaVA forward on the same weights.

The replay follows the original code path step by step (reference §2), independently of our processor and of
`TinyLlavaModel.forward`: chunk-wise tokenization with one -200 per image, the original pad-to-square colours,
`hidden_states[layer]` with the original's `'patch'` slicing, splicing by concatenation, and Gemma's transformers-4.40
scaling of the whole input sequence. It shares only the weights (the modules of the loaded model), so the
comparison checks config translation, image handling and tokenization; the key mapping itself is checked strictly
when the model is loaded.
"""

import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor

ORIGINAL_IMAGE_TOKEN_INDEX = -200
PROBE_QUESTION = "What is shown in the image?"


def probe_image(width: int = 40, height: int = 24) -> Image.Image:
    """A deterministic non-square test image (so that `pad` and `square` differ)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def original_input_ids(prompt: str, tokenizer, image_token: str = "<image>") -> list[int]:
    """`tokenizer_image_token` of the original: chunks tokenized separately, BOS only from the first chunk."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(image_token)]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:1] if offset else []
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(ORIGINAL_IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def original_pixel_values(image: Image.Image, image_processor, image_aspect_ratio: str) -> torch.Tensor:
    """`ImagePreprocess` of the original (reference §4): `(1, 3, H, W)`."""
    if image_aspect_ratio == "pad":
        width, height = image.size
        side = max(width, height)
        canvas = Image.new(image.mode, (side, side), tuple(int(m * 255) for m in image_processor.image_mean))
        canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
        image = canvas
    return image_processor(image, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def original_logits(
    model: TinyLlavaForConditionalGeneration,
    input_ids: list[int],
    pixel_values: torch.Tensor,
    vision_feature_layer: int,
    select_strategy: str,
    scale_embeddings: bool,
) -> torch.Tensor:
    """The original forward for one sample with one image; returns logits `(1, merged_len, vocab)`."""
    backbone = model.model
    hidden = backbone.vision_tower(pixel_values.to(model.dtype), output_hidden_states=True).hidden_states
    features = hidden[vision_feature_layer]
    if select_strategy == "patch":
        features = features[:, 1:]
    features = backbone.connector(features)[0]
    ids = torch.tensor(input_ids)
    cut = int((ids == ORIGINAL_IMAGE_TOKEN_INDEX).nonzero()[0])
    # Unscaled embedding rows: transformers 4.40's Gemma scaled the spliced sequence afterwards (reference §1.4).
    weight = backbone.language_model.get_input_embeddings().weight
    before, after = F.embedding(ids[:cut], weight), F.embedding(ids[cut + 1 :], weight)
    embeds = torch.cat([before, features.to(weight.dtype), after])[None]
    if scale_embeddings:
        embeds = embeds * torch.tensor(math.sqrt(model.config.text_config.hidden_size), dtype=embeds.dtype)
    last_hidden = backbone.language_model(inputs_embeds=embeds).last_hidden_state
    return model.lm_head(last_hidden)


@torch.no_grad()
def check_original_parity(
    model: TinyLlavaForConditionalGeneration,
    processor: TinyLlavaProcessor,
    vision_feature_layer: int,
    select_strategy: str,
    image_aspect_ratio: str,
    scale_embeddings: bool,
    original_vocab_size: int,
) -> float:
    """Max abs logit difference between our model+processor and the original replay on a probe prompt.

    Raises:
        ValueError: when the two token sequences differ (tokenization or image-token count), naming both.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = probe_image()
    ours = processor(text=prompt, images=image, return_tensors="pt")
    reference_ids = original_input_ids(prompt, processor.tokenizer)
    pixels = original_pixel_values(image, processor.image_processor, image_aspect_ratio)
    reference = original_logits(model, reference_ids, pixels, vision_feature_layer, select_strategy, scale_embeddings)
    # Our ids with each run of placeholders collapsed to the original's single -200, for a like-for-like comparison.
    collapsed = []
    for token in ours["input_ids"][0].tolist():
        token = ORIGINAL_IMAGE_TOKEN_INDEX if token == processor.image_token_id else token
        if not (token == ORIGINAL_IMAGE_TOKEN_INDEX and collapsed and collapsed[-1] == token):
            collapsed.append(token)
    if collapsed != reference_ids or ours["input_ids"].shape[1] != reference.shape[1]:
        raise ValueError(
            "The converted processor does not reproduce the original prompt tokens:\n"
            f"  original: {reference_ids}\n  ours:     {collapsed} ({ours['input_ids'].shape[1]} positions, "
            f"original {reference.shape[1]})"
        )
    logits = model(**ours).logits
    return (logits[..., :original_vocab_size] - reference[..., :original_vocab_size]).abs().max().item()
