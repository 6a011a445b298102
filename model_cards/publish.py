"""Publishing a checkpoint directory to the Hub: check it is complete and loads, then `HfApi.upload_folder`."""

import fnmatch
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .card import placeholder_repo_id
from .checkpoint import LLAVA_MODEL_TYPE, read_json, read_optional_json, weight_files
from .eval_results import EVAL_RESULTS_FILE, load_results
from .metadata import hub_id

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Training leftovers that are not part of the model (intermediate checkpoints, optimizer and RNG states, logs).
EXCLUDED_PATTERNS = (
    "checkpoint-*",
    "runs",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "scaler.pt",
    "training_args.bin",
    "__pycache__",
    ".*",
)
REQUIRED_CARD_METADATA = ("pipeline_tag", "library_name", "license")


class PublishError(Exception):
    """The directory cannot be published as it is; the message says what to fix."""


def _lora_stage_leftover(checkpoint_dir: Path, relative_dir: Path) -> str | None:
    """Why a LoRA stage's side folder stays local, or None for any other folder.

    A LoRA stage writes the merged model at the top, the adapter to `adapter/` and, for a model assembled from
    components, the untrained model it started from to `base_model/`. That base is scaffolding, not the result; the
    adapter is only usable by others when the base its config names is on the Hub.
    """
    if relative_dir == Path("base_model") and (checkpoint_dir / "adapter").is_dir():
        return "the untrained model the LoRA stage started from"
    if relative_dir == Path("adapter"):
        base = (read_optional_json(checkpoint_dir / "adapter" / "adapter_config.json") or {}).get(
            "base_model_name_or_path"
        )
        if not hub_id(base):
            return f"its base {base!r} is not a Hub repo, so nobody else could load it (the merged model is uploaded)"
    return None


def publishable_files(checkpoint_dir: Path) -> list[str]:
    """Paths (relative, POSIX) of the files to upload: everything but `EXCLUDED_PATTERNS` and a LoRA stage's local
    side folders (`_lora_stage_leftover`); what is left out is logged."""
    files, skipped = [], []
    for root, dirs, names in os.walk(checkpoint_dir):
        relative_root = Path(root).relative_to(checkpoint_dir)
        for name in [d for d in dirs if any(fnmatch.fnmatch(d, p) for p in EXCLUDED_PATTERNS)]:
            dirs.remove(name)
            skipped.append(f"{(relative_root / name).as_posix()}/")
        for name in list(dirs):
            reason = _lora_stage_leftover(checkpoint_dir, relative_root / name)
            if reason:
                dirs.remove(name)
                skipped.append(f"{(relative_root / name).as_posix()}/ ({reason})")
        for name in names:
            path = (relative_root / name).as_posix()
            (skipped if any(fnmatch.fnmatch(name, p) for p in EXCLUDED_PATTERNS) else files).append(path)
    if skipped:
        logger.info("Not uploading %d item(s): %s", len(skipped), ", ".join(sorted(skipped)))
    return sorted(files)


def remote_code_files(auto_map: dict) -> set[str]:
    """The `.py` files an `auto_map` needs in the repo itself (`"module.Class"`; a tokenizer maps to a list of such
    names, with None for an absent slow class; `"other/repo--module.Class"` lives in another repo)."""
    refs = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    return {ref.split(".")[0] + ".py" for ref in refs if "--" not in ref}


def missing_files(checkpoint_dir: Path) -> list[str]:
    """What a loadable, documented Hub repo needs and the directory lacks, each with a hint."""
    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        return ["config.json (save the model with save_pretrained)"]
    missing = []
    if not weight_files(checkpoint_dir):
        missing.append("model weights (*.safetensors)")
    if not (checkpoint_dir / "processor_config.json").is_file():
        missing.append("processor_config.json (save the processor with save_pretrained)")
    if not (checkpoint_dir / "tokenizer_config.json").is_file() or not any(
        (checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
    ):
        missing.append("tokenizer files (tokenizer_config.json and tokenizer.json or tokenizer.model)")
    config = read_json(config_path)
    if config.get("model_type") != LLAVA_MODEL_TYPE:
        processor_config = read_optional_json(checkpoint_dir / "processor_config.json") or {}
        modules = remote_code_files(config.get("auto_map", {})) | remote_code_files(
            processor_config.get("auto_map", {})
        )
        if not config.get("auto_map"):
            missing.append("remote code: config.json has no auto_map")
        missing += [
            f"{name} (remote code named in auto_map)"
            for name in sorted(modules)
            if not (checkpoint_dir / name).is_file()
        ]
    if not (checkpoint_dir / "README.md").is_file():
        missing.append(f"README.md (write it with `tinyllava-card {checkpoint_dir}`)")
    return missing


def final_card_text(checkpoint_dir: Path, repo_id: str) -> str:
    """README.md as it will be uploaded: the generated placeholder repo id replaced by `repo_id`."""
    text = (checkpoint_dir / "README.md").read_text(encoding="utf-8")
    placeholder = placeholder_repo_id(checkpoint_dir)
    if placeholder in text:
        logger.info("README.md: usage snippets now load %s (was the placeholder %s).", repo_id, placeholder)
        return text.replace(placeholder, repo_id)
    if repo_id not in text:
        logger.warning("README.md does not mention %s; its usage snippets may load another repo.", repo_id)
    return text


def check_card(checkpoint_dir: Path, text: str) -> None:
    """Parses the card (YAML metadata, model-index), checks the metadata the Hub needs to list the model, and that
    the card is not older than the directory's evaluation results."""
    readme = checkpoint_dir / "README.md"
    try:
        card = ModelCard(text)
    except Exception as error:  # yaml, validation and type errors all mean "does not parse"
        raise PublishError(
            f"{readme}: the card metadata (the YAML block between the --- lines; its line numbers count from the "
            f"line after the opening ---) does not parse: {error}"
        ) from error
    absent = [key for key in REQUIRED_CARD_METADATA if not card.data.get(key)]
    if absent:
        raise PublishError(f"{readme}: the card metadata lacks {', '.join(absent)}; regenerate it with tinyllava-card.")
    check_metadata_values(card.data, readme)
    eval_path = checkpoint_dir / EVAL_RESULTS_FILE
    if eval_path.is_file() and load_results(eval_path) and not card.data.eval_results:
        raise PublishError(
            f"README.md has no evaluation results but {EVAL_RESULTS_FILE} has; the card is older than "
            f"the results. Regenerate it with `tinyllava-card {checkpoint_dir}`."
        )


def check_metadata_values(data, readme: Path) -> None:
    """Raises for metadata values the Hub refuses: non-string names, and base models or datasets that are not repo
    ids (a local path such as `../pretrain` left in `base_model`)."""
    for key in REQUIRED_CARD_METADATA:
        if not isinstance(data.get(key), str):
            raise PublishError(f"{readme}: metadata {key!r} must be a string, got {data.get(key)!r}.")
    for key in ("base_model", "datasets"):
        values = data.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            try:
                validate_repo_id(value)
            except HFValidationError as error:
                raise PublishError(
                    f"{readme}: metadata {key!r} holds {value!r}, which is not a Hub repo id ({error}); the Hub "
                    "refuses the card. Regenerate it with tinyllava-card, or fix the entry."
                ) from error


def check_loads(checkpoint_dir: Path, trust_remote_code: bool) -> str:
    """Loads the model and processor and generates one token in a fresh interpreter that cannot import this
    repository, as a Hub user would. Returns the check's summary line.

    Raises:
        PublishError: with the end of the subprocess's output.
    """
    command = [
        sys.executable,
        str(Path(__file__).with_name("load_check.py")),
        str(checkpoint_dir.resolve()),
        "--hide",
        str(REPO_ROOT),
    ]
    if trust_remote_code:
        command.append("--trust-remote-code")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise PublishError(f"{checkpoint_dir} does not load as a Hub user would load it:\n{tail}")
    return result.stdout.strip().splitlines()[-1]


def push(
    checkpoint_dir: str | Path, repo_id: str, private: bool = False, dry_run: str | Path | None = None
) -> list[str]:
    """Validates a checkpoint directory, then uploads it to `repo_id` (or, with `dry_run`, copies what would be
    uploaded into that directory).

    Validation: the files a Hub repo needs are present; the card metadata parses; a token exists (not for a dry
    run); the model loads with the shipped remote code in a subprocess and generates a token.

    Returns:
        The relative paths uploaded (or copied).

    Raises:
        PublishError: the directory, the card, the token or the repo id is not fit for publishing.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise PublishError(f"{checkpoint_dir} is not a directory.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PublishError(f"Invalid repo id {repo_id!r}: {error}") from error
    missing = missing_files(checkpoint_dir)
    if missing:
        raise PublishError(f"{checkpoint_dir} is not a complete model repo; missing:\n  - " + "\n  - ".join(missing))
    card_text = final_card_text(checkpoint_dir, repo_id)
    check_card(checkpoint_dir, card_text)
    token = None
    if dry_run is None:
        token = get_token()
        if token is None:
            raise PublishError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a --dry-run needs none).")
    remote_code = read_json(checkpoint_dir / "config.json").get("model_type") != LLAVA_MODEL_TYPE
    logger.info("Load check: %s", check_loads(checkpoint_dir, remote_code))
    files = publishable_files(checkpoint_dir)

    if dry_run is not None:
        out = Path(dry_run)
        if out.exists() and any(out.iterdir()):
            raise PublishError(f"--dry-run directory {out} is not empty.")
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkpoint_dir / name, out / name)
        (out / "README.md").write_text(card_text, encoding="utf-8")
        logger.info("Dry run: wrote the %d files that would be uploaded to %s into %s", len(files), repo_id, out)
        return files

    readme = checkpoint_dir / "README.md"
    if readme.read_text(encoding="utf-8") != card_text:
        readme.write_text(card_text, encoding="utf-8")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, folder_path=checkpoint_dir, allow_patterns=files, commit_message="Upload with tinyllava-push"
    )
    logger.info("Uploaded %d files to %s", len(files), url)
    return files
