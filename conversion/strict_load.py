"""Loading a converted directory strictly, with its weights left on disk.

Verification runs a few probe forwards on the written files. Loading them normally keeps the whole model resident
(and a bf16 checkpoint verified in fp32 takes twice its size), so instead every module with weights is mapped to
transformers' disk offload: the index points into the written safetensors files, and accelerate's hooks read a
module's weights when its forward starts and drop them when it ends. A probe forward then peaks at the largest
module plus activations, not at the model.
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration

from .errors import ConversionError


def offload_device_map(model: PreTrainedModel) -> dict[str, str]:
    """`"disk"` for every module that owns parameters, except the few that must stay resident (`"cpu"`).

    Resident are the embedding matrix, which the original-forward replay reads directly (not through the module's
    forward, which in Gemma also scales the rows), a tied `lm_head` (the same tensor), and any module holding an
    `nn.MultiheadAttention` (SigLIP's pooling head): it reads `out_proj.weight` without calling `out_proj`, so
    accelerate's per-module hooks would never load it.

    Args:
        model: the model, typically built on the meta device.
    """
    resident = {model.get_input_embeddings()}
    if model.config.tie_word_embeddings:
        resident.add(model.get_output_embeddings())
    owners = {
        name: module
        for name, module in model.named_modules()
        if any(parameter is not None for parameter in module._parameters.values())
    }
    for module in owners.values():
        if any(isinstance(inner, torch.nn.MultiheadAttention) for inner in module.modules()):
            resident.update(module.modules())
    return {name: "cpu" if module in resident else "disk" for name, module in owners.items()}


@contextmanager
def load_strict(directory: Path, dtype: torch.dtype = torch.float32) -> Iterator[TinyLlavaForConditionalGeneration]:
    """Loads `directory` with its weights offloaded to its own safetensors files; fails on any key mismatch.

    Args:
        directory: a saved TinyLLaVA-HF checkpoint (safetensors).
        dtype: the dtype each module's weights are cast to when read.

    Yields:
        The model in eval mode, usable for forwards inside the `with` block.

    Raises:
        ConversionError: naming the missing, unexpected or mismatched keys.
    """
    config = TinyLlavaConfig.from_pretrained(directory)
    with torch.device("meta"):
        device_map = offload_device_map(TinyLlavaForConditionalGeneration(config))
    with tempfile.TemporaryDirectory(prefix="tinyllava-offload-") as offload_folder:
        model, info = TinyLlavaForConditionalGeneration.from_pretrained(
            directory, dtype=dtype, device_map=device_map, offload_folder=offload_folder, output_loading_info=True
        )
        problems = {kind: sorted(keys) for kind, keys in info.items() if keys and kind != "error_msgs"}
        if problems:
            raise ConversionError(f"{directory} does not load strictly: {problems}")
        yield model.eval()
