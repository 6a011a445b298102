"""SDPA that attends within each packed sample only, one causal kernel call per sample.

With packed rows and stock `sdpa`, transformers turns the restarting `position_ids` into a dense block-diagonal
`(rows, 1, L, L)` mask, and SDPA computes every query against every key of the row before masking most of them out:
a row of 2048 tokens holding four samples costs as much attention as one 2048-token sample, and the masked kernel is
slower than the causal one. Here each sample of a row is its own causal SDPA call, so attention costs the sum of the
samples' squared lengths, with the `is_causal` kernel: forward + backward of one attention layer over the packing
benchmark's 2 rows of 2048 tokens takes 112 ms against 381 ms (2 CPU cores, `python -m benchmarks.packing`).

`enable_packed_attention` registers the attention function and its mask function with transformers'
`AttentionInterface` and `AttentionMaskInterface`, and switches the language model to them for the training run.
The mask function is `sdpa`'s, except that it builds nothing when there is no padding mask and no cache, which is
the packed case. The attention implementation is not saved in `config.json`: checkpoints load with plain `sdpa`.
"""

import logging
from itertools import pairwise

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_SDPA = "tinyllava_packed_sdpa"

logger = logging.getLogger(__name__)


def packed_sdpa_mask(*, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs):
    """`sdpa_mask` (transformers calls it with keywords only), but no mask at all without a padding mask and a
    cache: `packed_sdpa_attention_forward` then finds the samples in `position_ids` instead of a dense mask."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


def packed_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed sample when the rows are packed, transformers' `sdpa` otherwise.

    Rows are packed when there is no mask (`packed_sdpa_mask` gives none without padding and a cache) and their
    `position_ids` restart (`training.packing` starts each sample at 0): a sample starts wherever the positions do
    not continue, as in transformers' `find_packed_sequence_indices`. Anything else (padding masks, a KV cache,
    unpacked rows) is transformers' `sdpa` with the mask `sdpa_mask` built.

    Args:
        query: `(batch, heads, q_len, head_dim)`.
        key, value: `(batch, kv_heads, kv_len, head_dim)`.
        attention_mask: `(batch, 1, q_len, kv_len)` boolean mask from `packed_sdpa_mask`, or None.
        position_ids: `(batch or 1, q_len)`.
        **kwargs: `dropout`, `scaling` and the rest of transformers' attention arguments.

    Returns:
        `(attn_output, None)`, `attn_output` `(batch, q_len, heads, head_dim)`, as `sdpa_attention_forward`.
    """
    q_len = query.shape[2]
    if attention_mask is None and position_ids is not None and q_len == key.shape[2] and q_len > 1:
        starts = torch.diff(position_ids.expand(query.shape[0], -1), dim=-1) != 1
        if starts.any():
            rows = []
            for row, row_starts in enumerate(starts):
                bounds = [0, *(row_starts.nonzero().flatten() + 1).tolist(), q_len]
                segments = [
                    sdpa_attention_forward(
                        module,
                        query[row : row + 1, :, start:end],
                        key[row : row + 1, :, start:end],
                        value[row : row + 1, :, start:end],
                        None,
                        is_causal=True,
                        **kwargs,
                    )[0]
                    for start, end in pairwise(bounds)
                ]
                rows.append(torch.cat(segments, dim=1))
            return torch.cat(rows), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def enable_packed_attention(model: torch.nn.Module) -> bool:
    """Switches the language model from `sdpa` to `packed_sdpa_attention_forward`.

    Left alone, with the reason logged: other attention implementations (flash attention packs through its varlen
    kernel; eager is the user's explicit choice) and language models with sliding-window layers, whose window the
    per-sample causal call would ignore.

    Returns:
        Whether the language model now uses packed attention.
    """
    text_config = model.config.get_text_config()
    if text_config._attn_implementation != "sdpa":
        logger.info("Packing with %s attention (packed SDPA replaces sdpa only).", text_config._attn_implementation)
        return False
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        logger.info("Packing with sdpa's dense block-diagonal mask: the LLM has %s layers.", sorted(layer_types))
        return False
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, packed_sdpa_mask)
    model.set_attn_implementation({"text_config": PACKED_SDPA})
    logger.info("Packing: the LLM attends within each packed sample only (%s).", PACKED_SDPA)
    return True
