"""What a checkpoint directory says about its model: architecture, parameter counts, training run and provenance.

Everything here reads files only (JSON and safetensors headers); no weights are loaded and nothing touches the network.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

logger = logging.getLogger(__name__)

TINYLLAVA_MODEL_TYPE = "tinyllava_hf"
LLAVA_MODEL_TYPE = "llava"

# Checkpoint key prefixes of each part, for our layout and for transformers' LLaVA (in memory and on disk, where
# `save_pretrained` writes the legacy v4 keys `language_model.model.*`, `vision_tower.*`, `multi_modal_projector.*`).
PART_PREFIXES = {
    "vision_tower": ("model.vision_tower.", "vision_tower."),
    "connector": ("model.connector.", "model.multi_modal_projector.", "multi_modal_projector."),
    "language_model": ("model.language_model.", "language_model.", "lm_head."),
}


def read_json(path: Path) -> Any:
    """Reads a JSON file, naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_optional_json(path: Path) -> Any | None:
    return read_json(path) if path.is_file() else None


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """The safetensors files of the model: the shards named in the index when there is one, else `*.safetensors`.

    Adapter weights (`adapter_model.safetensors`) are not model weights and are left out.

    Raises:
        FileNotFoundError: the index names a shard that is not in the directory.
    """
    index_path = checkpoint_dir / "model.safetensors.index.json"
    if index_path.is_file():
        shards = sorted(set(read_json(index_path)["weight_map"].values()))
        missing = [name for name in shards if not (checkpoint_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index_path} names shards that are missing: {', '.join(missing)}")
        return [checkpoint_dir / name for name in shards]
    return sorted(p for p in checkpoint_dir.glob("*.safetensors") if not p.name.startswith("adapter_"))


def count_parameters(files: list[Path]) -> dict[str, int]:
    """Counts the parameters of each model part from the safetensors headers (no tensor is read).

    Returns:
        `{"vision_tower": n, "connector": n, "language_model": n, "total": n}`, plus `"other"` for keys that belong
        to no known part. A tied `lm_head` is not stored, so it is (rightly) not counted twice.
    """
    counts = dict.fromkeys([*PART_PREFIXES, "total"], 0)
    unknown_keys = []
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                numel = 1
                for size in handle.get_slice(key).get_shape():
                    numel *= size
                part = next((name for name, prefixes in PART_PREFIXES.items() if key.startswith(prefixes)), None)
                if part is None:
                    unknown_keys.append(key)
                    part = "other"
                counts[part] = counts.get(part, 0) + numel
                counts["total"] += numel
    if unknown_keys:
        logger.warning(
            "%d weight keys belong to no known part (e.g. %s); counted as 'other'.", len(unknown_keys), unknown_keys[0]
        )
    return counts


@dataclass
class Architecture:
    """The model's parts as the card shows them. Names are Hub ids or local paths as recorded at build time."""

    model_type: str
    llm: str | None
    llm_type: str
    vision_tower: str | None
    vision_type: str
    connector: str
    image_size: int | None
    patch_size: int | None
    num_image_tokens: int | None
    context_length: int | None
    vision_feature_layer: int | list[int] | None
    vision_feature_select_strategy: str | None
    dtype: str | None
    chat_template: str | None
    parameters: dict[str, int] = field(default_factory=dict)
    llava_blockers: list[str] = field(default_factory=list)


def llava_num_image_tokens(config: dict, processor_config: dict) -> int | None:
    """Placeholders per image for transformers' LlavaProcessor: patches + extra tokens, minus CLS for "default"."""
    patch_size = processor_config.get("patch_size")
    image_size = config.get("vision_config", {}).get("image_size")
    if not patch_size or not image_size:
        return None
    tokens = (image_size // patch_size) ** 2 + processor_config.get("num_additional_image_tokens", 0)
    return tokens - (processor_config.get("vision_feature_select_strategy") == "default")


def llava_blockers(config: dict) -> list[str]:
    """Why transformers' built-in LLaVA cannot represent a TinyLLaVA config exactly (empty when it can)."""
    reasons = []
    if config.get("connector_type", "mlp2x_gelu") != "mlp2x_gelu":
        reasons.append(f"its connector is {config['connector_type']}, LLaVA's projector is mlp2x_gelu")
    if config.get("lm_head_bias"):
        reasons.append("its LM head has a bias")
    if config.get("vision_config", {}).get("model_type") == "dinov2":
        reasons.append("LLaVA has no DINOv2 vision tower")
    if config.get("image_features_scale", 1.0) != 1.0:
        reasons.append("its image features are scaled")
    return reasons


def chat_template_name(checkpoint_dir: Path, llm_type: str) -> str | None:
    """The name of the built-in chat template the checkpoint uses (`tinyllava_hf.chat_templates`), "custom" for
    another one, or None when there is none."""
    path = checkpoint_dir / "chat_template.jinja"
    if not path.is_file():
        return None
    # Imported here: the template files are read from `modeling_tinyllava`, which the Hub load check hides.
    from ..chat_templates import chat_template_name as builtin_name

    return builtin_name(path.read_text(encoding="utf-8"), llm_type)


def read_architecture(checkpoint_dir: Path) -> Architecture:
    """Reads the architecture from `config.json`, `processor_config.json` and the weight headers.

    Raises:
        FileNotFoundError: no `config.json`.
        ValueError: the config is neither a TinyLLaVA (`tinyllava_hf`) nor a transformers LLaVA (`llava`) config.
    """
    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json; is it a saved model directory?")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in (TINYLLAVA_MODEL_TYPE, LLAVA_MODEL_TYPE):
        raise ValueError(
            f"{config_path}: model_type is {model_type!r}; model cards are written for "
            f"{TINYLLAVA_MODEL_TYPE!r} (TinyLLaVA) and {LLAVA_MODEL_TYPE!r} (transformers LLaVA) checkpoints."
        )
    text_config, vision_config = config.get("text_config", {}), config.get("vision_config", {})
    processor_config = read_optional_json(checkpoint_dir / "processor_config.json") or {}
    if model_type == TINYLLAVA_MODEL_TYPE:
        connector = config.get("connector_type", "mlp2x_gelu")
        num_image_tokens = processor_config.get("num_image_tokens")
        blockers = llava_blockers(config)
    else:
        connector = f"mlp2x_{config.get('projector_hidden_act', 'gelu')}"
        num_image_tokens = llava_num_image_tokens(config, processor_config)
        blockers = []
    return Architecture(
        model_type=model_type,
        llm=text_config.get("_name_or_path") or None,
        llm_type=text_config.get("model_type", "llama"),
        vision_tower=vision_config.get("_name_or_path") or None,
        vision_type=vision_config.get("model_type", "unknown"),
        connector=connector,
        image_size=vision_config.get("image_size"),
        patch_size=vision_config.get("patch_size"),
        num_image_tokens=num_image_tokens,
        context_length=text_config.get("max_position_embeddings"),
        vision_feature_layer=config.get("vision_feature_layer"),
        vision_feature_select_strategy=config.get("vision_feature_select_strategy"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        chat_template=chat_template_name(checkpoint_dir, text_config.get("model_type", "llama")),
        parameters=count_parameters(weight_files(checkpoint_dir)),
        llava_blockers=blockers,
    )


@dataclass
class Stage:
    """One training stage as `tinyllava_run.json` records it."""

    recipe: str
    llm: str | None = None
    vision_tower: str | None = None
    base_checkpoint: str | None = None
    datasets: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    final_loss: float | None = None
    lora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def read_run(checkpoint_dir: Path) -> list[Stage]:
    """Reads the training stages from `tinyllava_run.json` (empty when there is none).

    Raises:
        ValueError: the file does not follow the contract; the message names the stage and key.
    """
    path = checkpoint_dir / "tinyllava_run.json"
    run = read_optional_json(path)
    if run is None:
        return []
    if not isinstance(run, dict) or not isinstance(run.get("stages"), list):
        raise ValueError(f'{path}: expected {{"stages": [...]}}.')
    stages = []
    for index, entry in enumerate(run["stages"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str):
            raise ValueError(f"{path}: stages[{index}] needs a string 'recipe'.")
        known = {key: value for key, value in entry.items() if key in Stage.__dataclass_fields__ and key != "extra"}
        # Keys beyond the contract (e.g. counts of skipped samples) are shown with the hyperparameters when not empty.
        extra = {key: value for key, value in entry.items() if key not in known and value not in (None, {}, [], "")}
        stage = Stage(**known, extra=extra)
        if not isinstance(stage.datasets, list) or not isinstance(stage.hyperparameters, dict):
            raise ValueError(f"{path}: stages[{index}] needs 'datasets' as a list and 'hyperparameters' as a dict.")
        stages.append(stage)
    return stages


@dataclass
class TrainerSummary:
    """The final state of the last Trainer run (`trainer_state.json`)."""

    global_step: int | None
    epochs: float | None
    final_loss: float | None
    train_batch_size: int | None
    runtime_s: float | None


def read_trainer_state(checkpoint_dir: Path) -> TrainerSummary | None:
    state = read_optional_json(checkpoint_dir / "trainer_state.json")
    if state is None:
        return None
    history = state.get("log_history", [])
    losses = [entry["loss"] for entry in history if "loss" in entry]
    runtimes = [entry["train_runtime"] for entry in history if "train_runtime" in entry]
    return TrainerSummary(
        global_step=state.get("global_step"),
        epochs=state.get("epoch"),
        final_loss=losses[-1] if losses else None,
        train_batch_size=state.get("train_batch_size"),
        runtime_s=runtimes[-1] if runtimes else None,
    )


@dataclass
class Conversion:
    """Provenance of a converted checkpoint (`conversion.json`)."""

    source: str
    format: str
    max_abs_logit_diff: float | None = None
    lossy: bool = False
    notes: list[str] = field(default_factory=list)


def read_conversion(checkpoint_dir: Path) -> Conversion | None:
    path = checkpoint_dir / "conversion.json"
    data = read_optional_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("source"), str) or not isinstance(data.get("format"), str):
        raise ValueError(f"{path}: expected string 'source' and 'format' keys.")
    return Conversion(**{key: value for key, value in data.items() if key in Conversion.__dataclass_fields__})


def loss_curves(checkpoint_dir: Path) -> list[str]:
    """File names of the loss-curve images the run wrote (`loss_curve.png` first, then any per-stage ones)."""
    names = sorted(p.name for p in checkpoint_dir.glob("loss_curve*.png"))
    return sorted(names, key=lambda name: name != "loss_curve.png")
