"""The model card of a GGUF export directory (`tinyllava-convert to-gguf`): files, how to run them, export notes."""

import json
from pathlib import Path

import yaml

from .card import environment
from .metadata import hub_id

GGUF_CARD_TEMPLATE = "gguf_card.md"


def write_gguf_card(export_dir: str | Path, image_size: int) -> Path:
    """Writes `<export_dir>/README.md` from its `conversion.json`.

    Args:
        export_dir: a `to-gguf` output directory.
        image_size: the square side libmtmd resizes images to.
    """
    export_dir = Path(export_dir)
    record = json.loads((export_dir / "conversion.json").read_text())
    source = record["source"]
    metadata = {
        "tags": ["tinyllava", "llava", "gguf", "llama.cpp", "image-text-to-text"],
        "pipeline_tag": "image-text-to-text",
        **({"base_model": source} if hub_id(source) else {}),
    }
    text = (
        environment()
        .get_template(GGUF_CARD_TEMPLATE)
        .render(
            metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
            name=Path(record["files"]["language_model"]).name.rsplit("-", 1)[0],
            source=source,
            files=record["files"],
            outtype=record["outtype"],
            notes=record["notes"],
            image_size=image_size,
        )
    )
    path = export_dir / "README.md"
    path.write_text(text)
    return path
