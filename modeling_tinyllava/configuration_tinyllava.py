"""Configuration of TinyLLaVA models: a vision tower, a connector and a causal language model."""

import re

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Written into every saved config so that a checkpoint directory is a complete Hub repo (remote code).
AUTO_MAP = {
    "AutoConfig": "configuration_tinyllava.TinyLlavaConfig",
    "AutoModel": "modeling_tinyllava.TinyLlavaModel",
    "AutoModelForCausalLM": "modeling_tinyllava.TinyLlavaForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_tinyllava.TinyLlavaForConditionalGeneration",
    "AutoProcessor": "processing_tinyllava.TinyLlavaProcessor",
}

MLP_CONNECTOR_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")
CONNECTOR_TYPES = ("mlp{N}x_gelu", "linear", "identity", "resampler")
VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model", "dinov2")
# Vision towers whose first output token is a CLS token rather than an image patch.
VISION_MODEL_TYPES_WITH_CLS = ("clip_vision_model", "dinov2")
FEATURE_SELECT_STRATEGIES = ("default", "full")


def validate_connector_type(connector_type: str) -> None:
    """Raises a `ValueError` naming the valid choices when `connector_type` is not a known connector."""
    if connector_type in ("linear", "identity", "resampler") or MLP_CONNECTOR_PATTERN.match(connector_type or ""):
        return
    raise ValueError(f"Unknown connector_type {connector_type!r}; expected one of {', '.join(CONNECTOR_TYPES)}.")


class TinyLlavaConfig(PreTrainedConfig):
    r"""Configuration of a [`TinyLlavaForConditionalGeneration`].

    Args:
        text_config (`dict` or `PreTrainedConfig`): config of any causal LM (llama, phi, qwen2, stablelm, gemma, ...).
        vision_config (`dict` or `PreTrainedConfig`): config of the vision tower (`clip_vision_model`,
            `siglip_vision_model` or `dinov2`).
        connector_type (`str`): `mlp{N}x_gelu`, `linear`, `identity` or `resampler`.
        vision_feature_layer (`int` or `list[int]`): hidden state(s) of the vision tower fed to the connector; a list
            is concatenated on the feature dimension.
        vision_feature_select_strategy (`str`): `"default"` drops the first vision token (the CLS token of CLIP and
            DINOv2; the original TinyLLaVA also drops SigLIP's first *patch*), `"full"` keeps every token. When unset,
            towers with a CLS token use `"default"` and SigLIP uses `"full"`.
        image_token_id (`int`): id of the `<image>` placeholder token in the tokenizer.
        num_queries (`int`), num_resampler_layers (`int`): shape of the `resampler` connector.
        image_features_scale (`float`): multiplier applied to the connector output. Original TinyLLaVA-Gemma models
            ran on transformers 4.40, where Gemma scaled *all* input embeddings by sqrt(hidden_size), image features
            included; converted Gemma checkpoints set it to sqrt(hidden_size) to keep those numerics.
        lm_head_bias (`bool`): whether `lm_head` has a bias. Defaults to True for Phi, whose LM head has one.
        tie_word_embeddings (`bool`): tie `lm_head` to the input embeddings; mirrored from `text_config` when true
            there, since transformers only reads the top-level flag.
    """

    model_type = "tinyllava_hf"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    connector_type: str = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str | None = None
    image_token_id: int | None = None
    num_queries: int = 128
    num_resampler_layers: int = 3
    image_features_scale: float = 1.0
    lm_head_bias: bool | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_connector_type(self.connector_type)
        vision_type = self.vision_config.model_type
        if vision_type not in VISION_MODEL_TYPES:
            raise ValueError(
                f"Unsupported vision_config.model_type {vision_type!r}; expected one of {', '.join(VISION_MODEL_TYPES)}."
            )
        if self.vision_feature_select_strategy is None:
            self.vision_feature_select_strategy = "default" if vision_type in VISION_MODEL_TYPES_WITH_CLS else "full"
        if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {FEATURE_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.lm_head_bias is None:
            self.lm_head_bias = self.text_config.model_type == "phi"
        if getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    @property
    def num_vision_feature_layers(self) -> int:
        return 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)

    def get_num_image_tokens(self, height: int, width: int) -> int:
        """Number of `<image>` placeholders one image of `height` x `width` pixels occupies in the LM input."""
        if self.connector_type == "resampler":
            return self.num_queries
        patch_size = self.vision_config.patch_size
        num_tokens = (height // patch_size) * (width // patch_size)
        if self.vision_config.model_type in VISION_MODEL_TYPES_WITH_CLS:
            num_tokens += 1
        if self.vision_feature_select_strategy == "default":
            num_tokens -= 1
        return num_tokens


__all__ = ["TinyLlavaConfig"]
