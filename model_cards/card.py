"""Renders a checkpoint directory's README.md from what the directory really holds."""

import html
import importlib.util
import logging
import math
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import ModelCard

from .checkpoint import (
    LLAVA_MODEL_TYPE,
    Stage,
    loss_curves,
    read_architecture,
    read_conversion,
    read_run,
    read_trainer_state,
)
from .eval_results import EVAL_RESULTS_FILE, load_results
from .metadata import build_card_data, hub_id

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
CARD_TEMPLATE = "model_card.md"
# Stands in for the Hub repo id until the card is pushed: `tinyllava-push` replaces it with the real id.
PLACEHOLDER_NAMESPACE = "your-username"


def placeholder_repo_id(checkpoint_dir: Path) -> str:
    return f"{PLACEHOLDER_NAMESPACE}/{checkpoint_dir.resolve().name}"


# Display names of model families (config model_type); others are shown as they are.
FAMILY_NAMES = {
    "siglip_vision_model": "SigLIP",
    "clip_vision_model": "CLIP",
    "dinov2": "DINOv2",
    "llama": "Llama",
    "qwen2": "Qwen2",
    "phi": "Phi",
    "phi3": "Phi-3",
    "gemma": "Gemma",
    "stablelm": "StableLM",
}


def family(model_type: str) -> str:
    return FAMILY_NAMES.get(model_type, model_type)


def human(count: int | None) -> str:
    """3_100_000_000 -> "3.10B", 412_400_000 -> "412.4M", 10_240 -> "10.2K"."""
    if not count:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.{2 if unit == 'B' else 1}f}{unit}"
    return str(count)


def model_link(name: str | None) -> str:
    """A Hub link for a Hub id; the last path component of a local path (full paths say nothing to a reader)."""
    if not name:
        return "not recorded"
    if hub_id(name):
        return f"[{name}](https://huggingface.co/{name})"
    return f"`{Path(name).name}` (local)"


def dataset_link(name: str, pretty_name: str | None = None) -> str:
    if hub_id(name):
        return f"[{pretty_name or name}](https://huggingface.co/datasets/{name})"
    return f"`{Path(name).name}`" if pretty_name is None else pretty_name


def stage_start(stage: Stage) -> str:
    if stage.base_checkpoint:
        return model_link(stage.base_checkpoint)
    return " + ".join(model_link(name) for name in (stage.llm, stage.vision_tower) if name) or "not recorded"


def conversion_origin(conversion_format: str, native_llava: bool) -> str:
    """What kind of checkpoint a conversion started from (`conversion.json`'s format is the same both ways for LLaVA)."""
    if conversion_format == "llava":
        return (
            "a TinyLLaVA-HF checkpoint exported to transformers' LLaVA"
            if native_llava
            else ("a transformers LLaVA checkpoint")
        )
    return {
        "factory": "an original TinyLLaVA Factory checkpoint",
        "legacy": "a legacy TinyLLaVABench checkpoint",
        "onnx": "a TinyLLaVA-HF checkpoint exported to ONNX",
    }.get(conversion_format, f"a {conversion_format!r} checkpoint")


def onnx_example(checkpoint_dir: Path) -> str | None:
    """The tested ONNX Runtime script (`conversion/onnx_runtime_example.py`) for a directory with `onnx/` graphs."""
    if not (checkpoint_dir / "onnx").is_dir():
        return None
    # Located without importing the conversion package, which needs modeling_tinyllava (the Hub load check renders
    # cards with it hidden).
    package_dir = importlib.util.find_spec("tinyllava_hf.conversion").submodule_search_locations[0]
    return (Path(package_dir) / "onnx_runtime_example.py").read_text().strip()


def cell(value) -> str:
    """Free text made safe for Markdown: no HTML (`<image>` would vanish), no table breaks; None is "-"."""
    if value is None:
        return "-"
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")


def loss(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def metric(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        family=family,
        human=human,
        model_link=model_link,
        dataset_link=dataset_link,
        stage_start=stage_start,
        cell=cell,
        loss=loss,
        metric=metric,
    )
    return env


def existing_metadata(readme: Path) -> dict:
    """Metadata of a README.md already in the directory, so user choices (license, language) survive regeneration."""
    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except (ValueError, yaml.YAMLError) as error:  # a hand-edited card may not parse; it is replaced either way
        logger.warning("Ignoring the metadata of %s, which does not parse: %s", readme, error)
        return {}


def render_model_card(
    checkpoint_dir: str | Path,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCard:
    """Builds the card of a checkpoint directory without writing it. See [`write_model_card`]."""
    checkpoint_dir = Path(checkpoint_dir)
    arch = read_architecture(checkpoint_dir)
    stages = read_run(checkpoint_dir)
    conversion = read_conversion(checkpoint_dir)
    eval_path = checkpoint_dir / EVAL_RESULTS_FILE
    eval_results = load_results(eval_path) if eval_path.is_file() else []
    previous = existing_metadata(checkpoint_dir / "README.md")
    repo_id = repo_id or placeholder_repo_id(checkpoint_dir)
    card_data = build_card_data(
        model_name=repo_id.split("/")[-1],
        arch=arch,
        stages=stages,
        conversion=conversion,
        eval_results=eval_results,
        license=license or previous.get("license"),
        language=language or previous.get("language"),
    )
    native_llava = arch.model_type == LLAVA_MODEL_TYPE
    onnx_dir, example = checkpoint_dir / "onnx", onnx_example(checkpoint_dir)
    content = (
        environment()
        .get_template(CARD_TEMPLATE)
        .render(
            card_data=card_data.to_yaml(),
            model_name=card_data.model_name,
            repo_id=repo_id,
            dir_name=checkpoint_dir.resolve().name,
            license=card_data.license,
            base_models=card_data.base_model or [],
            arch=arch,
            params=arch.parameters,
            native_llava=native_llava,
            # An ONNX export holds no transformers weights: its card shows the ONNX Runtime usage only.
            transformers_usage=example is None or bool(arch.parameters.get("total")),
            onnx_example=example,
            onnx_int8=any(onnx_dir.glob("*_int8.onnx")),
            remote_code_kwarg="" if native_llava else ", trust_remote_code=True",
            llava_blockers=arch.llava_blockers,
            stages=stages,
            trainer=read_trainer_state(checkpoint_dir),
            loss_curves=loss_curves(checkpoint_dir),
            conversion=conversion,
            conversion_origin=conversion and conversion_origin(conversion.format, native_llava),
            eval_results=eval_results,
        )
    )
    return ModelCard(content)


def write_model_card(
    checkpoint_dir: str | Path,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> Path:
    """Writes `<checkpoint_dir>/README.md`, a Hub model card made from what the directory holds.

    It reads `config.json`, `processor_config.json` and `chat_template.jinja` (architecture, image tokens, context
    length), the safetensors headers (parameters per part), and when present `tinyllava_run.json` and
    `trainer_state.json` (training), `loss_curve*.png` (embedded), `conversion.json` (provenance) and
    `eval_results.json` (evaluation table and model-index).

    Args:
        checkpoint_dir: a saved TinyLLaVA (`tinyllava_hf`) or transformers LLaVA (`llava`) model directory.
        repo_id: the Hub repo the usage snippets load; by default a placeholder that `tinyllava-push` fills in.
        license: Hub license id; by default the one of an existing README.md, else apache-2.0.
        language: language code(s); by default the existing README.md's, else "en".

    Returns:
        The path of the README.md written.
    """
    card = render_model_card(checkpoint_dir, repo_id=repo_id, license=license, language=language)
    path = Path(checkpoint_dir) / "README.md"
    card.save(path)
    logger.info("Wrote the model card %s", path)
    return path
