"""The bookkeeping every conversion ends with: a fresh output directory, `conversion.json` and the model card."""

import json
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from tinyllava_hf import model_cards

from .errors import ConversionError


def prepare_output_dir(src: Path, dst: Path) -> None:
    """Creates `dst`; refuses to write into the source or into a directory that already holds files."""
    if dst.resolve() == src.resolve():
        raise ConversionError(f"The output directory {dst} is the source directory; choose another one.")
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"The output directory {dst} is not empty; choose a new directory.")
    dst.mkdir(parents=True, exist_ok=True)


def check_source_repo(source_repo: str | None) -> None:
    """Raises unless `source_repo` is None or a Hub repo id (`namespace/name`)."""
    if source_repo is None:
        return
    try:
        validate_repo_id(source_repo)
    except HFValidationError as error:
        raise ConversionError(f"--source-repo {source_repo!r} is not a Hub repo id: {error}") from None
    if "/" not in source_repo:
        raise ConversionError(f"--source-repo {source_repo!r} is not a Hub repo id: expected 'namespace/name'.")


def finish_output(dst: Path, source: Path, fmt: str, result, source_repo: str | None = None) -> None:
    """Writes `conversion.json` (the contract model cards read) and the model card `README.md`.

    Args:
        dst: the output directory.
        source: the local source directory.
        fmt: the source format (`factory`, `legacy`, `llava`).
        result: the `ConversionResult`.
        source_repo: the Hub repo the source came from; recorded as the source (so the card's `base_model` links to
            it), with the local directory kept as `source_path`.
    """
    record = {
        "source": source_repo or str(source),
        **({"source_path": str(source)} if source_repo else {}),
        "format": fmt,
        "max_abs_logit_diff": result.max_abs_logit_diff,
        "lossy": result.lossy,
        "notes": result.notes,
    }
    (dst / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    model_cards.write_model_card(dst)
