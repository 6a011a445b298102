"""Conversion between TinyLLaVA-HF and transformers' built-in `LlavaForConditionalGeneration` + `LlavaProcessor`.

The built-in LLaVA loads without remote code and is the layout vLLM, SGLang and llama.cpp's converters read. The two
models share their vision tower and language model classes, and LLaVA's projector (`linear_1`, exact GELU,
`linear_2`) is our `mlp2x_gelu` connector, so the conversion moves modules across (no weight is copied) and then
checks, key by key through a rename table, that every target tensor is the source tensor. Anything LLaVA cannot
express is refused unless `allow_lossy`, in which case the logit difference is measured on a probe and reported.
"""

import json
import logging
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from modeling_tinyllava.configuration_tinyllava import VISION_MODEL_TYPES_WITH_CLS
from modeling_tinyllava.processing_tinyllava import processed_image_size

from .errors import ConversionError
from .keymap import FROM_LLAVA, TO_LLAVA, KeyMap, check_against_model, plan_keys
from .original import ConversionResult
from .output import atomic_output, check_source_repo, finish_output
from .parity import PROBE_QUESTION, probe_image
from .strict_load import load_strict
from .tensor_io import DTYPES

logger = logging.getLogger(__name__)

# Vision towers LLaVA serving engines implement (vLLM's LLaVA: CLIP, SigLIP, Pixtral).
SERVABLE_TOWERS = ("clip_vision_model", "siglip_vision_model")


# Entries that loading our processor adds to the tokenizer and image processor: `auto_map` names
# processing_tinyllava (remote code the export does not carry, and must not need), the others record how the files
# were loaded (transformers writes them back on save), not what the tokenizer is.
LOAD_TIME_ENTRIES = {"auto_map", "local_files_only", "is_local"}


def _drop_load_time_entries(directory: Path) -> None:
    """Removes `LOAD_TIME_ENTRIES` at any depth of the processor's JSON files, so the export is plain LLaVA."""

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items() if key not in LOAD_TIME_ENTRIES}
        return value

    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = directory / name
        if path.is_file():
            path.write_text(json.dumps(clean(json.loads(path.read_text())), indent=2, sort_keys=True) + "\n")


def _dtype(dtype: str):
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _check_shared(source: torch.nn.Module, target: torch.nn.Module, keymap: KeyMap, ignore=()) -> None:
    """Strict check after moving modules: every target tensor is the renamed source tensor, nothing is left over."""
    source_state = {k: v for k, v in source.state_dict().items() if k not in ignore}
    plan = plan_keys(source_state, keymap)
    target_state = target.state_dict()
    check_against_model(
        plan,
        {k: tuple(v.shape) for k, v in source_state.items()},
        {k: tuple(v.shape) for k, v in target_state.items()},
        source=type(source).__name__,
    )
    different = [key for key, new in plan.renamed.items() if not torch.equal(source_state[key], target_state[new])]
    if different:
        raise ConversionError(f"Tensors changed while moving modules: {different}")


def lossy_reasons(model: TinyLlavaForConditionalGeneration, processor: TinyLlavaProcessor) -> list[str]:
    """Why `model` cannot be represented exactly as a LLaVA model; empty when it can."""
    config, reasons = model.config, []
    if config.vision_config.model_type not in SERVABLE_TOWERS:
        reasons.append(
            f"vision tower {config.vision_config.model_type!r}: LLaVA serving engines (vLLM, SGLang, llama.cpp) "
            "implement CLIP and SigLIP towers only"
        )
    if model.lm_head.bias is not None and bool(model.lm_head.bias.any()):
        reasons.append("lm_head has a non-zero bias (Phi-2); LLaVA's LM head has none, so the bias is dropped")
    if config.image_features_scale != 1.0:
        reasons.append(
            f"image features are scaled by {config.image_features_scale:g} (original Gemma numerics); LLaVA does not "
            "scale them"
        )
    if processor.image_aspect_ratio != "square":
        reasons.append(
            f"image_aspect_ratio={processor.image_aspect_ratio!r}: LlavaProcessor cannot pad images to a square with "
            "the mean colour; pad them yourself before calling it"
        )
    if getattr(processor, "chunked_image_tokenization", False):
        prompt = f"USER: {processor.image_token}\n{PROBE_QUESTION} ASSISTANT:"
        expanded = prompt.replace(processor.image_token, processor.image_token * processor.num_image_tokens)
        if processor(text=prompt, images=probe_image())["input_ids"][0] != processor.tokenizer(expanded).input_ids:
            reasons.append(
                "this tokenizer gives different ids when the text around <image> is tokenized separately, as the "
                "original did; LlavaProcessor tokenizes the prompt in one pass"
            )
    return reasons


def _probe_logits(model, processor) -> torch.Tensor:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with torch.no_grad():
        return model(**processor(text=prompt, images=probe_image(), return_tensors="pt")).logits.float()


def _logit_diff(model_a, processor_a, model_b, processor_b) -> float:
    """Max abs logit difference on the probe; last position only when the two processors tokenize differently."""
    a, b = _probe_logits(model_a, processor_a), _probe_logits(model_b, processor_b)
    if a.shape != b.shape:
        a, b = a[:, -1], b[:, -1]
    return (a - b).abs().max().item()


@atomic_output
def to_llava(
    src: str | Path, dst: str | Path, allow_lossy: bool = False, dtype: str = "auto", source_repo: str | None = None
) -> ConversionResult:
    """Converts a TinyLLaVA-HF directory into `LlavaForConditionalGeneration` + `LlavaProcessor` (no remote code).

    Raises:
        ConversionError: for a connector other than `mlp2x_gelu` (never representable), or for a lossy conversion
            (each reason listed) without `allow_lossy`.
    """
    src, dst = Path(src), Path(dst)
    check_source_repo(source_repo)
    model = TinyLlavaForConditionalGeneration.from_pretrained(src, dtype=_dtype(dtype)).eval()
    processor = TinyLlavaProcessor.from_pretrained(src)
    config = model.config
    if config.connector_type != "mlp2x_gelu":
        raise ConversionError(
            f"{src}: connector {config.connector_type!r} has no LLaVA equivalent (LLaVA's projector is exactly "
            "mlp2x_gelu: Linear, GELU, Linear); --allow-lossy cannot help."
        )
    reasons = lossy_reasons(model, processor)
    if reasons and not allow_lossy:
        raise ConversionError(
            f"{src} cannot be represented exactly as LLaVA:\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + "\nPass --allow-lossy to convert anyway; the logit difference is then measured and reported."
        )
    llava_config = LlavaConfig(
        text_config=config.text_config,
        vision_config=config.vision_config,
        image_token_index=config.image_token_id,
        image_seq_length=processor.num_image_tokens,
        projector_hidden_act="gelu",  # exact erf GELU, as nn.GELU() in the connector
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    llava_config.dtype = config.dtype
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
    llava.model.vision_tower = model.model.vision_tower
    llava.model.language_model = model.model.language_model
    llava.model.multi_modal_projector.linear_1 = model.model.connector[0]
    llava.model.multi_modal_projector.linear_2 = model.model.connector[2]
    if model.lm_head.bias is None:
        llava.lm_head = model.lm_head
    else:
        llava.lm_head = torch.nn.Linear(
            *reversed(model.lm_head.weight.shape), bias=False, dtype=model.lm_head.weight.dtype
        )
        llava.lm_head.weight = model.lm_head.weight
    llava.tie_weights()
    llava.generation_config = model.generation_config
    llava.eval()
    _check_shared(model, llava, TO_LLAVA, ignore={"lm_head.bias"})

    llava_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=int(config.vision_config.model_type in VISION_MODEL_TYPES_WITH_CLS),
    )
    diff = _logit_diff(model, processor, llava, llava_processor)
    if not reasons and diff != 0.0:
        raise ConversionError(f"LLaVA logits differ from {src} by {diff:.3g} although the conversion should be exact.")
    llava.save_pretrained(dst)
    llava_processor.save_pretrained(dst)
    _drop_load_time_entries(dst)
    result = ConversionResult(dst, diff, lossy=bool(reasons), notes=reasons)
    finish_output(dst, source=src, fmt="llava", result=result, source_repo=source_repo)
    return result


@atomic_output
def from_llava(
    src: str | Path, dst: str | Path, dtype: str = "auto", source_repo: str | None = None
) -> ConversionResult:
    """Converts a transformers `LlavaForConditionalGeneration` directory into TinyLLaVA-HF; always exact."""
    src, dst = Path(src), Path(dst)
    check_source_repo(source_repo)
    llava = LlavaForConditionalGeneration.from_pretrained(src, dtype=_dtype(dtype)).eval()
    llava_processor = LlavaProcessor.from_pretrained(src)
    llava_config = llava.config
    if llava_config.projector_hidden_act != "gelu" or not llava_config.multimodal_projector_bias:
        raise ConversionError(
            f"{src}: projector activation {llava_config.projector_hidden_act!r} with bias="
            f"{llava_config.multimodal_projector_bias} is not TinyLLaVA's mlp2x_gelu (exact GELU, biased linears)."
        )
    config = TinyLlavaConfig(
        text_config=llava_config.text_config,
        vision_config=llava_config.vision_config,
        connector_type="mlp2x_gelu",
        vision_feature_layer=llava_config.vision_feature_layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        image_token_id=llava_config.image_token_id,
        lm_head_bias=False,
        tie_word_embeddings=llava_config.tie_word_embeddings,
        architectures=["TinyLlavaForConditionalGeneration"],
    )
    config.dtype = llava_config.dtype
    with torch.device("meta"):
        model = TinyLlavaForConditionalGeneration(config)
    model.model.vision_tower = llava.model.vision_tower
    model.model.language_model = llava.model.language_model
    model.model.connector[0] = llava.model.multi_modal_projector.linear_1
    model.model.connector[2] = llava.model.multi_modal_projector.linear_2
    model.lm_head = llava.lm_head
    model.tie_weights()
    model.generation_config = llava.generation_config
    model.eval()
    _check_shared(llava, model, FROM_LLAVA)

    processor = TinyLlavaProcessor(
        image_processor=llava_processor.image_processor,
        tokenizer=llava_processor.tokenizer,
        chat_template=llava_processor.chat_template,
        image_token=llava_processor.image_token,
        num_image_tokens=config.get_num_image_tokens(*processed_image_size(llava_processor.image_processor)),
    )
    diff = _logit_diff(llava, llava_processor, model, processor)
    if diff != 0.0:
        raise ConversionError(f"TinyLLaVA logits differ from {src} by {diff:.3g}; the conversion is not exact.")
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    with load_strict(dst):  # only the keys are checked: no weight is read
        pass
    result = ConversionResult(dst, diff)
    finish_output(dst, source=src, fmt="llava", result=result, source_repo=source_repo)
    return result
