"""The vision half of a GGUF export: the `mmproj` file llama.cpp's libmtmd loads for LLaVA-style models.

libmtmd runs such a file through its `mlp` projector graph (clip.cpp, `clip_graph_llava`): a ViT whose hidden states
at `clip.vision.feature_layer` (0 = the embeddings, k = after k blocks) are concatenated in ascending layer order,
then `mm.0` -> GELU (tanh approximation) -> `mm.2`. How our configurations map onto that graph:
- `mlp2x_gelu` is that projector. `linear`, `mlp1x_gelu` and `identity` are written exactly as
  `[W; -W]` -> GELU -> `[I, -I]`: GELU(z) - GELU(-z) = z for every GELU whose `x * s(x)` has `s(x) + s(-x) = 1`, the
  tanh approximation included. Deeper MLPs and the resampler have no equivalent.
- SigLIP has no CLS token, so `"full"` selection is exact. The original's `"default"` on SigLIP drops the first
  *patch*, which the graph cannot do: lossy.
- CLIP: the graph appends the CLS token *after* the patches and adds position embeddings in that order, so the
  position table is rotated here to keep every token's embedding exact; but it then hands the LM the rows
  `[patch 1 .. patch n-1, CLS]` instead of `[patch 0 .. patch n-1]`: lossy.
- Scales: llama.cpp's Gemma multiplies *every* input embedding by sqrt(hidden), image features included, while
  transformers' Gemma scales only token embeddings; that factor and `image_features_scale` are folded into `mm.2`.
"""

import math
from dataclasses import dataclass, field

import gguf
import torch

from modeling_tinyllava.configuration_tinyllava import MLP_CONNECTOR_PATTERN
from modeling_tinyllava.processing_tinyllava import processed_image_size

from .errors import ConversionError
from .gguf_lm import to_numpy

# `hidden_act` of the tower -> the clip.cpp FFN activation flag. CLIP's quick_gelu is clip.cpp's default.
_ACTIVATIONS = {"quick_gelu": None, "gelu_pytorch_tanh": "gelu", "gelu": "gelu"}
# clip.cpp keys and values the `gguf` package has no constant for (tools/mtmd/clip-impl.h).
FEATURE_LAYER_KEY = "clip.vision.feature_layer"
LLAVA_PROJECTOR = "mlp"
# Vision tower keys our image features never read.
_UNUSED_PREFIXES = ("vision_model.post_layernorm.", "vision_model.head.")


@dataclass
class MmprojPlan:
    """What the export writes for the vision side, and why it is not exact (empty `lossy` when it is)."""

    feature_layers: list[int]
    lossy: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def feature_layers(config) -> list[int]:
    """Our `vision_feature_layer` as clip.cpp's non-negative indices (0 = embeddings, k = after k blocks)."""
    layers = config.vision_feature_layer
    num_layers = config.vision_config.num_hidden_layers
    return [
        layer if layer >= 0 else num_layers + 1 + layer for layer in ([layers] if isinstance(layers, int) else layers)
    ]


def plan_mmproj(config, image_processor) -> MmprojPlan:
    """Checks that `config`'s vision side maps onto libmtmd's LLaVA graph.

    Raises:
        ConversionError: for what has no equivalent at all (DINOv2, the resampler, MLPs deeper than 2, an unknown
            activation); lossy differences are returned in `MmprojPlan.lossy` instead.
    """
    vision = config.vision_config
    if vision.model_type not in ("siglip_vision_model", "clip_vision_model"):
        raise ConversionError(
            f"vision tower {vision.model_type!r}: libmtmd's LLaVA graph runs CLIP and SigLIP towers only (DINOv2's "
            "layer scale and register-free CLS handling have no equivalent there); --allow-lossy cannot help."
        )
    connector = config.connector_type
    match = MLP_CONNECTOR_PATTERN.match(connector)
    if connector == "resampler" or (match and int(match.group(1)) > 2):
        raise ConversionError(
            f"connector {connector!r}: libmtmd's LLaVA projector is at most Linear -> GELU -> Linear; "
            "--allow-lossy cannot help."
        )
    if vision.hidden_act not in _ACTIVATIONS:
        raise ConversionError(f"vision_config.hidden_act {vision.hidden_act!r} has no clip.cpp equivalent.")
    height, width = processed_image_size(image_processor)
    if height != width or height != vision.image_size:
        raise ConversionError(
            f"the image processor makes {height}x{width} images but the tower was built for {vision.image_size}; "
            "libmtmd always resizes to the tower's square size."
        )
    layers = feature_layers(config)
    if len(set(layers)) != len(layers):
        raise ConversionError(f"vision_feature_layer {config.vision_feature_layer} repeats a layer; clip.cpp cannot.")
    plan = MmprojPlan(feature_layers=layers)
    if vision.model_type == "siglip_vision_model" and config.vision_feature_select_strategy == "default":
        plan.lossy.append(
            "the SigLIP tower drops its first patch (the original's 'default' selection); libmtmd keeps every patch, "
            "so the LM sees one more image token"
        )
    if vision.model_type == "clip_vision_model":
        plan.lossy.append(
            "CLIP tower: libmtmd's LLaVA graph places the CLS token after the patches and passes "
            "[patch 1..n-1, CLS] to the LM instead of "
            + ("[patch 0..n-1]" if config.vision_feature_select_strategy == "default" else "[CLS, patch 0..n-1]")
        )
    return plan


def _feature_scale(config) -> float:
    scale = config.image_features_scale
    if config.text_config.model_type == "gemma":
        scale /= math.sqrt(config.text_config.hidden_size)
    return scale


def _projector(model, plan: MmprojPlan) -> dict[str, torch.Tensor]:
    """`mm.0` / `mm.2` weights and biases of the connector, with its input columns in ascending layer order."""
    config = model.config
    connector = model.model.connector
    if isinstance(connector, torch.nn.Sequential) and len(connector) == 3:
        w0, b0, w2, b2 = connector[0].weight, connector[0].bias, connector[2].weight, connector[2].bias
    else:
        if isinstance(connector, torch.nn.Sequential):
            connector = connector[0]
        if isinstance(connector, torch.nn.Identity):
            size = config.text_config.hidden_size
            weight, bias = torch.eye(size), torch.zeros(size)
        else:
            weight, bias = connector.weight, connector.bias
        eye = torch.eye(weight.shape[0])
        w0, b0 = torch.cat([weight, -weight]), torch.cat([bias, -bias])
        w2, b2 = torch.cat([eye, -eye], dim=1), torch.zeros(weight.shape[0])
    w0, b0, w2, b2 = (t.detach().to(torch.float32) for t in (w0, b0, w2, b2))
    order = sorted(range(len(plan.feature_layers)), key=plan.feature_layers.__getitem__)
    if order != list(range(len(order))):
        width = config.vision_config.hidden_size
        w0 = torch.cat([w0[:, i * width : (i + 1) * width] for i in order], dim=1)
    scale = _feature_scale(config)
    return {"mm.0.weight": w0, "mm.0.bias": b0, "mm.2.weight": w2 * scale, "mm.2.bias": b2 * scale}


def mmproj_tensors(model, plan: MmprojPlan) -> dict[str, torch.Tensor]:
    """GGUF name -> float32 tensor for the vision tower blocks the features need, plus the projector."""
    config = model.config
    deepest = max(plan.feature_layers)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, config.vision_config.num_hidden_layers)
    out, unknown = {}, []
    for key, tensor in model.model.vision_tower.state_dict().items():
        # transformers 5 vision models hold the transformer directly; the name map knows the `vision_model.` form
        key = key if key.startswith("vision_model.") else f"vision_model.{key}"
        if key.startswith(_UNUSED_PREFIXES) or key.endswith("position_ids"):
            plan.skipped.append(key)
            continue
        if ".layers." in key and int(key.split(".layers.")[1].split(".")[0]) >= deepest:
            plan.skipped.append(key)  # blocks after the deepest feature layer are never run
            continue
        name = name_map.get_name(f"vision_tower.{key}", try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(key)
            continue
        tensor = tensor.detach().to(torch.float32)
        if name == "v.position_embd.weight" and config.vision_config.model_type == "clip_vision_model":
            tensor = torch.cat([tensor[1:], tensor[:1]])  # clip.cpp puts CLS last: rotate its position row along
        out[name] = tensor
    if unknown:
        raise ConversionError(f"No GGUF name for vision tower tensors: {', '.join(unknown)}")
    out.update(_projector(model, plan))
    return out


def write_mmproj(
    path, model, image_processor, plan: MmprojPlan, tensors: dict[str, torch.Tensor], name: str, dtype: str = "f16"
) -> None:
    """Writes the mmproj GGUF: clip.* metadata and the tower + projector tensors (2-D and up in `dtype`).

    Args:
        path: output file.
        model: a `TinyLlavaForConditionalGeneration`.
        image_processor: its image processor (mean, std and size go into the file).
        plan: from `plan_mmproj`.
        tensors: from `mmproj_tensors`.
        name: `general.name`.
        dtype: `"f16"` or `"f32"` for matrices; vectors are always float32, as clip.cpp expects.
    """
    config, vision = model.config, model.config.vision_config
    writer = gguf.GGUFWriter(str(path), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_clip_projector_type(LLAVA_PROJECTOR)
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(config.text_config.hidden_size)
    writer.add_vision_image_size(vision.image_size)
    writer.add_vision_patch_size(vision.patch_size)
    writer.add_vision_embedding_length(vision.hidden_size)
    writer.add_vision_feed_forward_length(vision.intermediate_size)
    writer.add_vision_block_count(max(plan.feature_layers))
    writer.add_vision_head_count(vision.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(vision.layer_norm_eps)
    writer.add_vision_image_mean(list(image_processor.image_mean))
    writer.add_vision_image_std(list(image_processor.image_std))
    if _ACTIVATIONS[vision.hidden_act] == "gelu":
        writer.add_vision_use_gelu(True)
    writer.add_array(FEATURE_LAYER_KEY, sorted(plan.feature_layers))
    for tensor_name, tensor in tensors.items():
        data = to_numpy(tensor)
        writer.add_tensor(tensor_name, data.astype("float16") if dtype == "f16" and data.ndim > 1 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
