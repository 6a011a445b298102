"""The three graphs of an ONNX export, in the split layout of SmolVLM's ONNX files for transformers.js.

Each graph is a thin module with flat tensor inputs and outputs around the model's own modules (vision tower and
connector, the input embeddings, and the full forward with a `DynamicCache`), exported with `torch.onnx.export(dynamo=True)`:
`torch.export` traces the real control flow with symbolic shapes, so one decoder graph serves the prefill (empty
cache) and every decoding step. The TorchScript exporter also works but is deprecated since torch 2.9 and bakes in
Python branches taken for the example inputs.

| file | inputs | outputs |
|---|---|---|
| `vision_encoder.onnx` | `pixel_values` (images, 3, H, W) | `image_features` (images, tokens, hidden) |
| `embed_tokens.onnx` | `input_ids` (batch, seq) | `inputs_embeds` (batch, seq, hidden) |
| `decoder_model_merged.onnx` | `inputs_embeds`, `attention_mask` (batch, past + seq), `position_ids` (batch, seq), `past_key_values.{i}.key/value` (batch, kv_heads, past, head_dim) | `logits` (batch, seq, vocab), `present.{i}.key/value` (batch, kv_heads, past + seq, head_dim) |
"""

import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from modeling_tinyllava import TinyLlavaForConditionalGeneration

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
VISION_ENCODER, EMBED_TOKENS, DECODER = "vision_encoder", "embed_tokens", "decoder_model_merged"
GRAPHS = (VISION_ENCODER, EMBED_TOKENS, DECODER)
INT8_SUFFIX = "_int8"


def cache_shape(model: TinyLlavaForConditionalGeneration) -> tuple[int, int, int]:
    """(num_layers, kv_heads, head_dim) of the language model's key/value cache."""
    text_config = model.config.text_config
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return text_config.num_hidden_layers, kv_heads, head_dim


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


class VisionEncoder(nn.Module):
    """Vision tower + connector with the model's feature-layer, token-selection and scaling rules.

    These are the rules of `TinyLlavaModel.get_image_features`, restated on tensors: that method returns its features
    as a list of per-image tensors (transformers' LLaVA convention), and splitting a tensor into a list fixes the
    number of images in a traced graph. The conversion's parity check compares this module's output with
    `get_image_features` itself, so the two cannot drift apart unnoticed.
    """

    def __init__(self, model: TinyLlavaForConditionalGeneration):
        super().__init__()
        backbone = model.model
        self.vision_tower, self.connector = backbone.vision_tower, backbone.connector
        config = model.config
        layers = config.vision_feature_layer
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        self.drop_first_token = config.vision_feature_select_strategy == "default"
        self.scale = config.image_features_scale

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(images, 3, H, W)` -> `(images, tokens, hidden)`."""
        hidden_states = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        selected = [hidden_states[layer] for layer in self.layers]
        if self.drop_first_token:
            selected = [features[:, 1:] for features in selected]
        features = self.connector(torch.cat(selected, dim=-1))
        if self.scale != 1.0:
            features = features * torch.tensor(self.scale, dtype=features.dtype)
        return features


class EmbedTokens(nn.Module):
    def __init__(self, model: TinyLlavaForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(batch, seq)` -> `(batch, seq, hidden)`, unscaled (Gemma scales inside the decoder)."""
        return self.embed_tokens(input_ids)


class Decoder(nn.Module):
    """The language model and its head over a key/value cache passed as flat tensors."""

    def __init__(self, model: TinyLlavaForConditionalGeneration):
        super().__init__()
        self.model = model
        self.num_layers = cache_shape(model)[0]

    def forward(self, inputs_embeds, attention_mask, position_ids, *past_key_values) -> tuple[torch.Tensor, ...]:
        """Args:
            inputs_embeds: `(batch, seq, hidden)`.
            attention_mask: `(batch, past + seq)`, 1 for tokens to attend to.
            position_ids: `(batch, seq)`.
            *past_key_values: key, value for each layer, `(batch, kv_heads, past, head_dim)`; past may be 0.

        Returns:
            logits `(batch, seq, vocab)`, then key and value for each layer, `(batch, kv_heads, past + seq, head_dim)`.
        """
        cache = DynamicCache(list(zip(past_key_values[0::2], past_key_values[1::2])))
        output = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        presents = [tensor for layer in output.cache.layers for tensor in (layer.keys, layer.values)]
        return (output.logits, *presents)


def _export(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic_shapes, path: Path) -> None:
    input_names, output_names = names
    module.eval()  # a fresh wrapper starts in training mode, whatever the model inside it
    # onnx_ir and onnxscript log every constant and rewrite at INFO; torch.onnx warns that torchvision's ops (which
    # no TinyLLaVA uses) cannot be registered without torchvision, and for each axis name it merges with another.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            module,
            args,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
    program.save(path)  # weights go to a `.data` file beside it only past protobuf's 2 GB limit
    logger.info("Exported %s", path)


def export_graphs(model: TinyLlavaForConditionalGeneration, onnx_dir: Path, image_size: tuple[int, int]) -> list[Path]:
    """Exports the three fp32 graphs of an fp32 `model` in eval mode into `onnx_dir`; returns their paths.

    `image_size` is the processor's (height, width): the vision encoder takes any number of images of that size.

    Example inputs avoid sizes 0 and 1, which `torch.export` would specialise on; every named axis stays dynamic.
    """
    onnx_dir.mkdir(parents=True, exist_ok=True)
    num_layers, kv_heads, head_dim = cache_shape(model)
    hidden = model.config.text_config.hidden_size
    batch, past, seq = 2, 3, 5
    paths = {name: onnx_dir / f"{name}.onnx" for name in GRAPHS}

    pixel_values = torch.randn(2, 3, *image_size)
    _export(
        VisionEncoder(model),
        (pixel_values,),
        (["pixel_values"], ["image_features"]),
        ({0: "num_images"},),
        paths[VISION_ENCODER],
    )
    input_ids = torch.randint(0, model.config.text_config.vocab_size, (batch, seq))
    _export(
        EmbedTokens(model),
        (input_ids,),
        (["input_ids"], ["inputs_embeds"]),
        ({0: "batch_size", 1: "sequence_length"},),
        paths[EMBED_TOKENS],
    )
    cache = tuple(torch.randn(batch, kv_heads, past, head_dim) for _ in range(2 * num_layers))
    decoder_args = (
        torch.randn(batch, seq, hidden),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).expand(batch, -1),
        *cache,
    )
    token_axes = {0: "batch_size", 1: "sequence_length"}
    _export(
        Decoder(model),
        decoder_args,
        (
            ["inputs_embeds", "attention_mask", "position_ids", *past_names(num_layers)],
            ["logits", *present_names(num_layers)],
        ),
        (
            token_axes,
            {0: "batch_size", 1: "total_sequence_length"},
            token_axes,
            tuple({0: "batch_size", 2: "past_sequence_length"} for _ in cache),
        ),
        paths[DECODER],
    )
    return list(paths.values())


def quantize_int8(paths: list[Path]) -> list[Path]:
    """Writes `<name>_int8.onnx` beside each graph: ONNX Runtime's dynamic quantization (int8 weights, activations
    quantized on the fly), the `*_int8.onnx` files of transformers.js exports."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    outputs = []
    for path in paths:
        output = path.with_name(f"{path.stem}{INT8_SUFFIX}.onnx")
        external = path.with_name(path.name + ".data").exists()
        logging.disable(logging.INFO)  # the quantizer logs every tensor it skips on the root logger
        try:
            quantize_dynamic(path, output, weight_type=QuantType.QInt8, use_external_data_format=external)
        finally:
            logging.disable(logging.NOTSET)
        logger.info("Quantized %s", output)
        outputs.append(output)
    return outputs
