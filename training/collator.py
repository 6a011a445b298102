"""The multimodal SFT collator: chat template rendering, image expansion, answer-only labels, safe truncation."""

import io
import logging
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image

from .data import BadSampleError, normalize_messages, resolve_image_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TinyLlavaCollator:
    """Turns samples `{"id", "messages", "images"}` (see `training.data`) into a padded training batch.

    Each sample is rendered with the chat template and tokenized by the processor, which expands every image into
    its placeholder run (`return_assistant_tokens_mask=True` marks the `{% generation %}` spans). Labels keep only
    those spans: each answer and the end-of-turn token the template puts after it, as the original TinyLLaVA masks
    them (reference §3.3); the system prompt, user turns, image placeholders and padding are -100. With the
    `pretrain` template the caption (and its newline) is the supervised span.

    A sample longer than `max_length` is cut at `max_length` when that keeps all of its image placeholders and at
    least one supervised token (counted and logged as truncated); otherwise it is a bad sample. Bad samples (an
    image that cannot be read, too long, no supervised token) raise `BadSampleError` with `on_bad_sample="error"`,
    or are dropped from the batch, logged and counted in `self.counts` with `"skip"`.

    Args:
        processor: a `TinyLlavaProcessor`.
        chat_template: Jinja template used for rendering; None uses the processor's own.
        max_length: maximum tokens per sample after image expansion; None for no limit.
        image_folder: folder that relative image paths start from.
        on_bad_sample: `"error"` or `"skip"`.

    Returns (from `__call__`):
        `input_ids`, `attention_mask`, `labels`: `(batch, max_len)` long tensors, right-padded; `pixel_values`:
        `(num_images, 3, H, W)`, the batch's images in order (absent when the batch has none).
    """

    def __init__(self, processor, chat_template=None, max_length=None, image_folder=None, on_bad_sample="error"):
        self.processor = processor
        self.chat_template = chat_template
        self.max_length = max_length
        self.image_folder = image_folder
        self.on_bad_sample = on_bad_sample
        self.image_token_id = processor.image_token_id
        self.pad_token_id = processor.tokenizer.pad_token_id
        self.counts = Counter()

    def load_image(self, image, sample_id: str) -> Image.Image:
        """Opens a path, a `datasets.Image` dict or a PIL image as RGB; BadSampleError names the file on failure."""
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        source = image
        if isinstance(image, dict):
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
        if isinstance(source, str):
            source = resolve_image_path(source, self.image_folder)
            if not os.path.exists(source):
                raise BadSampleError(f"sample {sample_id!r}: missing image file {source!r}", "missing_image")
        try:
            with Image.open(source) as opened:
                return opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise BadSampleError(f"sample {sample_id!r}: cannot read image {source!r}: {error}", "corrupt_image")

    def encode(self, sample: dict) -> dict:
        """One sample -> `input_ids`, `labels` `(seq_len,)` and `pixel_values` `(num_images, 3, H, W)` or None."""
        sample_id = sample.get("id")
        images = iter([self.load_image(image, sample_id) for image in sample["images"]])
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
        )
        input_ids = torch.tensor(encoded["input_ids"][0])
        supervised = torch.tensor(encoded["assistant_masks"][0], dtype=torch.bool) & (input_ids != self.image_token_id)
        labels = input_ids.masked_fill(~supervised, IGNORE_INDEX)
        pixel_values = encoded.get("pixel_values")
        if pixel_values is not None:
            pixel_values = torch.from_numpy(np.stack(pixel_values))
        if self.max_length is not None and len(input_ids) > self.max_length:
            input_ids, labels = self.truncate(input_ids, labels, sample_id)
        if not (labels != IGNORE_INDEX).any():
            raise BadSampleError(f"sample {sample_id!r}: no supervised token (empty answers?)", "no_supervised_tokens")
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}

    def truncate(self, input_ids: torch.Tensor, labels: torch.Tensor, sample_id) -> tuple[torch.Tensor, torch.Tensor]:
        """Cuts at `max_length` if no image placeholder and not every supervised token lies beyond the cut."""
        image_positions = (input_ids == self.image_token_id).nonzero()
        cut = self.max_length
        if len(image_positions) and int(image_positions[-1]) >= cut:
            raise BadSampleError(
                f"sample {sample_id!r}: {len(input_ids)} tokens > max_length {cut}, and an image ends at token "
                f"{int(image_positions[-1]) + 1}, so it cannot be truncated without cutting an image",
                "too_long",
            )
        if not (labels[:cut] != IGNORE_INDEX).any():
            raise BadSampleError(
                f"sample {sample_id!r}: {len(input_ids)} tokens > max_length {cut}, and no answer token is left in "
                "the first max_length tokens",
                "too_long",
            )
        self.counts["truncated"] += 1
        logger.warning(
            "Truncated sample %r from %d to %d tokens (after its last image).", sample_id, len(input_ids), cut
        )
        return input_ids[:cut], labels[:cut]

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for sample in samples:
            try:
                encoded.append(self.encode(sample))
            except BadSampleError as error:
                if self.on_bad_sample == "error":
                    raise BadSampleError(
                        f"{error}. Pass --on_bad_sample skip to drop such samples.", error.kind
                    ) from None
                self.counts[error.kind] += 1
                logger.warning("Skipping %s (counts so far: %s)", error, dict(self.counts))
        if not encoded:
            raise BadSampleError(
                f"Every sample of a batch was bad (ids {[sample.get('id') for sample in samples]}); see the warnings above."
            )
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
