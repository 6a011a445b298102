"""Training data: LLaVA JSON/JSONL and HF `datasets` with TRL's `messages` + `images` columns.

Every source becomes one `datasets.Dataset` with the columns `id` (str), `messages` (TRL's conversational format:
`[{"role": "system"|"user"|"assistant", "content": [{"type": "image"|"text", "text": str|None}]}]`) and `images`
(paths relative to `--image_folder`, absolute paths, or `datasets.Image` values). Images are NOT opened here: the
collator loads them lazily, batch by batch. Structural problems are found up front, before any compute is spent.
"""

import json
import logging
import os
from collections import Counter
from pathlib import Path

import datasets

from .arguments import DataArguments

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DATASET_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


class BadSampleError(ValueError):
    """A training sample that cannot be used as it is; the message names the sample and the problem.

    Args:
        message: what is wrong, naming the sample (and file).
        kind: a short key the skipped-sample counts are grouped by.
    """

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


def text_to_parts(text: str) -> list[dict]:
    """Content parts of a message string: one image part per `<image>` marker, then the text without the markers.

    Like the original templates, a turn with images is stripped (its images are moved to the front).
    """
    num_images = text.count(IMAGE_MARKER)
    if num_images:
        text = text.replace(IMAGE_MARKER, "").strip()
    return [{"type": "image", "text": None}] * num_images + [{"type": "text", "text": text}]


def normalize_messages(messages: list[dict]) -> list[dict]:
    """TRL messages with string or part-list content -> messages whose content is always a list of parts."""
    normalized = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = text_to_parts(content)
        else:
            content = [{"type": part["type"], "text": part.get("text")} for part in content]
        normalized.append({"role": message["role"], "content": content})
    return normalized


def llava_record_to_sample(record: dict, index: int, source: str) -> dict:
    """One LLaVA-format record (`id`, `image` path or list, `conversations`) -> a sample in the common format."""
    sample_id = str(record.get("id", index))
    if "conversations" not in record:
        raise BadSampleError(f"{source}: sample {sample_id!r} (index {index}) has no 'conversations' key.")
    messages = []
    for turn in record["conversations"]:
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None or not isinstance(turn.get("value"), str):
            raise BadSampleError(
                f"{source}: sample {sample_id!r} has a turn {turn!r}; expected 'from' in {sorted(LLAVA_ROLES)} and a "
                "string 'value'."
            )
        messages.append({"role": role, "content": text_to_parts(turn["value"])})
    images = record.get("image") or []
    return {"id": sample_id, "messages": messages, "images": [images] if isinstance(images, str) else list(images)}


def read_llava_file(path: str) -> list[dict]:
    """Samples of a LLaVA `.json` (a list of records) or `.jsonl` (one record per line) file."""
    with open(path, encoding="utf-8") as file:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in file if line.strip()]
        else:
            records = json.load(file)
    if not isinstance(records, list):
        raise TypeError(f"{path}: a LLaVA JSON file must hold a list of samples, got {type(records).__name__}.")
    return [llava_record_to_sample(record, index, path) for index, record in enumerate(records)]


def is_llava_file(path: str) -> bool:
    """A .json/.jsonl file whose first record has `conversations` (else it is read as a TRL-format dataset)."""
    if not path.endswith((".json", ".jsonl")):
        return False
    with open(path, encoding="utf-8") as file:
        head = file.read(1 << 16)
    return '"conversations"' in head


def load_hf_dataset(path: str) -> datasets.Dataset:
    """A TRL-format dataset from a `save_to_disk` dir, a dataset dir of data files, or a single data file."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(os.path.join(path, "state.json")):
            dataset = datasets.load_from_disk(path)
        else:
            dataset = datasets.load_dataset(path, split="train")
    else:
        suffix = Path(path).suffix
        builder = DATASET_FILE_BUILDERS.get(suffix, "json" if suffix in (".json", ".jsonl") else None)
        if builder is None:
            raise ValueError(
                f"{path}: unsupported data file type {suffix!r}; use LLaVA .json/.jsonl, .parquet or a dir."
            )
        dataset = datasets.load_dataset(builder, data_files=path, split="train")
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"]
    if "messages" not in dataset.column_names:
        raise ValueError(
            f"{path}: a datasets source needs a 'messages' column (TRL format); has {dataset.column_names}."
        )
    if "images" not in dataset.column_names:
        image_column = dataset["image"] if "image" in dataset.column_names else [None] * len(dataset)
        dataset = dataset.add_column("images", [[] if image is None else [image] for image in image_column])
    if "id" not in dataset.column_names:
        dataset = dataset.add_column("id", [f"{Path(path).name}:{index}" for index in range(len(dataset))])
    return dataset.select_columns(["id", "messages", "images"])


def load_samples(path: str) -> datasets.Dataset:
    """One data source as a dataset in the common format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path {path!r} does not exist.")
    if is_llava_file(path):
        return datasets.Dataset.from_list(read_llava_file(path))
    dataset = load_hf_dataset(path)
    return dataset.cast_column("id", datasets.Value("string")) if dataset.features["id"].dtype != "string" else dataset


def resolve_image_path(image: str, image_folder: str | None) -> str:
    return image if image_folder is None or os.path.isabs(image) else os.path.join(image_folder, image)


def conversation_problem(messages: list[dict], images: list, image_folder: str | None) -> tuple[str, str] | None:
    """What makes a sample unusable before tokenization, as `(kind, description)`, or None if it is fine.

    Checks: a non-empty conversation of (optional system) then user/assistant turns alternating, starting with a
    user turn and ending with an answer; images only in user turns; as many image parts as images; image files
    that exist.
    """
    if not messages:
        return "empty_conversation", "empty conversation"
    messages = normalize_messages(messages)
    roles = [message["role"] for message in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns != ["user", "assistant"] * (len(turns) // 2):
        return "not_alternating", f"conversation does not alternate user/assistant ending with an answer: {roles}"
    num_image_parts = 0
    for message in messages:
        message_images = sum(part["type"] == "image" for part in message["content"])
        if message_images and message["role"] != "user":
            return "image_outside_user_turn", f"a {message['role']} turn holds an image"
        num_image_parts += message_images
    if num_image_parts != len(images):
        return "image_count_mismatch", f"{num_image_parts} <image> markers but {len(images)} images"
    for image in images:
        if isinstance(image, str) and not os.path.exists(resolve_image_path(image, image_folder)):
            return "missing_image", f"missing image file {resolve_image_path(image, image_folder)!r}"
    return None


def validate(dataset: datasets.Dataset, image_folder: str | None, on_bad_sample: str) -> datasets.Dataset:
    """Drops (skip) or reports (error) samples with structural problems; logs every dropped sample and the counts."""
    problems = [
        conversation_problem(messages, images, image_folder)
        for messages, images in zip(dataset["messages"], dataset["images"])
    ]
    bad = [index for index, problem in enumerate(problems) if problem is not None]
    if not bad:
        return dataset
    ids = dataset["id"]
    if on_bad_sample == "error":
        index = bad[0]
        raise BadSampleError(
            f"Sample {ids[index]!r} (index {index}): {problems[index][1]}. {len(bad)} bad samples in total; pass "
            "--on_bad_sample skip to drop them."
        )
    for index in bad:
        logger.warning("Skipping sample %r (index %d): %s", ids[index], index, problems[index][1])
    counts = Counter(problems[index][0] for index in bad)
    logger.warning("Skipped %d of %d samples before training: %s", len(bad), len(dataset), dict(counts))
    bad_set = set(bad)
    return dataset.select([index for index in range(len(dataset)) if index not in bad_set])


def load_training_dataset(data_args: DataArguments) -> datasets.Dataset:
    """All `--data_path` sources, concatenated and validated."""
    parts = [load_samples(path) for path in data_args.data_path]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    dataset = validate(dataset, data_args.image_folder, data_args.on_bad_sample)
    logger.info("Training data: %d samples from %s", len(dataset), ", ".join(data_args.data_path))
    return dataset
