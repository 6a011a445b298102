"""Converting original TinyLLaVA checkpoints (Factory, legacy TinyLLaVABench) into our Hub-ready layout.

The weights are streamed: source tensors are read one at a time, renamed by a `KeyMap`, cast and written into
safetensors shards, so memory stays around one tensor however large the checkpoint. Before anything is written the
renamed keys and shapes are checked against the target model (built on the meta device, so it costs no memory);
afterwards the written directory is loaded strictly, its weights left on disk and read module by module
(`strict_load`), and its logits are compared with a replay of the original forward.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaProcessor

from .errors import ConversionError
from .keymap import FACTORY, FACTORY_SPLIT_PREFIXES, LEGACY, KeyMap, check_against_model, plan_keys
from .original_config import (
    SELECT_STRATEGIES,
    OriginalModel,
    describe_factory,
    describe_legacy,
    image_features_scale,
    read_json,
)
from .output import atomic_output, check_source_repo, finish_output
from .parity import check_original_parity
from .processor import build_processor, load_image_processor, load_tokenizer
from .strict_load import load_strict
from .tensor_io import (
    DTYPES,
    OutputTensor,
    TensorInfo,
    TensorReader,
    list_tensors,
    parse_size,
    weight_files,
    write_sharded_safetensors,
)

logger = logging.getLogger(__name__)

EMBEDDING_KEY = "model.language_model.embed_tokens.weight"
# Rows of these grow when `<image>` is new to the vocabulary.
VOCAB_KEYS = {EMBEDDING_KEY, "lm_head.weight", "lm_head.bias"}
DEFAULT_MAX_SHARD_SIZE = "5GB"
DEFAULT_ATOL = 1e-4


@dataclass
class ConversionResult:
    """What a conversion did: where it wrote, the measured logit difference, and everything worth a log line."""

    output_dir: Path
    max_abs_logit_diff: float | None
    lossy: bool = False
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _source_tensors(src: Path, fmt: str) -> list[TensorInfo]:
    if (src / "adapter_config.json").is_file():
        raise ConversionError(
            f"{src} holds a LoRA adapter (adapter_config.json): merge it into the base weights with the original "
            "code first (its load_pretrained_model merges LoRA), then convert the merged checkpoint."
        )
    files = weight_files(src)
    if files:
        return list_tensors(files)
    split_dirs = {name: src / name for name in FACTORY_SPLIT_PREFIXES if (src / name).is_dir()}
    if fmt == "factory" and split_dirs:
        missing = sorted(set(FACTORY_SPLIT_PREFIXES) - set(split_dirs))
        if missing:
            raise ConversionError(f"{src} has the split pretrain layout but lacks {', '.join(missing)}/.")
        infos = []
        for name, directory in split_dirs.items():
            files = weight_files(directory)
            if not files:
                raise ConversionError(f"{directory} has no *.safetensors or *.bin weight files.")
            infos += list_tensors(files, prefix=FACTORY_SPLIT_PREFIXES[name])
        return infos
    raise ConversionError(
        f"No weights in {src}: expected *.safetensors or *.bin files"
        + (", or the split pretrain layout language_model/, vision_tower/, connector/." if fmt == "factory" else ".")
    )


def _make_config(original: OriginalModel, tokenizer, lm_head_bias: bool, notes: list[str]) -> TinyLlavaConfig:
    text_config = original.text_config
    if len(tokenizer) > text_config.vocab_size:
        notes.append(f"vocabulary grown from {text_config.vocab_size} to {len(tokenizer)} rows for <image>")
        text_config.vocab_size = len(tokenizer)
    try:
        return TinyLlavaConfig(
            text_config=text_config,
            vision_config=original.vision_config,
            connector_type=original.connector_type,
            vision_feature_layer=original.vision_feature_layer,
            vision_feature_select_strategy=SELECT_STRATEGIES[original.original_select_strategy],
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            image_features_scale=image_features_scale(original),
            lm_head_bias=lm_head_bias,
            architectures=["TinyLlavaForConditionalGeneration"],
            **original.config_kwargs,
        )
    except ValueError as error:
        raise ConversionError(f"The source config cannot be represented: {error}") from error


def _expected_shapes(config: TinyLlavaConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = TinyLlavaForConditionalGeneration(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def _output_tensors(plan, infos, expected, reader: TensorReader, dtype: torch.dtype | None) -> list[OutputTensor]:
    """One `OutputTensor` per renamed source tensor, in source order (each `.bin` file is then read once)."""

    def producer(info: TensorInfo, shape: tuple[int, ...], out_dtype: torch.dtype):
        def produce() -> torch.Tensor:
            tensor = reader.read(info)
            if tuple(tensor.shape) != shape:  # new vocabulary rows: the mean row, a neutral start for <image>
                extra = tensor.float().mean(0, keepdim=True).expand(shape[0] - tensor.shape[0], *tensor.shape[1:])
                tensor = torch.cat([tensor, extra.to(tensor.dtype)])
            return tensor.to(out_dtype)

        return produce

    outputs = []
    for info in infos:
        if info.key not in plan.renamed:
            continue
        target = plan.renamed[info.key]
        out_dtype = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
        shape = expected[target]
        outputs.append(OutputTensor(target, shape, out_dtype, producer(info, shape, out_dtype)))
    return outputs


@atomic_output
def convert_original(
    fmt: str,
    src: str | Path,
    dst: str | Path,
    dtype: str = "auto",
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    tokenizer_dir: str | Path | None = None,
    vision_config: str | Path | None = None,
    chat_template: str | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    source_repo: str | None = None,
) -> ConversionResult:
    """Converts an original TinyLLaVA checkpoint directory into a Hub-ready TinyLLaVA-HF directory.

    Args:
        fmt: `"factory"` (TinyLLaVA Factory, reference §6.1, incl. the split pretrain layout) or `"legacy"`
            (TinyLLaVABench, reference §6.2).
        src: the source checkpoint directory.
        dst: the output directory (created; must not hold files yet). It appears only when every check passed.
        dtype: `"auto"` keeps each tensor's dtype, else `"float32"`, `"float16"` or `"bfloat16"`.
        max_shard_size: largest output safetensors file, e.g. `"5GB"`.
        tokenizer_dir: where the tokenizer is, when not in `src`.
        vision_config: legacy only: the vision tower's config.json, when `mm_vision_tower` is not a known tower.
        chat_template: a built-in template name, `"llm"` (the tokenizer's own), a `.jinja` file or a Jinja string;
            default: the original's template for the LLM family (see `tinyllava_hf.chat_templates`).
        verify: load the output strictly and compare its logits with the original forward replayed on the weights.
        atol: largest accepted max abs logit difference (fp32).
        source_repo: the Hub repo `src` was downloaded from, recorded as the source in `conversion.json`.

    Raises:
        ConversionError: naming missing/unexpected keys, shape mismatches, an unknown LLM family, or a failed check.
    """
    src, dst = Path(src), Path(dst)
    check_source_repo(source_repo)
    if dtype != "auto" and dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}.")
    if fmt not in ("factory", "legacy"):
        raise ConversionError(f"Unknown source format {fmt!r}; expected 'factory' or 'legacy'.")
    config_path = src / "config.json"
    source_config = read_json(config_path)
    infos = _source_tensors(src, fmt)
    if fmt == "factory":
        original, keymap = describe_factory(source_config, config_path), FACTORY
    else:
        keys = [info.key for info in infos]
        original = describe_legacy(source_config, config_path, keys, Path(vision_config) if vision_config else None)
        keymap = LEGACY
    notes = list(original.notes)
    original_vocab_size = original.text_config.vocab_size
    tokenizer = load_tokenizer(
        Path(tokenizer_dir or src), original.family, original.model_max_length, original.padding_side
    )

    has_lm_head_bias = any(keymap.rename(info.key) == "lm_head.bias" for info in infos)
    if original.family == "phi" and not has_lm_head_bias:
        notes.append("no lm_head.bias in the checkpoint: lm_head_bias=False (the legacy Phi head had none)")
    config = _make_config(original, tokenizer, has_lm_head_bias, notes)
    if config.tie_word_embeddings:
        keymap = KeyMap(keymap.name, keymap.renames, keymap.ignore + (r"^(language_model\.)?lm_head\.weight$",))
    plan = plan_keys([info.key for info in infos], keymap)
    expected = _expected_shapes(config)
    check_against_model(
        plan,
        {info.key: info.shape for info in infos},
        expected,
        optional={"lm_head.weight"} if config.tie_word_embeddings else set(),
        resizable=VOCAB_KEYS,
        source=str(src),
    )

    out_dtype = None if dtype == "auto" else DTYPES[dtype]
    floating = [info.dtype for info in infos if info.dtype.is_floating_point]
    config.dtype = out_dtype or (max(set(floating), key=floating.count) if floating else torch.float32)
    reader = TensorReader(_split_prefixes(src, infos))
    try:
        outputs = _output_tensors(plan, infos, expected, reader, out_dtype)
        written = write_sharded_safetensors(dst, outputs, parse_size(max_shard_size))
    finally:
        reader.close()
    logger.info(
        "Wrote %d tensors to %s (%s); ignored %d: %s",
        len(outputs),
        dst,
        ", ".join(written),
        len(plan.ignored),
        plan.ignored,
    )

    image_processor = load_image_processor(src, config.vision_config, notes)
    processor = build_processor(tokenizer, image_processor, config, original.image_aspect_ratio, chat_template)
    _save_model_files(dst, config, tokenizer)
    processor.save_pretrained(dst)

    diff = None
    if verify:
        with load_strict(dst) as model:
            diff = check_original_parity(
                model,
                TinyLlavaProcessor.from_pretrained(dst),
                vision_feature_layer=original.vision_feature_layer,
                select_strategy=original.original_select_strategy,
                image_aspect_ratio=original.image_aspect_ratio,
                scale_embeddings=original.scales_image_features,
                original_vocab_size=original_vocab_size,
            )
        if diff > atol:
            raise ConversionError(
                f"{dst}: logits differ from the original forward by {diff:.3g} (> {atol:g}); the output is not faithful."
            )
    result = ConversionResult(dst, diff, ignored_keys=plan.ignored, notes=notes)
    finish_output(dst, source=src, fmt=fmt, result=result, source_repo=source_repo)
    return result


def _split_prefixes(src: Path, infos: list[TensorInfo]) -> dict[Path, str]:
    """Key prefixes added to the split pretrain layout's files, which the reader strips again."""
    prefixes = {}
    for name, prefix in FACTORY_SPLIT_PREFIXES.items():
        for info in infos:
            if info.file.parent == src / name:
                prefixes[info.file] = prefix
    return prefixes


def _save_model_files(dst: Path, config: TinyLlavaConfig, tokenizer) -> None:
    """config.json, generation_config.json and the remote-code modules (so the directory loads without our package)."""
    config.save_pretrained(dst)
    custom_object_save(TinyLlavaForConditionalGeneration, dst)
    generation_config = GenerationConfig.from_model_config(config.text_config)
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.save_pretrained(dst)
