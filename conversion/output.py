"""The bookkeeping every conversion shares: an output directory written atomically, `conversion.json`, the card."""

import dataclasses
import functools
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from tinyllava_hf import model_cards

from .errors import ConversionError


def check_output_dir(src: Path, dst: Path) -> None:
    """Refuses to write into the source, into a file, or into a directory that already holds files."""
    if dst.resolve() == src.resolve():
        raise ConversionError(f"The output directory {dst} is the source directory; choose another one.")
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"The output directory {dst} is a file; choose a new directory.")
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"The output directory {dst} is not empty; choose a new directory.")


def atomic_output(convert):
    """Makes a conversion `convert(..., src, dst, ...) -> ConversionResult` all-or-nothing for `dst`.

    The conversion writes into a staging directory beside `dst` (same filesystem, same final name, so the model
    card's placeholder repo name is right) and the staging directory is renamed to `dst` only after every check
    inside `convert` has passed. On any error the staging directory is removed, so `dst` stays as it was: absent,
    or the empty directory it was; parent directories created for it are removed again.
    """
    signature = inspect.signature(convert)

    @functools.wraps(convert)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        src, dst = Path(bound.arguments["src"]), Path(bound.arguments["dst"])
        check_output_dir(src, dst)
        new_parents = [parent for parent in reversed(dst.absolute().parents) if not parent.exists()]
        dst.parent.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
        staging = holder / dst.name
        staging.mkdir()
        bound.arguments["dst"] = staging
        try:
            result = convert(*bound.args, **bound.kwargs)
            os.replace(staging, dst)  # a rename; it also replaces an empty `dst`
        except BaseException as error:
            shutil.rmtree(holder, ignore_errors=True)
            for parent in reversed(new_parents):
                try:
                    parent.rmdir()
                except OSError:
                    break  # something else was written there meanwhile
            if isinstance(error, ConversionError):
                message = str(error).replace(str(staging), str(dst))
                raise ConversionError(f"{message}\nNothing was written to {dst}.") from error
            raise
        holder.rmdir()
        return dataclasses.replace(result, output_dir=dst)

    return wrapper


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
