"""Padding-free multimodal packing: whole samples packed into rows of up to `max_length` tokens.

TRL's `SFTTrainer` refuses `packing` and `padding_free` for vision-language data, so TinyLLaVA packs on its own, in
two places:

1. `PackedBatchSampler` decides which samples share a row: best-fit decreasing over buffers of samples, from the
   token counts `training.data` measured when it checked each sample (nothing is tokenized twice). The rows are
   fixed once for the run; each epoch shuffles them and groups `rows_per_batch` rows into a batch.
2. `pack_rows` (the collator's packing mode) lays the encoded samples of a batch out in those rows: `position_ids`
   restart at 0 for each sample, and no attention mask is passed. With `sdpa` (the default), `training.train`
   switches the LLM to `training.packed_attention`, one causal SDPA call per sample. Otherwise transformers builds
   a block-diagonal causal mask from the restarting positions (`masking_utils.find_packed_sequence_indices`; it does
   so only when the attention mask is None and there is no cache, which holds in training) for eager attention,
   and flash attention runs its varlen kernel on rows flattened into one.

A sample is never split, so an image's placeholder run is never cut, and the images of a batch stay in the order
of their placeholders in the flattened rows. The first label of each sample is -100: after the causal shift it
would be the target of the previous sample's last token.
"""

import bisect
import logging
import math
import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

IGNORE_INDEX = -100

logger = logging.getLogger(__name__)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Groups items into as few bins of `capacity` as best-fit decreasing finds.

    Longest first, each item goes into the open bin it fills most tightly, or a new bin when none has room.

    Args:
        lengths: the size of each item; each must be in `[1, capacity]`.
        capacity: the size of a bin.

    Returns:
        The bins, as lists of indices into `lengths` (longest item first).
    """
    too_long = [index for index, length in enumerate(lengths) if not 0 < length <= capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} item(s) do not fit a bin of {capacity}, e.g. item {too_long[0]} of length "
            f"{lengths[too_long[0]]}."
        )
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted: bisect finds the tightest bin with room
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = lengths[index]
        position = bisect.bisect_left(free, (size, -1))
        if position == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - size, len(bins) - 1))
        else:
            room, bin_index = free.pop(position)
            bins[bin_index].append(index)
            bisect.insort(free, (room - size, bin_index))
    return bins


class PackedBatchSampler(Sampler[list[int]]):
    """Batches of sample indices that fill `rows_per_batch` rows of `max_length` tokens each.

    The dataset is shuffled once (`seed`), cut into buffers of `buffer_size` samples, and each buffer is packed into
    rows by `best_fit_decreasing`. The rows stay fixed for the run, so the number of batches per epoch is fixed too
    (the Trainer plans its steps from it); `set_epoch` reshuffles which rows share a batch. A batch lists its rows'
    samples row after row, the order in which `pack_rows` lays them out again.

    Args:
        lengths: tokens of each sample, as the collator will produce them (after truncation to `max_length`).
        max_length: tokens per row.
        rows_per_batch: rows in one batch (`per_device_train_batch_size` under packing).
        buffer_size: samples packed together; larger packs tighter and costs `O(buffer_size * rows)` list moves.
        seed: the shuffling seed.
    """

    def __init__(
        self, lengths: Sequence[int], max_length: int, rows_per_batch: int, buffer_size: int = 4096, seed: int = 0
    ):
        if rows_per_batch < 1 or buffer_size < 1:
            raise ValueError(f"rows_per_batch and buffer_size must be >= 1; got {rows_per_batch}, {buffer_size}.")
        self.rows_per_batch = rows_per_batch
        self.seed = seed
        self.epoch = 0
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        self.rows: list[list[int]] = []
        for start in range(0, len(order), buffer_size):
            buffer = order[start : start + buffer_size]
            self.rows += [
                [buffer[i] for i in row] for row in best_fit_decreasing([lengths[i] for i in buffer], max_length)
            ]
        tokens = sum(lengths)
        logger.info(
            "Packing: %d samples in %d rows of %d tokens (%.2f samples per row, %.1f%% of the row tokens used); "
            "%d batches of %d rows per epoch, about %.1f samples each.",
            len(lengths), len(self.rows), max_length, len(lengths) / max(len(self.rows), 1),
            100 * tokens / max(len(self.rows) * max_length, 1), len(self), rows_per_batch,
            len(lengths) / max(len(self), 1),
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.rows_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        rows = list(self.rows)
        random.Random(self.seed + 1 + self.epoch).shuffle(rows)
        for start in range(0, len(rows), self.rows_per_batch):
            yield [index for row in rows[start : start + self.rows_per_batch] for index in row]


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Consecutive items grouped into bins in order, a new bin when the next item does not fit.

    Given the samples of a `PackedBatchSampler` batch (row after row, each row fitting), it needs no more rows than
    the sampler did, and it keeps the samples' order, hence the images' order.
    """
    bins: list[list[int]] = []
    room = 0
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"A sample of {length} tokens does not fit a packed row of {capacity} tokens.")
        if not bins or length > room:
            bins.append([])
            room = capacity
        bins[-1].append(index)
        room -= length
    return bins


def pack_rows(
    encoded: list[dict], max_length: int, pad_token_id: int, flatten: bool = False
) -> dict[str, torch.Tensor]:
    """Lays encoded samples out in packed rows, in order.

    Args:
        encoded: per sample, `input_ids` and `labels` `(seq_len,)` and `pixel_values` `(num_images, 3, H, W)` or
            None, as `TinyLlavaCollator.encode` returns them.
        max_length: tokens per row.
        pad_token_id: fills the end of the rows shorter than the longest one.
        flatten: put the rows one after the other in a single row. Flash attention needs it: transformers runs its
            varlen kernel from restarting `position_ids` only for a batch of one row, and with several rows it would
            let the samples of a row attend to each other.

    Returns:
        `input_ids`, `labels`, `position_ids`: `(rows, longest_row)` long tensors, and `pixel_values`
        `(num_images, 3, H, W)` in sample order (absent when no sample has an image). No `attention_mask`: the
        restarting `position_ids` delimit the samples. The padding at a row's end is a block of its own (its
        positions restart at 0 too) with -100 labels, so no sample attends to it.
    """
    rows = next_fit([len(sample["input_ids"]) for sample in encoded], max_length)
    if flatten:
        rows = [[index for row in rows for index in row]]
    width = max(sum(len(encoded[i]["input_ids"]) for i in row) for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for row_index, row in enumerate(rows):
        start = 0
        for sample in (encoded[i] for i in row):
            size = len(sample["input_ids"])
            batch["input_ids"][row_index, start : start + size] = sample["input_ids"]
            batch["labels"][row_index, start : start + size] = sample["labels"]
            batch["labels"][row_index, start] = IGNORE_INDEX  # never the target of the previous sample's last token
            batch["position_ids"][row_index, start : start + size] = torch.arange(size)
            start += size
        batch["position_ids"][row_index, start:] = torch.arange(width - start)
    pixel_values = [sample["pixel_values"] for sample in encoded if sample["pixel_values"] is not None]
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
    return batch
