"""`tinyllava-convert to-onnx`: a TinyLLaVA-HF checkpoint as ONNX graphs for ONNX Runtime (and transformers.js' layout).

The graphs are exported in fp32, run by ONNX Runtime on the conversion probe and compared with the torch model; like
every conversion, this one writes into a staging directory beside DST that becomes DST only when every check passed
(`output.atomic_output`): image features, prefill logits and a cached decoding step must agree within `atol`. `--quantize int8` adds ONNX Runtime's dynamically quantized `*_int8.onnx` files; their
difference from the fp32 model is measured and recorded in `conversion.json` (quantization is lossy by design).
"""

import importlib.util
import logging
from pathlib import Path

import torch

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from modeling_tinyllava.processing_tinyllava import processed_image_size

from .errors import ConversionError
from .onnx_graphs import ONNX_DIR, export_graphs, quantize_int8
from .original import DEFAULT_ATOL, ConversionResult
from .output import atomic_output, check_source_repo, finish_output

logger = logging.getLogger(__name__)

# Families whose export was checked against torch (tests/test_conversion_onnx.py and the conversion's own parity
# check). Others may trace but could hold cache layouts a plain DynamicCache does not reproduce (sliding windows).
ONNX_TEXT_MODELS = ("llama", "qwen2", "phi", "gemma", "stablelm")
ONNX_VISION_MODELS = ("siglip_vision_model", "clip_vision_model", "dinov2")
QUANTIZATIONS = ("int8",)


def unsupported_reasons(model: TinyLlavaForConditionalGeneration) -> list[str]:
    """Why `model` cannot be exported; empty when it can."""
    config, reasons = model.config, []
    text_type, vision_type = config.text_config.model_type, config.vision_config.model_type
    if text_type not in ONNX_TEXT_MODELS:
        reasons.append(f"language model {text_type!r}: the ONNX export supports {', '.join(ONNX_TEXT_MODELS)}")
    if getattr(config.text_config, "use_sliding_window", False):
        reasons.append(
            "the language model uses sliding-window attention, which the exported decoder's plain key/value "
            "cache does not reproduce"
        )
    if vision_type not in ONNX_VISION_MODELS:
        reasons.append(f"vision tower {vision_type!r}: the ONNX export supports {', '.join(ONNX_VISION_MODELS)}")
    return reasons


def _check_requirements() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConversionError(
            f"The ONNX export needs {', '.join(missing)}: pip install 'tinyllava-hf[onnx]' (onnx, onnxscript, "
            "onnxruntime)."
        )


@atomic_output
def to_onnx(
    src: str | Path,
    dst: str | Path,
    quantize: str | None = None,
    atol: float = DEFAULT_ATOL,
    source_repo: str | None = None,
) -> ConversionResult:
    """Exports a TinyLLaVA-HF directory to `DST/onnx/` plus config, tokenizer, processor and generation config.

    Args:
        src: a saved TinyLLaVA-HF model directory.
        dst: the output directory (new or empty).
        quantize: `"int8"` to also write `*_int8.onnx` files.
        atol: the largest accepted difference (image features and logits) between ONNX Runtime and torch, fp32.
        source_repo: the Hub repo `src` came from, recorded in `conversion.json`.

    Raises:
        ConversionError: for an unsupported architecture (every reason listed), an unknown `quantize`, or a parity
            failure; nothing is written to `dst` then.
    """
    src, dst = Path(src), Path(dst)
    check_source_repo(source_repo)
    _check_requirements()
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConversionError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}.")
    # ONNX Runtime's CPU kernels are fp32: the export is fp32 whatever the checkpoint's dtype.
    model = TinyLlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    processor = TinyLlavaProcessor.from_pretrained(src)
    reasons = unsupported_reasons(model)
    if reasons:
        raise ConversionError(f"{src} cannot be exported to ONNX:\n" + "\n".join(f"  - {r}" for r in reasons))

    from .onnx_parity import onnx_parity  # imports onnxruntime, an optional dependency

    paths = export_graphs(model, dst / ONNX_DIR, processed_image_size(processor.image_processor))
    diffs = onnx_parity(model, processor, dst)
    logger.info("ONNX Runtime vs torch (fp32): %s", diffs)
    failed = {name: diff for name, diff in diffs.items() if not diff <= atol}
    if failed:
        raise ConversionError(
            f"The ONNX export of {src} differs from the torch model by more than --atol {atol:g}: "
            + ", ".join(f"{name} {diff:.3g}" for name, diff in failed.items())
        )
    notes = [f"ONNX Runtime fp32 against torch fp32, max abs difference: {_format(diffs)}"]
    if quantize:
        quantize_int8(paths)
        int8_diffs = onnx_parity(model, processor, dst, int8=True)
        notes.append(f"int8 (dynamic quantization) against torch fp32, max abs difference: {_format(int8_diffs)}")

    model.config.dtype = torch.float32  # what the ONNX graphs hold
    model.config.save_pretrained(dst)
    model.generation_config.save_pretrained(dst)
    processor.save_pretrained(dst)
    result = ConversionResult(dst, max(diffs["prefill_logits"], diffs["decode_logits"]), notes=notes)
    finish_output(dst, source=src, fmt="onnx", result=result, source_repo=source_repo)
    return result


def _format(diffs: dict[str, float]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {diff:.3g}" for name, diff in diffs.items())
