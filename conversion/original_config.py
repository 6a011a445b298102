"""Reading original TinyLLaVA configs (Factory and legacy TinyLLaVABench) into transformers configs.

The original configs are not self-contained (reference §1.1): the original re-downloads the LLM and vision configs by
name. Here the stored sub-config dicts are used as they are (they are diffs against the config class defaults, which
`AutoConfig.for_model` restores), and nothing is fetched.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig, SiglipVisionConfig

from .errors import ConversionError

# The original's LLM registry (reference §1.4) matched by substring of the LLM name, last match winning; the values
# are the transformers model types. OpenELM needs Apple's remote code and has no transformers implementation.
LLM_NAME_REGISTRY = {"phi": "phi", "tinyllama": "llama", "stablelm": "stablelm", "qwen2": "qwen2", "gemma": "gemma"}
SUPPORTED_LLM_FAMILIES = ("gemma", "llama", "phi", "qwen2", "stablelm")
VISION_NAME_REGISTRY = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "dinov2": "dinov2"}
# Original feature-selection strategies -> ours: 'patch' drops token 0 (even SigLIP's first real patch), 'cls_patch'
# keeps all tokens.
SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}

# Legacy TinyLLaVABench architectures (reference §6.2) -> transformers model types.
LEGACY_ARCHITECTURES = {
    "TinyLlavaPhiForCausalLM": "phi",
    "TinyLlavaStablelmForCausalLM": "stablelm",
    "TinyLlavaLlamaForCausalLM": "llama",
}
# StableLMEpoch (the legacy StableLM remote code) names a few fields differently from transformers' StableLmConfig.
STABLELM_EPOCH_FIELDS = {"rope_pct": "partial_rotary_factor", "norm_eps": "layer_norm_eps"}
# Fields of a legacy config that belong to LLaVA, not to the LLM.
LEGACY_LLAVA_FIELDS = {
    "architectures",
    "model_type",
    "auto_map",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "pad_token",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "use_mm_proj",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "tune_mm_vision_resampler",
    "unfreeze_mm_vision_tower",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "tokenizer_name_or_path",
}
# Legacy SigLIP towers are google/siglip-so400m-patch14-384 (reference §6.2) with its last layer and head deleted.
SO400M_VISION_CONFIG = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 384,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


@dataclass
class OriginalModel:
    """What the original code built from a checkpoint's config: the parts, and how it fed them.

    The `original_*` fields describe the original's behaviour in its own terms; the numeric parity check replays them
    independently of our model's config.
    """

    format: str
    text_config: PreTrainedConfig
    vision_config: PreTrainedConfig
    connector_type: str
    vision_feature_layer: int
    original_select_strategy: str
    image_aspect_ratio: str
    model_max_length: int | None = None
    padding_side: str | None = None
    config_kwargs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.text_config.model_type

    @property
    def scales_image_features(self) -> bool:
        """Gemma under transformers 4.40 scaled all input embeddings, image features included, by sqrt(hidden)."""
        return self.family == "gemma"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} not found.") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error


def _by_substring(name: str, registry: dict[str, str]) -> str | None:
    """The original's registry lookup: every registered name contained in `name`, the last one winning."""
    matches = [value for key, value in registry.items() if key in (name or "").lower()]
    return matches[-1] if matches else None


def check_llm_family(family: str | None, where: str) -> str:
    if family not in SUPPORTED_LLM_FAMILIES:
        raise ConversionError(
            f"Unknown LLM family {family!r} ({where}); supported: {', '.join(SUPPORTED_LLM_FAMILIES)}. "
            "OpenELM checkpoints need Apple's remote code, which transformers does not implement."
        )
    return family


def _sub_config(config_dict: dict, model_type: str, drop=()) -> PreTrainedConfig:
    values = {k: v for k, v in config_dict.items() if k not in ("model_type", *drop)}
    return AutoConfig.for_model(model_type, **values)


def describe_factory(config: dict, config_path: Path) -> OriginalModel:
    """Reads a TinyLLaVA Factory `config.json` (model_type "tinyllava", reference §1.1 and §6.1)."""
    if config.get("model_type") != "tinyllava":
        raise ConversionError(
            f"{config_path} has model_type {config.get('model_type')!r}, not 'tinyllava': not a TinyLLaVA Factory "
            "checkpoint (use `legacy` for TinyLLaVABench checkpoints)."
        )
    text_dict, vision_dict = config.get("text_config") or {}, config.get("vision_config") or {}
    family = text_dict.get("model_type") or _by_substring(config.get("llm_model_name_or_path"), LLM_NAME_REGISTRY)
    family = check_llm_family(family, f"text_config.model_type / llm_model_name_or_path in {config_path}")
    vision_type = vision_dict.get("model_type") or _by_substring(
        (config.get("vision_model_name_or_path") or "").split(":")[0], VISION_NAME_REGISTRY
    )
    if vision_type not in VISION_NAME_REGISTRY.values():
        raise ConversionError(
            f"Unsupported vision tower {config.get('vision_model_name_or_path')!r} in {config_path}: expected CLIP, "
            "SigLIP or DINOv2 (MoF towers have no transformers equivalent)."
        )
    strategy = config.get("vision_feature_select_strategy", "patch")
    if strategy not in SELECT_STRATEGIES:
        raise ConversionError(
            f"vision_feature_select_strategy {strategy!r} in {config_path} is not 'patch' or 'cls_patch'."
        )
    config_kwargs = {k: config[k] for k in ("num_queries", "num_resampler_layers") if config.get(k) is not None}
    return OriginalModel(
        format="factory",
        text_config=_sub_config(text_dict, family),
        vision_config=_sub_config(vision_dict, vision_type, drop=("model_name_or_path", "model_name_or_path2")),
        connector_type=config.get("connector_type", "mlp2x_gelu"),
        vision_feature_layer=config.get("vision_feature_layer", -2),
        original_select_strategy=strategy,
        image_aspect_ratio=config.get("image_aspect_ratio") or "square",
        model_max_length=config.get("tokenizer_model_max_length"),
        padding_side=config.get("tokenizer_padding_side"),
        config_kwargs=config_kwargs,
    )


def _legacy_vision_config(config: dict, config_path: Path, vision_keys: list[str], override: Path | None):
    """The legacy SigLIP tower's config, trimmed to the layers and head actually in the weights."""
    notes = []
    if override is not None:
        override_path = override / "config.json" if override.is_dir() else override
        vision_dict = read_json(override_path)
        vision_dict = vision_dict.get("vision_config", vision_dict)
        vision_type = vision_dict.get("model_type", "siglip_vision_model")
        if not vision_type.startswith("siglip"):
            raise ConversionError(
                f"--vision-config {override_path}: legacy checkpoints have SigLIP towers, got {vision_type!r}."
            )
        vision_config = _sub_config(vision_dict, "siglip_vision_model")
    elif "siglip" in (config.get("mm_vision_tower") or "").lower():
        vision_config = SiglipVisionConfig(**SO400M_VISION_CONFIG)
        notes.append(f"vision config: google/siglip-so400m-patch14-384 (mm_vision_tower {config['mm_vision_tower']!r})")
    else:
        raise ConversionError(
            f"mm_vision_tower {config.get('mm_vision_tower')!r} in {config_path}: only the SigLIP towers of the legacy "
            "TinyLLaVA models are supported; pass --vision-config for another SigLIP configuration."
        )
    layers = {int(m.group(1)) for key in vision_keys if (m := re.search(r"encoder\.layers\.(\d+)\.", key))}
    if layers and len(layers) != vision_config.num_hidden_layers:
        notes.append(
            f"vision tower: {len(layers)} of {vision_config.num_hidden_layers} layers kept, as the legacy tower did"
        )
        vision_config.num_hidden_layers = len(layers)
    vision_config.vision_use_head = any(".head." in key for key in vision_keys)
    return vision_config, notes


def describe_legacy(config: dict, config_path: Path, keys: list[str], vision_config_path: Path | None) -> OriginalModel:
    """Reads a legacy TinyLLaVABench `config.json`: a flat LLM config plus LLaVA `mm_*` fields (reference §6.2)."""
    architecture = (config.get("architectures") or [None])[0]
    family = LEGACY_ARCHITECTURES.get(architecture)
    if family is None:
        check_llm_family(architecture, f"architectures[0] in {config_path}")
    text_dict = {STABLELM_EPOCH_FIELDS.get(k, k): v for k, v in config.items()}
    text_dict = {k: v for k, v in text_dict.items() if k not in LEGACY_LLAVA_FIELDS and not k.startswith("mm_")}
    vision_keys = [key for key in keys if key.startswith("model.vision_tower.")]
    vision_config, notes = _legacy_vision_config(config, config_path, vision_keys, vision_config_path)
    return OriginalModel(
        format="legacy",
        text_config=_sub_config(text_dict, family),
        vision_config=vision_config,
        connector_type=config.get("mm_projector_type", "linear"),
        # The legacy tower returned the last hidden state of its truncated encoder, before the post-layernorm, and
        # ignored mm_vision_select_feature: all tokens reached the LLM (729 for so400m).
        vision_feature_layer=-1,
        original_select_strategy="cls_patch",
        image_aspect_ratio=config.get("image_aspect_ratio") or "pad",
        model_max_length=config.get("tokenizer_model_max_length"),
        padding_side=config.get("tokenizer_padding_side"),
        notes=notes,
    )


def image_features_scale(original: OriginalModel) -> float:
    return math.sqrt(original.text_config.hidden_size) if original.scales_image_features else 1.0
