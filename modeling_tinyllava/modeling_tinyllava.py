"""TinyLLaVA: a vision tower, a connector and a causal LM, in transformers' own VLM layout.

`TinyLlavaModel` (the backbone, `self.model`) encodes images, projects them with the connector and scatters them into
the `<image>` placeholder positions of the LM input; `TinyLlavaForConditionalGeneration` puts `lm_head` on top.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from .configuration_tinyllava import MLP_CONNECTOR_PATTERN, TinyLlavaConfig, validate_connector_type


def stack_image_features(image_outputs: BaseModelOutputWithPooling | None) -> torch.Tensor | None:
    """The per-image features of `get_image_features` as one `(num_images, num_image_tokens, hidden)` tensor."""
    return None if image_outputs is None else torch.stack(list(image_outputs.pooler_output))


@dataclass
class TinyLlavaModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""Output of [`TinyLlavaModel`]: the LM backbone's output, plus `image_outputs`, the vision tower's output whose
    `pooler_output` holds the connector output of each image (`(num_image_tokens, text_hidden_size)` each).

    `image_hidden_states` stacks those into `(num_images, num_image_tokens, text_hidden_size)`: the features written
    into the `<image>` placeholder positions (None when the batch had no images).
    """

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        return stack_image_features(self.image_outputs)


@dataclass
class TinyLlavaCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""Output of [`TinyLlavaForConditionalGeneration`]: loss, logits, cache, the LM's hidden states and attentions,
    and `image_outputs` (see [`TinyLlavaModelOutputWithPast`]).

    `image_hidden_states` is `(num_images, num_image_tokens, text_hidden_size)`: the connector output written into the
    `<image>` placeholder positions (None when the batch had no images).
    """

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        return stack_image_features(self.image_outputs)


class PerceiverAttention(nn.Module):
    """Cross-attention from the latents to (image tokens + latents), as in the original resampler."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Args: media `(batch, num_tokens, dim)`, latents `(batch, num_queries, dim)`. Returns `(batch, num_queries, dim)`."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        batch, num_queries, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((media, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        sim = (q * self.scale) @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = sim.softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(batch, num_queries, -1))


class PerceiverResampler(nn.Module):
    """Flamingo-style resampler: `num_queries` learned latents attend to the image tokens."""

    def __init__(self, vision_dim: int, text_dim: int, num_queries: int, num_layers: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_queries, text_dim))
        self.linear = nn.Linear(vision_dim, text_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(text_dim),
                    nn.Sequential(
                        nn.LayerNorm(text_dim),
                        nn.Linear(text_dim, 4 * text_dim, bias=False),
                        nn.GELU(),
                        nn.Linear(4 * text_dim, text_dim, bias=False),
                    ),
                ]
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(text_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Args: image_features `(num_images, num_tokens, vision_dim)`. Returns `(num_images, num_queries, text_dim)`."""
        media = self.linear(image_features)
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for attention, feed_forward in self.layers:
            latents = attention(media, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm(latents)


def build_connector(config: TinyLlavaConfig) -> nn.Module:
    """The connector for `config.connector_type`, with the original TinyLLaVA parameter names.

    `mlp{N}x_gelu` is an `nn.Sequential` of N linears with exact-erf GELUs between them (keys `0`, `2`, ...),
    `linear` a single `nn.Linear`, `identity` nothing, `resampler` a Perceiver resampler.
    """
    connector_type = config.connector_type
    validate_connector_type(connector_type)
    vision_dim = config.vision_config.hidden_size * config.num_vision_feature_layers
    text_dim = config.text_config.hidden_size
    mlp_match = MLP_CONNECTOR_PATTERN.match(connector_type)
    if mlp_match:
        layers = [nn.Linear(vision_dim, text_dim)]
        for _ in range(int(mlp_match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
        return nn.Sequential(*layers)
    if connector_type == "linear":
        return nn.Linear(vision_dim, text_dim)
    if connector_type == "identity":
        if vision_dim != text_dim:
            raise ValueError(
                f"connector_type 'identity' needs equal vision and text hidden sizes, got {vision_dim} and {text_dim}."
            )
        return nn.Identity()
    return PerceiverResampler(vision_dim, text_dim, config.num_queries, config.num_resampler_layers)


class TinyLlavaPreTrainedModel(PreTrainedModel):
    config_class = TinyLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    def post_init(self):
        super().post_init()
        # The union gathered from the towers names classes of their *full* models (e.g. SiglipTextEmbeddings from
        # the SigLIP/CLIP base class), which FSDP auto-wrap rejects when missing: keep the classes this model holds.
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = {name for name in self._no_split_modules if name in present}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PerceiverResampler):
            nn.init.normal_(module.latents)


class TinyLlavaModel(TinyLlavaPreTrainedModel):
    """The multimodal backbone: vision tower + connector + LM without head. Returns the LM's last hidden state."""

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.connector = build_connector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encodes images into LM-space features, in the shape of transformers' `LlavaModel.get_image_features`.

        The tower's hidden state(s) `vision_feature_layer` are taken (a list is concatenated on the feature dimension);
        `"default"` drops the first token of each (CLS for CLIP/DINOv2; SigLIP has none, and the original drops its
        first *patch*), `"full"` keeps all. The connector projects them; `image_features_scale` multiplies the result.

        Args:
            pixel_values: `(num_images, channels, height, width)`, all images of the batch flattened.
            vision_feature_layer, vision_feature_select_strategy: default to the config's.
            **kwargs: passed to the vision tower.

        Returns:
            The vision tower's `BaseModelOutputWithPooling`, whose `pooler_output` is a list of `num_images` tensors
            `(num_image_tokens, text_hidden_size)`.
        """
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else vision_feature_layer
        selected = [image_outputs.hidden_states[layer] for layer in layers]
        if vision_feature_select_strategy == "default":
            selected = [features[:, 1:] for features in selected]
        image_features = self.connector(torch.cat(selected, dim=-1))
        if self.config.image_features_scale != 1.0:
            image_features = image_features * torch.tensor(self.config.image_features_scale, dtype=image_features.dtype)
        image_outputs.pooler_output = list(image_features)
        return image_outputs

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean mask `(batch, seq_len)` of the `<image>` placeholder positions."""
        if self.config.image_token_id is None:
            raise ValueError("config.image_token_id is not set, so image placeholders cannot be located.")
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_token_embedding).all(-1)

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Writes `image_features` `(num_images, num_tokens, hidden)` into the placeholder rows of `inputs_embeds`."""
        mask = self.get_placeholder_mask(input_ids, inputs_embeds)
        num_placeholders = int(mask.sum())
        num_features = image_features.shape[0] * image_features.shape[1]
        if num_placeholders != num_features:
            raise ValueError(
                f"Image features and image tokens do not match: the input has {num_placeholders} image placeholder "
                f"tokens but the images give {num_features} features ({image_features.shape[0]} images x "
                f"{image_features.shape[1]} tokens)."
            )
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.device, inputs_embeds.dtype))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> tuple | TinyLlavaModelOutputWithPast:
        """Args:
            input_ids: `(batch, seq_len)` with `image_token_id` at every image placeholder position.
            pixel_values: `(num_images, channels, height, width)`, the images of all samples in order.
            inputs_embeds: `(batch, seq_len, hidden)`, instead of `input_ids`.

        Returns:
            [`TinyLlavaModelOutputWithPast`]: `last_hidden_state` `(batch, seq_len, hidden)`, the LM's cache, hidden
            states and attentions, and the image features.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image_outputs = None
        if pixel_values is not None:
            if len(pixel_values):
                image_outputs = self.get_image_features(pixel_values, return_dict=True)
                image_features = stack_image_features(image_outputs)
            else:  # a text-only batch; merging still checks that it has no placeholders
                image_features = inputs_embeds.new_zeros(0, 0, inputs_embeds.shape[-1])
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return TinyLlavaModelOutputWithPast(**outputs, image_outputs=image_outputs)


class TinyLlavaForConditionalGeneration(TinyLlavaPreTrainedModel, GenerationMixin):
    """TinyLLaVA with a language-modelling head; generates text from images and text."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.model = TinyLlavaModel(config)
        text_config = config.text_config
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """See [`TinyLlavaModel.get_image_features`]."""
        return self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> tuple | TinyLlavaCausalLMOutputWithPast:
        """Args:
            labels: `(batch, seq_len)` next-token targets (shifted inside the loss); -100 is ignored.
            logits_to_keep: if an int N > 0, compute logits for the last N positions only; if a tensor, the
                positions to keep.

        Returns:
            [`TinyLlavaCausalLMOutputWithPast`] with `logits` `(batch, kept_positions, vocab)`, the loss when `labels`
            is given, and the image features; a tuple with `return_dict=False`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        positions = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, positions, :])
        softcap = getattr(self.config.text_config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return TinyLlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )

    @classmethod
    def from_pretrained_components(
        cls,
        llm: str,
        vision_tower: str,
        connector_type: str = "mlp2x_gelu",
        dtype: torch.dtype | str = torch.float32,
        **config_kwargs,
    ) -> "TinyLlavaForConditionalGeneration":
        """Assembles a NEW TinyLLaVA from a pretrained causal LM and a pretrained vision encoder.

        The LM and vision weights are loaded as they are; the connector is freshly initialised. The tokenizer of
        `llm` is loaded only to learn the id of the `<image>` token it gets (see
        [`TinyLlavaProcessor.from_pretrained_components`], which makes the matching processor), and the embeddings
        are resized when that token is new to the vocabulary.

        A thin entry point to `tinyllava_hf.assembly` (installed with `pip install tinyllava-hf`; a checkpoint's
        remote code does not carry it).

        Args:
            llm: a local directory or Hub id of a causal LM.
            vision_tower: a local directory or Hub id of a CLIP, SigLIP or DINOv2 model (vision part or full model).
            connector_type: see [`TinyLlavaConfig`].
            dtype: dtype of the assembled model.
            **config_kwargs: other [`TinyLlavaConfig`] fields (`vision_feature_layer`, `num_queries`, ...).

        Raises:
            ImportError: when the `tinyllava_hf` package is not installed.
        """
        try:  # in a try block, so that loading this file as remote code does not require the package
            from tinyllava_hf.assembly import assemble_model
        except ImportError as error:
            raise ImportError(
                "TinyLlavaForConditionalGeneration.from_pretrained_components assembles a new model with the "
                "TinyLLaVA-HF tools: pip install tinyllava-hf"
            ) from error
        return assemble_model(cls, llm, vision_tower, connector_type=connector_type, dtype=dtype, **config_kwargs)


__all__ = [
    "TinyLlavaCausalLMOutputWithPast",
    "TinyLlavaForConditionalGeneration",
    "TinyLlavaModel",
    "TinyLlavaModelOutputWithPast",
    "TinyLlavaPreTrainedModel",
]
