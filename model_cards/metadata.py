"""The YAML metadata of a card (huggingface_hub `ModelCardData`): base models, datasets, tags and the model-index."""

from pathlib import Path

from huggingface_hub import ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .checkpoint import Architecture, Conversion, Stage
from .eval_results import to_eval_results

BASE_TAGS = ["tinyllava", "llava", "vision-language", "image-text-to-text"]
# Names with these suffixes are data files (LLaVA JSON, parquet shards...), never Hub repos.
DATA_FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".arrow", ".csv", ".tsv", ".txt", ".yaml", ".yml"}
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_LANGUAGE = "en"


def hub_id(name: str | None) -> str | None:
    """`name` when it looks like a Hub repo id (`namespace/name`), None for local paths and bare names.

    Existing paths, data files and names without a namespace (a relative dir such as `pretrain`, a label such as
    `synthetic-shapes`) are not treated as Hub ids: a wrong link or `base_model` would mislead more than none.
    """
    if not name or "/" not in name or Path(name).expanduser().exists():
        return None
    if Path(name).suffix.lower() in DATA_FILE_SUFFIXES:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def base_models(arch: Architecture, stages: list[Stage], conversion: Conversion | None) -> list[str]:
    """The Hub models this checkpoint derives from, nearest first.

    A converted checkpoint derives from its source. A trained one derives from the base checkpoint of its last stage
    when that is on the Hub; a local base checkpoint was made by the stage before it (its entry is earlier in the
    list), so the search walks back until it reaches a Hub base or the LLM and vision tower the model was assembled
    from. Without run metadata, the names recorded in the sub-configs are used.
    """
    if conversion is not None and hub_id(conversion.source):
        return [conversion.source]
    for stage in reversed(stages):
        if stage.base_checkpoint:
            if hub_id(stage.base_checkpoint):
                return [stage.base_checkpoint]
            continue
        if stage.llm or stage.vision_tower:
            return [name for name in (hub_id(stage.llm), hub_id(stage.vision_tower)) if name]
    return [name for name in (hub_id(arch.llm), hub_id(arch.vision_tower)) if name]


def base_model_relation(stages: list[Stage], conversion: Conversion | None) -> str | None:
    """How the checkpoint relates to its base models, in the Hub's vocabulary.

    The Hub has no "converted" relation; a conversion keeps the source weights, and "finetune" is the relation the
    Hub would infer for a single base model anyway. A model assembled from an LLM and a vision tower but never
    trained gets none (the Hub then shows it as a merge of its two bases, which is what it is).
    """
    return "finetune" if stages or conversion is not None else None


def training_datasets(stages: list[Stage]) -> list[str]:
    """Hub dataset ids used by any stage, in order of first use; local data files are left to the card body."""
    seen = dict.fromkeys(name for stage in stages for name in stage.datasets if hub_id(name))
    return list(seen)


def tags_for(stages: list[Stage]) -> list[str]:
    tags = list(BASE_TAGS)
    if stages:
        tags += ["trl", "sft"]
    if any(stage.lora for stage in stages):
        tags.append("lora")
    return tags


def build_card_data(
    *,
    model_name: str,
    arch: Architecture,
    stages: list[Stage],
    conversion: Conversion | None,
    eval_results: list[dict],
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCardData:
    """The card metadata; `model-index` is written only when there are evaluation results."""
    bases = base_models(arch, stages, conversion)
    relation = base_model_relation(stages, conversion) if bases else None
    return ModelCardData(
        model_name=model_name,
        license=license or DEFAULT_LICENSE,
        language=language or DEFAULT_LANGUAGE,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=bases or None,
        base_model_relation=relation,
        datasets=training_datasets(stages) or None,
        tags=tags_for(stages),
        eval_results=to_eval_results(eval_results) or None,
    )
