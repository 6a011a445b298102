"""Counting the FLOPs of a training step with `torch.utils.flop_counter`, CPU attention included.

torch's counter knows the CUDA SDPA kernels but not the CPU one (`_scaled_dot_product_flash_attention_for_cpu`), so
attention would count as zero on this machine; the mapping below adds it with torch's own convention (forward: two
matmuls, QK^T and PV; backward: 2.5x the forward).
"""

from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, query_len, head_dim = query_shape
    key_len, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * query_len * key_len * (head_dim + value_dim)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return int(2.5 * _cpu_sdpa_flops(query_shape, key_shape, value_shape))


CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


@contextmanager
def count_flops():
    """Yields a dict whose `"flops"` holds the FLOPs of everything run inside the block (set on exit)."""
    result = {}
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        yield result
    result["flops"] = counter.get_total_flops()
