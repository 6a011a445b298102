"""The multimodal SFT collator: chat template rendering, image expansion, answer-only labels, truncation."""

import logging
from collections import Counter

import numpy as np
import torch
from PIL import Image

from modeling_tinyllava.processing_tinyllava import load_image

from .answer_mask import answer_spans, flatten_content, has_generation_markers, special_token_strings, token_mask
from .data import IGNORE_INDEX, normalize_messages
from .packing import pack_rows

logger = logging.getLogger(__name__)

# `layout` skips the pixel work on its stand-in image: the placeholder run does not depend on the pixels.
_STAND_IN_PROCESSING = {"do_resize": False, "do_center_crop": False, "do_rescale": False, "do_normalize": False}


class TinyLlavaCollator:
    """Turns checked samples `{"id", "messages", "images"}` (see `training.data`) into a padded training batch.

    Each sample is rendered with the chat template and tokenized by the processor, which expands every image into
    its placeholder run (`return_assistant_tokens_mask=True` marks the `{% generation %}` spans). Labels keep only
    those spans: each answer and the end-of-turn token the template puts after it, as the original TinyLLaVA masks
    them (reference §3.3); the system prompt, user turns, image placeholders and padding are -100. With the
    `pretrain` template the caption (and its newline) is the supervised span. A template without `{% generation %}`
    (an LLM's own) gets the same mask from `training.answer_mask`: each answer and the special token closing its turn.

    The collator judges no sample: `training.data` has checked each one at load time (with `layout`) and applied
    `--on_bad_sample`. A sample longer than `max_length` is cut at `max_length`, which that check guarantees is
    after its last image and keeps a supervised token; each cut is logged and counted in `self.counts`. Images are
    opened here, batch by batch, with the processor's `load_image`.

    Args:
        processor: a `TinyLlavaProcessor`.
        chat_template: Jinja template used for rendering; None uses the processor's own.
        max_length: maximum tokens per sample after image expansion; None for no limit.
        packing: lay the batch out in packed rows of `max_length` tokens (`training.packing.pack_rows`) instead
            of one padded row per sample.

    Returns (from `__call__`):
        `input_ids`, `attention_mask`, `labels`: `(batch, max_len)` long tensors, right-padded; `pixel_values`:
        `(num_images, 3, H, W)`, the batch's images in order (absent when the batch has none). With `packing`,
        `position_ids` that restart at each sample instead of `attention_mask` (see `pack_rows`).
    """

    def __init__(self, processor, chat_template=None, max_length=None, packing=False):
        if packing and max_length is None:
            raise ValueError("Packing needs max_length: the length of a packed row.")
        self.processor = processor
        self.chat_template = chat_template
        self.max_length = max_length
        self.packing = packing
        self.flatten_packed_rows = False  # set by `training.train` for flash attention (see `pack_rows`)
        self.image_token_id = processor.image_token_id
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.counts = Counter()
        self._stand_in_image = Image.new("RGB", (16, 16))
        template = chat_template if chat_template is not None else processor.chat_template
        self._template = template
        self._marked = template is None or has_generation_markers(template)  # None: the processor's own error
        self._specials = special_token_strings(processor.tokenizer)

    def tokenize(self, sample: dict, images: list[Image.Image], processor_kwargs: dict | None = None) -> dict:
        """Renders, tokenizes, expands and masks one sample with the given RGB images, without truncation.

        Args:
            sample: `{"messages", ...}` with one image part per image.
            images: the sample's images, in order.
            processor_kwargs: extra arguments of the processor call (image processing settings).

        Returns:
            `input_ids`, `labels`: `(seq_len,)` long tensors; `pixel_values`: `(num_images, 3, H, W)` or None.
        """
        if not self._marked:
            return self._tokenize_by_turns(sample, images, processor_kwargs)
        images = iter(images)
        messages = [
            {
                "role": message["role"],
                "content": [
                    {"type": "image", "image": next(images)} if part["type"] == "image" else part
                    for part in message["content"]
                ],
            }
            for message in normalize_messages(sample["messages"])
        ]
        encoded = self.processor.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors=None,  # lists: the assistant-mask offset matching is several times faster than on tensors
            processor_kwargs=processor_kwargs,
        )
        input_ids = torch.tensor(encoded["input_ids"][0])
        supervised = torch.tensor(encoded["assistant_masks"][0], dtype=torch.bool) & (input_ids != self.image_token_id)
        pixel_values = encoded.get("pixel_values")
        if pixel_values is not None:
            pixel_values = torch.from_numpy(np.stack(pixel_values))
        return {
            "input_ids": input_ids,
            "labels": input_ids.masked_fill(~supervised, IGNORE_INDEX),
            "pixel_values": pixel_values,
        }

    def _tokenize_by_turns(self, sample: dict, images: list[Image.Image], processor_kwargs: dict | None) -> dict:
        """`tokenize` for a template without `{% generation %}`: answer spans from prefix renders (`answer_mask`).

        Contents are given to the template as strings with "<image>\\n" per image (`answer_mask.flatten_content`,
        the rule `--chat_template llm` adds to the LLM's own template), so that text templates render images too.
        """
        messages = [
            {"role": message["role"], "content": flatten_content(message["content"], self.processor.image_token)}
            for message in normalize_messages(sample["messages"])
        ]

        def render(conversation, add_generation_prompt):
            return self.processor.apply_chat_template(
                conversation, chat_template=self._template, add_generation_prompt=add_generation_prompt, tokenize=False
            )

        try:
            text, spans = answer_spans(render, messages, self._template, self._specials)
        except ValueError as error:
            raise ValueError(f"Training sample {sample.get('id')!r}: {error}") from error
        rendered_images = text.count(self.processor.image_token)
        if rendered_images != len(images):
            raise ValueError(
                f"Training sample {sample.get('id')!r}: the chat template renders {rendered_images} "
                f"{self.processor.image_token} tokens for {len(images)} images."
            )
        bos = self.processor.tokenizer.bos_token
        encoded = self.processor(
            text=text,
            images=images or None,
            **{
                **(processor_kwargs or {}),  # merged, not spread: apply_chat_template adds offset flags to that dict
                "add_special_tokens": not (bos is not None and text.startswith(bos)),  # as apply_chat_template does
                "return_offsets_mapping": True,
                "return_text_replacement_offsets": True,
            },
        )
        input_ids = torch.as_tensor(encoded["input_ids"][0])
        replacements = encoded.get("text_replacement_offsets")
        mask = token_mask(encoded["offset_mapping"][0], spans, replacements[0] if replacements else None)
        supervised = torch.tensor(mask, dtype=torch.bool) & (input_ids != self.image_token_id)
        pixel_values = encoded.get("pixel_values")
        if pixel_values is not None:
            pixel_values = torch.as_tensor(np.stack(pixel_values) if isinstance(pixel_values, list) else pixel_values)
        return {
            "input_ids": input_ids,
            "labels": input_ids.masked_fill(~supervised, IGNORE_INDEX),
            "pixel_values": pixel_values,
        }

    def layout(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `labels` `(seq_len,)` of a sample before truncation, without opening its images.

        About half the cost of `encode` (no image is read or resized); `training.data` runs it on every sample.
        """
        encoded = self.tokenize(sample, [self._stand_in_image] * len(sample["images"]), _STAND_IN_PROCESSING)
        return encoded["input_ids"], encoded["labels"]

    def encode(self, sample: dict) -> dict:
        """One sample -> `input_ids`, `labels` `(seq_len,)` and `pixel_values` `(num_images, 3, H, W)` or None."""
        sample_id = sample.get("id")
        try:
            images = [load_image(image) for image in sample["images"]]
        except ValueError as error:  # the file changed after the load-time check, or verified but does not decode
            raise ValueError(f"Training sample {sample_id!r}: {error}") from error
        encoded = self.tokenize(sample, images)
        if self.max_length is not None and len(encoded["input_ids"]) > self.max_length:
            encoded["input_ids"], encoded["labels"] = self.truncate(encoded["input_ids"], encoded["labels"], sample_id)
        return encoded

    def truncate(self, input_ids: torch.Tensor, labels: torch.Tensor, sample_id) -> tuple[torch.Tensor, torch.Tensor]:
        """Cuts at `max_length`; the load-time check has made sure no image placeholder lies beyond the cut."""
        cut = self.max_length
        if (input_ids[cut:] == self.image_token_id).any():
            raise ValueError(
                f"Training sample {sample_id!r} would lose image tokens when cut at max_length {cut}; it was not "
                "checked by training.data.load_training_dataset with this collator."
            )
        self.counts["truncated"] += 1
        logger.warning(
            "Truncated sample %r from %d to %d tokens (after its last image; %d truncations so far).",
            sample_id, len(input_ids), cut, self.counts["truncated"],
        )  # fmt: skip
        return input_ids[:cut], labels[:cut]

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(sample) for sample in samples]
        if self.packing:
            return pack_rows(encoded, self.max_length, self.pad_token_id, flatten=self.flatten_packed_rows)
        return self.pad(encoded)

    def pad(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pads to the longest sample; the attention mask comes from the lengths, never from the pad id."""
        length = max(len(sample["input_ids"]) for sample in encoded)
        batch = {
            "input_ids": torch.full((len(encoded), length), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(encoded), length), dtype=torch.long),
            "labels": torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long),
        }
        for row, sample in enumerate(encoded):
            size = len(sample["input_ids"])
            batch["input_ids"][row, :size] = sample["input_ids"]
            batch["attention_mask"][row, :size] = 1
            batch["labels"][row, :size] = sample["labels"]
        pixel_values = [sample["pixel_values"] for sample in encoded if sample["pixel_values"] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
        return batch
