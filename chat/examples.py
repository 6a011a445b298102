"""Example questions to offer in the web app: the held-out questions of the offline demo, when the checkpoint was
trained by it.

A local checkpoint records the datasets each training stage read (`tinyllava_run.json`, written by
`tinyllava-train`). `tinyllava-train demo` writes its data as `data/{pretrain,finetune,eval}.json` with the images in
`data/images/` (`demo/dataset.py`); `eval.json` holds held-out questions, one image each, that the model never
saw in training. A checkpoint trained on anything else, or a Hub id, has no examples.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_RECORD = "tinyllava_run.json"
HELD_OUT_FILE = "eval.json"
IMAGE_FOLDER = "images"


@dataclass(frozen=True)
class Example:
    image: Path
    question: str


def held_out_examples(data_file: Path, limit: int) -> list[Example]:
    """Up to `limit` questions from a demo `eval.json`, the first of each question type first (so that every kind
    of question is shown), skipping entries whose image is gone."""
    entries = json.loads(data_file.read_text())
    first_of_type = {}
    for entry in entries:
        first_of_type.setdefault(entry.get("type"), entry)
    ordered = [*first_of_type.values(), *(entry for entry in entries if entry not in first_of_type.values())]
    examples = []
    for entry in ordered:
        image = data_file.parent / IMAGE_FOLDER / entry["image"]
        if image.is_file():
            examples.append(Example(image, entry["question"]))
        if len(examples) == limit:
            break
    return examples


def find_examples(model_id: str, limit: int = 4) -> list[Example]:
    """The demo's held-out questions beside the data `model_id` was last trained on; empty if there are none."""
    record = Path(model_id) / RUN_RECORD
    if not record.is_file():
        return []
    try:
        datasets = json.loads(record.read_text())["stages"][-1]["datasets"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        logger.warning("No examples: %s is not a readable run record (%s).", record, error)
        return []
    for dataset in datasets:
        held_out = Path(dataset).parent / HELD_OUT_FILE
        if held_out.is_file():
            try:
                return held_out_examples(held_out, limit)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                logger.warning("No examples: could not read %s (%s).", held_out, error)
    return []
