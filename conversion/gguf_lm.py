"""The language model half of a GGUF export: llama.cpp hyperparameters and tensors for each supported LLM family.

llama.cpp names tensors by role (`blk.0.attn_q.weight`); the `gguf` package's `TensorNameMap` knows the Hugging Face
names of every architecture, so only the numerical differences between the two runtimes are handled here:
- Llama: llama.cpp rotates interleaved pairs (GPT-J style) while transformers rotates halves, so the rows of the Q and
  K projections are permuted to make the same rotation (what llama.cpp's own converter does).
- Gemma: transformers' RMSNorm multiplies by `1 + weight`, llama.cpp by `weight`, so 1 is added to every norm.
- Tied heads: Llama, Qwen2 and Gemma fall back to the token embedding when `output.weight` is absent; Phi-2 and
  StableLM always read one, so the embedding is written again.
"""

import numpy as np
import torch

from .errors import ConversionError

# Our `text_config.model_type` -> llama.cpp architecture.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "phi": "phi2", "gemma": "gemma", "stablelm": "stablelm"}
# Families whose llama.cpp graph requires `output.weight` even when the head is tied to the embedding.
_NEEDS_OUTPUT = ("phi", "stablelm")


def gguf_architecture(text_config) -> str:
    """llama.cpp's architecture name for an LLM config.

    Raises:
        ConversionError: for a family llama.cpp has no text graph for.
    """
    family = text_config.model_type
    if family not in GGUF_ARCHITECTURES:
        raise ConversionError(
            f"LLM family {family!r} has no GGUF export; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}."
        )
    return GGUF_ARCHITECTURES[family]


def _rope_theta(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ConversionError(
            f"text_config.rope_parameters.rope_type={rope_type!r}: only unscaled RoPE is exported to GGUF."
        )
    theta = rope.get("rope_theta", getattr(text_config, "rope_theta", None))
    if theta is None:
        raise ConversionError("text_config has no rope_theta (rope_parameters['rope_theta']).")
    return float(theta)


def head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def write_lm_hparams(writer, text_config) -> None:
    """Adds the `<arch>.*` hyperparameters llama.cpp reads for `text_config`'s family."""
    family = text_config.model_type
    writer.add_context_length(text_config.max_position_embeddings)
    writer.add_embedding_length(text_config.hidden_size)
    writer.add_block_count(text_config.num_hidden_layers)
    writer.add_feed_forward_length(text_config.intermediate_size)
    writer.add_head_count(text_config.num_attention_heads)
    writer.add_head_count_kv(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(text_config))
    dim = head_dim(text_config)
    if family in ("phi", "stablelm"):
        rope = getattr(text_config, "rope_parameters", None) or {}
        rotary = rope.get("partial_rotary_factor", getattr(text_config, "partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(int(rotary * dim))
        writer.add_layer_norm_eps(text_config.layer_norm_eps)
    else:
        writer.add_rope_dimension_count(dim)
        writer.add_layer_norm_rms_eps(text_config.rms_norm_eps)
    if family == "gemma":
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    if family == "stablelm" and (text_config.qk_layernorm or text_config.use_parallel_residual):
        raise ConversionError(
            "StableLM with qk_layernorm or use_parallel_residual (StableLM 2 12B) is not exported to GGUF yet."
        )
    if family == "phi" and getattr(text_config, "qk_layernorm", False):
        raise ConversionError("Phi with qk_layernorm has no llama.cpp graph.")


def _permute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorders the rows of a Q/K projection `(num_heads * head_dim, ...)` from half-split to interleaved RoPE."""
    shape = weight.shape
    return weight.reshape(num_heads, 2, shape[0] // num_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def lm_tensors(model, text_config, name_map) -> dict[str, torch.Tensor]:
    """GGUF name -> tensor (float32, PyTorch layout) for the language model and its head.

    Raises:
        ConversionError: naming any LM tensor the name map does not know.
    """
    family = text_config.model_type
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    if model.lm_head.bias is not None:
        state["lm_head.bias"] = model.lm_head.bias
    tied = model.config.tie_word_embeddings
    out, unknown = {}, []
    for key, tensor in state.items():
        if key == "lm_head.weight" and tied and family not in _NEEDS_OUTPUT:
            continue  # llama.cpp reuses token_embd.weight
        tensor = tensor.detach().to(torch.float32)
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(key)
            continue
        if family == "llama" and key.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = _permute_rotary(tensor, text_config.num_attention_heads)
        elif family == "llama" and key.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = _permute_rotary(tensor, text_config.num_key_value_heads)
        if family == "gemma" and key.endswith("norm.weight"):
            tensor = tensor + 1
        out[name] = tensor
    if unknown:
        raise ConversionError(f"No GGUF name for language model tensors: {', '.join(unknown)}")
    if family == "phi" and "output.bias" not in out:
        out["output.bias"] = torch.zeros(out["output.weight"].shape[0])  # llama.cpp's Phi-2 graph requires one
    return out


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()
