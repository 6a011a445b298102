"""TinyLLaVA: a vision tower, a connector and a causal LM, in transformers' own VLM layout.

`TinyLlavaModel` (the backbone, `self.model`) encodes images, projects them with the connector and scatters them into
the `<image>` placeholder positions of the LM input; `TinyLlavaForConditionalGeneration` puts `lm_head` on top.
"""

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tinyllava import MLP_CONNECTOR_PATTERN, TinyLlavaConfig, validate_connector_type


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

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encodes images into LM-space features.

        Args:
            pixel_values: `(num_images, channels, height, width)`, all images of the batch flattened.

        Returns:
            `(num_images, num_image_tokens, text_hidden_size)`.
        """
        layers = self.config.vision_feature_layer
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        hidden_states = self.vision_tower(pixel_values, output_hidden_states=layers, return_dict=True).hidden_states
        selected = [hidden_states[layer] for layer in ([layers] if isinstance(layers, int) else layers)]
        if self.config.vision_feature_select_strategy == "default":
            selected = [features[:, 1:] for features in selected]
        image_features = self.connector(torch.cat(selected, dim=-1))
        if self.config.image_features_scale != 1.0:
            image_features = image_features * torch.tensor(self.config.image_features_scale, dtype=image_features.dtype)
        return image_features

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
    ) -> BaseModelOutputWithPast:
        """Args:
            input_ids: `(batch, seq_len)` with `image_token_id` at every image placeholder position.
            pixel_values: `(num_images, channels, height, width)`, the images of all samples in order.
            inputs_embeds: `(batch, seq_len, hidden)`, instead of `input_ids`.

        Returns:
            The LM backbone's output; `last_hidden_state` is `(batch, seq_len, hidden)`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if len(pixel_values):
                image_features = self.get_image_features(pixel_values)
            else:  # a text-only batch; merging still checks that it has no placeholders
                image_features = inputs_embeds.new_zeros(0, 0, inputs_embeds.shape[-1])
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


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

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`TinyLlavaModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values)

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
    ) -> CausalLMOutputWithPast:
        """Args:
            labels: `(batch, seq_len)` next-token targets (shifted inside the loss); -100 is ignored.
            logits_to_keep: if an int N > 0, compute logits for the last N positions only; if a tensor, the
                positions to keep.

        Returns:
            `CausalLMOutputWithPast` with `logits` `(batch, kept_positions, vocab)` and the loss when `labels` is given.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
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
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
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

        Args:
            llm: a local directory or Hub id of a causal LM.
            vision_tower: a local directory or Hub id of a CLIP, SigLIP or DINOv2 model (vision part or full model).
            connector_type: see [`TinyLlavaConfig`].
            dtype: dtype of the assembled model.
            **config_kwargs: other [`TinyLlavaConfig`] fields (`vision_feature_layer`, `num_queries`, ...).
        """
        from .processing_tinyllava import load_component_configs, load_tokenizer_with_image_token

        tokenizer = load_tokenizer_with_image_token(llm)
        text_config, vision_config = load_component_configs(llm, vision_tower)
        config = TinyLlavaConfig(
            text_config=text_config,
            vision_config=vision_config,
            connector_type=connector_type,
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            **config_kwargs,
        )
        language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
        vision_model = AutoModel.from_pretrained(vision_tower, config=vision_config, dtype=dtype)
        with torch.device("meta"):
            model = cls(config)
        # Swap in the pretrained parts, then materialise the only fresh module, the connector.
        model.model.language_model = getattr(language_model, language_model.base_model_prefix)
        model.model.vision_tower = vision_model
        lm_head = language_model.get_output_embeddings()
        if config.lm_head_bias and lm_head.bias is None:
            raise ValueError(f"{llm} has an LM head without bias, but lm_head_bias=True was requested.")
        model.lm_head = lm_head
        model.model.connector = build_connector(config).to(
            dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype
        )
        model.model.connector.apply(model._init_weights)
        model.config.dtype = model.model.language_model.dtype
        if len(tokenizer) > config.text_config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        model.tie_weights()
        model.generation_config = language_model.generation_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model.eval()


__all__ = ["TinyLlavaForConditionalGeneration", "TinyLlavaModel", "TinyLlavaPreTrainedModel"]
