"""`tinyllava-convert to-gguf`: a TinyLLaVA-HF checkpoint as llama.cpp / Ollama files.

Writes, into DST:
- `<name>-<outtype>.gguf`: the language model with its tokenizer and our chat template (`tokenizer.chat_template`);
- `mmproj-<name>-f16.gguf`: the vision tower and connector, for libmtmd (`llama-mtmd-cli --mmproj`, llama-server,
  llama-cpp-python's `MTMDChatHandler`, Ollama);
- `Modelfile` for `ollama create`, `conversion.json` and a README with the commands.

What llama.cpp computes differently is refused with the reasons, unless `allow_lossy`, in which case the effect is
measured on a probe by replaying llama.cpp's image path in torch and reported.
"""

import copy
import json
import logging
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from modeling_tinyllava.processing_tinyllava import IMAGE_TOKEN
from tinyllava_hf import model_cards

from ..chat_templates import CHAT_TEMPLATES, SYSTEM_PROMPT
from .errors import ConversionError
from .gguf_lm import gguf_architecture, lm_tensors, to_numpy, write_lm_hparams
from .gguf_mmproj import MmprojPlan, mmproj_tensors, plan_mmproj, write_mmproj
from .gguf_tokenizer import tokenizer_lossy_reasons, write_tokenizer
from .original import ConversionResult
from .output import atomic_output, check_source_repo
from .parity import PROBE_QUESTION, probe_image

logger = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "q8_0")
# libmtmd's default media marker: the text that stands for an image in a prompt (mtmd_default_marker()).
MEDIA_MARKER = "<__media__>"
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# Our templates mark supervised spans for training; Jinja engines outside transformers do not know the tag.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def gguf_chat_template(template: str) -> str:
    """Our chat template for llama.cpp: `{% generation %}` tags removed, `<image>` written as libmtmd's marker.

    Clients that send images as content parts get them back as text parts holding the marker (llama-cpp-python's
    `MTMDChatHandler`, llama-server); those markers are counted as images too, so that every image still moves to
    the front of its turn as the original does. Markers are counted with `split` rather than `count`, which
    llama.cpp's own Jinja engine (`llama-mtmd-cli --jinja`, llama-server) does not implement.
    """
    template = _GENERATION_TAGS.sub("", template).replace(IMAGE_TOKEN, MEDIA_MARKER)
    count_markers = (
        "{%- set num_images = num_images + (text.split('" + MEDIA_MARKER + "') | length) - 1 -%}"
        "{%- set text = text.replace('" + MEDIA_MARKER + "', '') -%}"
    )
    anchor = "{%- if message['role'] == 'user' -%}"
    return template.replace(anchor, count_markers + anchor)


def _tensor_data(tensor: torch.Tensor, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """The array to store and its quantized type; vectors stay float32, as llama.cpp requires of norms and biases."""
    data = to_numpy(tensor)
    if data.ndim < 2 or outtype == "f32":
        return data, None
    if (
        outtype == "q8_0"
        and data.ndim == 2
        and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
    ):
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def language_model_tensors(model) -> dict[str, torch.Tensor]:
    text_config = model.config.text_config
    arch = gguf_architecture(text_config)
    name_map = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), text_config.num_hidden_layers
    )
    return lm_tensors(model, text_config, name_map)


def write_language_model(
    path: Path, model, processor, tensors: dict[str, torch.Tensor], outtype: str, name: str
) -> None:
    """Writes the LM GGUF: hyperparameters, tokenizer, chat template and `tensors` (from `language_model_tensors`)."""
    arch = gguf_architecture(model.config.text_config)
    text_config = model.config.text_config
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_lm_hparams(writer, text_config)
    write_tokenizer(writer, processor.tokenizer, tensors["token_embd.weight"].shape[0], gguf_eos(model, processor))
    if processor.chat_template:
        writer.add_chat_template(gguf_chat_template(processor.chat_template))
    for tensor_name, tensor in tensors.items():
        data, qtype = _tensor_data(tensor, outtype)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _llamacpp_image_features(model, plan: MmprojPlan):
    """A replacement for `get_image_features` that replays libmtmd's LLaVA graph (token selection) in torch."""
    config = model.config
    layers = (
        [config.vision_feature_layer] if isinstance(config.vision_feature_layer, int) else config.vision_feature_layer
    )

    def features(pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        tower = model.model.vision_tower
        hidden = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states
        selected = torch.cat([hidden[layer] for layer in layers], dim=-1)
        if config.vision_config.model_type == "clip_vision_model":
            selected = torch.cat([selected[:, 2:], selected[:, :1]], dim=1)  # [patch 1..n-1, CLS]
        image_features = model.model.connector(selected) * config.image_features_scale
        return BaseModelOutputWithPooling(pooler_output=list(image_features))  # as `get_image_features` returns

    return features


@torch.no_grad()
def measure_lossy_effect(model, processor, plan: MmprojPlan, max_new_tokens: int = 16) -> dict:
    """Runs the probe through our model and through a torch replay of llama.cpp's image path.

    Returns:
        `{"first_token_max_abs_logit_diff": d, "greedy_tokens_agree": k, "greedy_tokens": n, "answer": ...,
        "llamacpp_answer": ...}`: the largest logit difference at the answer's first position, how many of the first
        n greedy tokens agree, and both decoded answers.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = probe_image(model.config.vision_config.image_size, model.config.vision_config.image_size)
    answers, first_logits = [], []
    replay = _llamacpp_image_features(model, plan)
    for variant in ("ours", "llama.cpp"):
        variant_processor = processor
        if variant == "llama.cpp":
            pixel_values = processor(text=prompt, images=image, return_tensors="pt")["pixel_values"]
            variant_processor = copy.copy(processor)
            variant_processor.num_image_tokens = replay(pixel_values).pooler_output[0].shape[0]
        inputs = variant_processor(text=prompt, images=image, return_tensors="pt")
        original = model.model.get_image_features
        if variant == "llama.cpp":
            model.model.get_image_features = replay
        try:
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        finally:
            model.model.get_image_features = original
        answers.append(output.sequences[0, inputs["input_ids"].shape[1] :].tolist())
        first_logits.append(output.logits[0][0])
    ours, theirs = answers
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    decode = processor.tokenizer.decode
    return {
        "first_token_max_abs_logit_diff": (first_logits[0] - first_logits[1]).abs().max().item(),
        "greedy_tokens_agree": agree,
        "greedy_tokens": len(ours),
        "answer": decode(ours, skip_special_tokens=True),
        "llamacpp_answer": decode(theirs, skip_special_tokens=True),
    }


def lossy_reasons(model, processor, plan: MmprojPlan) -> list[str]:
    """Everything llama.cpp would compute differently from `model`; empty when the export is exact."""
    reasons = list(plan.lossy) + tokenizer_lossy_reasons(processor.tokenizer)
    if processor.image_aspect_ratio == "pad":
        reasons.append(
            "image_aspect_ratio='pad': libmtmd letterboxes images itself, with its fixed colour (122, 116, 104) "
            f"instead of the image mean {tuple(int(m * 255) for m in processor.image_processor.image_mean)}"
        )
    return reasons


def modelfile(lm_file: str, mmproj_file: str, chat_template_name: str | None, eos_token: str) -> str:
    """An Ollama Modelfile for the two files (Ollama's Go template mirrors our conversation template)."""
    lines = [f"FROM ./{lm_file}", f"FROM ./{mmproj_file}"]
    if chat_template_name not in (None, "pretrain"):
        lines.append(
            'TEMPLATE """{{ if .System }}{{ .System }}{{ else }}'
            + SYSTEM_PROMPT
            + '{{ end }} {{ range .Messages }}{{ if eq .Role "user" }}USER: {{ .Content }} '
            + '{{ else if eq .Role "assistant" }}ASSISTANT: {{ .Content }}'
            + eos_token
            + '{{ end }}{{ end }}ASSISTANT:"""'
        )
    lines += [f'PARAMETER stop "{eos_token}"', "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"


def _template_name(processor) -> str | None:
    return next((name for name, text in CHAT_TEMPLATES.items() if text == processor.chat_template), None)


@atomic_output
def to_gguf(
    src: str | Path,
    dst: str | Path,
    outtype: str = "f16",
    allow_lossy: bool = False,
    name: str | None = None,
    source_repo: str | None = None,
) -> ConversionResult:
    """Exports a TinyLLaVA-HF checkpoint to a language-model GGUF and an mmproj GGUF.

    Args:
        src: the checkpoint directory.
        dst: the output directory (must not exist or be empty; written all-or-nothing by `atomic_output`).
        outtype: `f32`, `f16` or `q8_0` for the language model's matrices (the mmproj is always f16).
        allow_lossy: export what llama.cpp computes differently, and report the measured effect.
        name: file name stem; default: SRC's directory name.
        source_repo: the Hub repo SRC came from, recorded in `conversion.json`.

    Raises:
        ConversionError: for anything llama.cpp cannot run, or (without `allow_lossy`) runs differently.
    """
    src, dst = Path(src), Path(dst)
    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}.")
    check_source_repo(source_repo)
    model = TinyLlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    processor = TinyLlavaProcessor.from_pretrained(src)
    lm = language_model_tensors(model)
    plan = plan_mmproj(model.config, processor.image_processor)
    vision = mmproj_tensors(model, plan)
    reasons = lossy_reasons(model, processor, plan)
    if reasons and not allow_lossy:
        raise ConversionError(
            f"{src} cannot be run exactly by llama.cpp:\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + "\nPass --allow-lossy to export anyway; the effect is then measured and reported."
        )
    name = name or src.resolve().name
    lm_file, mmproj_file = f"{name}-{outtype}.gguf", f"mmproj-{name}-f16.gguf"
    eos_token = processor.tokenizer.convert_ids_to_tokens(gguf_eos(model, processor))
    write_language_model(dst / lm_file, model, processor, lm, outtype, name)
    write_mmproj(dst / mmproj_file, model, processor.image_processor, plan, vision, name)
    (dst / "Modelfile").write_text(modelfile(lm_file, mmproj_file, _template_name(processor), eos_token))
    notes = list(reasons)
    if reasons:
        effect = measure_lossy_effect(model, processor, plan)
        notes.append(
            f"measured on the probe: max abs logit difference {effect['first_token_max_abs_logit_diff']:.3g} at the "
            f"first answer position, {effect['greedy_tokens_agree']}/{effect['greedy_tokens']} greedy tokens agree "
            f"(ours {effect['answer']!r}, llama.cpp replay {effect['llamacpp_answer']!r})"
        )
    if plan.skipped:
        notes.append(f"{len(plan.skipped)} vision tower tensors are not exported (never read by the image features)")
    record = {
        "source": source_repo or str(src),
        **({"source_path": str(src)} if source_repo else {}),
        "format": "gguf",
        "outtype": outtype,
        "files": {"language_model": lm_file, "mmproj": mmproj_file, "ollama": "Modelfile"},
        "lossy": bool(reasons),
        "notes": notes,
    }
    (dst / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    model_cards.write_gguf_card(dst, model.config.vision_config.image_size)
    return ConversionResult(dst, None, lossy=bool(reasons), notes=notes)


def gguf_eos(model, processor) -> int:
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    return processor.tokenizer.eos_token_id if eos is None else eos
