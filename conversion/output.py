"""The bookkeeping every conversion ends with: a fresh output directory, `conversion.json` and the model card."""

import json
from pathlib import Path

import model_cards

from .errors import ConversionError


def prepare_output_dir(src: Path, dst: Path) -> None:
    """Creates `dst`; refuses to write into the source or into a directory that already holds files."""
    if dst.resolve() == src.resolve():
        raise ConversionError(f"The output directory {dst} is the source directory; choose another one.")
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"The output directory {dst} is not empty; choose a new directory.")
    dst.mkdir(parents=True, exist_ok=True)


def finish_output(dst: Path, source: str, fmt: str, result) -> None:
    """Writes `conversion.json` (the contract model cards read) and the model card `README.md`."""
    record = {
        "source": source,
        "format": fmt,
        "max_abs_logit_diff": result.max_abs_logit_diff,
        "lossy": result.lossy,
        "notes": result.notes,
    }
    (dst / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    model_cards.write_model_card(dst)
