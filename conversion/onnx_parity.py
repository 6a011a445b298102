"""Numeric parity of an ONNX export against the model it came from, run by ONNX Runtime itself.

The export is driven exactly as `onnx_runtime_example.generate` drives it (embed, scatter the image features into the
placeholder rows, decode over an empty cache, then one cached step), and compared with the torch model on the
conversion probe: an image and a question through the model's own processor.
"""

from pathlib import Path

import numpy as np
import torch

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from modeling_tinyllava.modeling_tinyllava import stack_image_features

from .onnx_graphs import DECODER, EMBED_TOKENS, VISION_ENCODER, cache_shape, past_names
from .onnx_runtime_example import load_sessions
from .parity import PROBE_QUESTION, probe_image


def probe_inputs(processor: TinyLlavaProcessor) -> dict[str, torch.Tensor]:
    """The probe prompt with one image: `input_ids` `(1, seq)`, `attention_mask`, `pixel_values` `(1, 3, H, W)`."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=prompt, images=probe_image(), return_tensors="pt")


def empty_cache(model: TinyLlavaForConditionalGeneration, batch: int = 1) -> dict[str, np.ndarray]:
    num_layers, kv_heads, head_dim = cache_shape(model)
    return {name: np.zeros((batch, kv_heads, 0, head_dim), np.float32) for name in past_names(num_layers)}


@torch.no_grad()
def onnx_parity(
    model: TinyLlavaForConditionalGeneration, processor: TinyLlavaProcessor, model_dir: Path, int8: bool = False
) -> dict[str, float]:
    """Max abs differences, ONNX Runtime against torch (fp32), on the probe.

    Args:
        model: the fp32 model the graphs were exported from.
        processor: its processor.
        model_dir: the directory holding `onnx/`.
        int8: compare the `*_int8.onnx` files instead.

    Returns:
        `image_features`, `prefill_logits` (every position of the prompt) and `decode_logits` (one cached step with
        the greedy next token), each the largest absolute difference.
    """
    sessions = load_sessions(model_dir, int8=int8)
    inputs = probe_inputs(processor)
    input_ids = inputs["input_ids"].numpy()
    features = sessions[VISION_ENCODER].run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    reference_features = stack_image_features(model.get_image_features(inputs["pixel_values"])).numpy()

    embeds = sessions[EMBED_TOKENS].run(None, {"input_ids": input_ids})[0]
    embeds[input_ids == model.config.image_token_id] = features.reshape(-1, embeds.shape[-1])
    seq = input_ids.shape[1]
    decoder = sessions[DECODER]
    feeds = {
        "inputs_embeds": embeds,
        "attention_mask": np.ones((1, seq), np.int64),
        "position_ids": np.arange(seq)[None],
        **empty_cache(model),
    }
    logits, *present = decoder.run(None, feeds)
    reference = model(**inputs).logits

    next_token = reference[:, -1:].argmax(-1)
    step_feeds = {
        "inputs_embeds": sessions[EMBED_TOKENS].run(None, {"input_ids": next_token.numpy()})[0],
        "attention_mask": np.ones((1, seq + 1), np.int64),
        "position_ids": np.array([[seq]]),
        **dict(zip(empty_cache(model), present)),
    }
    step_logits = decoder.run(None, step_feeds)[0]
    extended = {**inputs, "input_ids": torch.cat([inputs["input_ids"], next_token], 1)}
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    reference_step = model(**extended).logits[:, -1:]
    return {
        "image_features": float(np.abs(features - reference_features).max()),
        "prefill_logits": float(np.abs(logits - reference.numpy()).max()),
        "decode_logits": float(np.abs(step_logits - reference_step.numpy()).max()),
    }
