"""Training data: LLaVA JSON/JSONL and HF `datasets` with TRL's `messages` + `images` columns.

Every source becomes one `datasets.Dataset` with the columns `id` (str), `messages` (TRL's conversational format:
`[{"role": "system"|"user"|"assistant", "content": [{"type": "image"|"text", "text": str|None}]}]`) and `images`
(resolved image paths, or `datasets.Image` values).

This module is the one place where samples are judged. At load time, before any compute is spent, every sample is
checked once: its conversation, its `<image>` markers against its images, each image file (it exists and PIL can
open and verify it) and, given the collator, its tokens (an over-long sample must be cut without cutting an image
and keep an answer token). `--on_bad_sample` is applied to what is found, once: stop naming the first bad sample,
or drop every bad sample and log and record the counts. The collator then only renders, tokenizes and masks; it
opens the image files lazily, batch by batch.
"""

import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from .arguments import DataArguments

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
ROLES = ("system", "user", "assistant")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DATASET_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
IGNORE_INDEX = -100


class BadSampleError(ValueError):
    """A training sample that cannot be used as it is; the message names the source, the sample and the problem."""


@dataclass
class TrainingData:
    """The checked training samples and what the checks found.

    Attributes:
        dataset: the usable samples (`id`, `messages`, `images` with resolved paths).
        skipped: bad samples dropped with `--on_bad_sample skip`, counted by kind (e.g. `missing_image`).
        over_length: samples longer than `max_length`, which the collator cuts to `max_length` tokens.
        num_tokens: tokens of each usable sample before truncation, row for row with `dataset` (empty when the
            tokens were not checked); `training.packing` packs by them.
    """

    dataset: datasets.Dataset
    skipped: Counter = field(default_factory=Counter)
    over_length: int = 0
    num_tokens: list[int] = field(default_factory=list)

    def record(self) -> dict[str, int]:
        """Counts for the run record: skipped samples by kind and, as `truncated`, the over-long ones."""
        return {**self.skipped, **({"truncated": self.over_length} if self.over_length else {})}


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
    """One LLaVA-format record (`id`, `image` path or list, `conversations`) -> a sample in the common format.

    An unknown speaker is kept as the role (the checks report it); a turn that is not `{"from", "value": str}`
    is a malformed file, not a bad sample, and raises.
    """
    sample_id = str(record.get("id", index))
    messages = []
    for turn in record.get("conversations") or []:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(
                f"{source}: sample {sample_id!r} (index {index}) has a turn {turn!r}; expected {{'from': "
                f"{'|'.join(LLAVA_ROLES)}, 'value': str}}."
            )
        role = LLAVA_ROLES.get(turn.get("from"), str(turn.get("from")))
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
    """A .json/.jsonl file whose first record has `conversations`, or that is empty (else it is read as TRL data)."""
    if not path.endswith((".json", ".jsonl")):
        return False
    with open(path, encoding="utf-8") as file:
        head = file.read(1 << 16)
    return '"conversations"' in head or head.strip() in ("", "[]")


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
    """One data source as a dataset in the common format (image paths as written in the source)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path {path!r} does not exist.")
    if is_llava_file(path):
        samples = read_llava_file(path)
        if not samples:
            raise ValueError(f"--data_path {path!r} holds no samples.")
        return datasets.Dataset.from_list(samples)
    dataset = load_hf_dataset(path)
    if len(dataset) == 0:
        raise ValueError(f"--data_path {path!r} holds no samples.")
    return dataset.cast_column("id", datasets.Value("string")) if dataset.features["id"].dtype != "string" else dataset


def resolve_image_path(image: str, image_folder: str | None) -> str:
    return image if image_folder is None or os.path.isabs(image) else os.path.join(image_folder, image)


def conversation_problem(messages: list[dict], num_images: int) -> tuple[str, str] | None:
    """What makes a conversation unusable, as `(kind, description)`, or None if it is fine.

    Checks: a non-empty conversation of (optional system) then user/assistant turns alternating, starting with a
    user turn and ending with an answer; images only in user turns; as many image parts as images.
    """
    if not messages:
        return "empty_conversation", "empty conversation"
    messages = normalize_messages(messages)
    roles = [message["role"] for message in messages]
    for position, role in enumerate(roles):
        if role not in ROLES:
            return "unknown_role", (
                f"turn {position} has the role {role!r}; expected one of {', '.join(ROLES)} (LLaVA 'from': "
                f"{', '.join(LLAVA_ROLES)})"
            )
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns != ["user", "assistant"] * (len(turns) // 2):
        return "not_alternating", f"conversation does not alternate user/assistant ending with an answer: {roles}"
    num_image_parts = 0
    for message in messages:
        message_images = sum(part["type"] == "image" for part in message["content"])
        if message_images and message["role"] != "user":
            return "image_outside_user_turn", f"a {message['role']} turn holds an image"
        num_image_parts += message_images
    if num_image_parts != num_images:
        return "image_count_mismatch", f"{num_image_parts} <image> markers but {num_images} images"
    return None


def image_problem(image, image_folder: str | None) -> tuple[str, str] | None:
    """A missing or undecodable image file, as `(kind, description)`, or None.

    `image` is a path (relative to `image_folder`), an undecoded `datasets.Image` value (`{"bytes", "path"}`) or a
    PIL image. PIL opens the file and verifies it (headers and checksums, without decoding the pixels).
    """
    if isinstance(image, Image.Image):
        return None
    if isinstance(image, dict):
        name = image.get("path") or "<embedded bytes>"
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
    else:
        name = source = resolve_image_path(image, image_folder)
    if isinstance(source, str) and not os.path.isfile(source):
        return "missing_image", f"missing image file {name!r}"
    try:
        with Image.open(source) as opened:
            opened.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return "corrupt_image", f"cannot read image {name!r}: {error}"
    return None


def token_problem(collator, sample: dict) -> tuple[tuple[str, str] | None, int]:
    """What makes a sample's tokens unusable, as `(kind, description)` or None, and its length in tokens.

    Bad: no supervised token at all, or longer than `collator.max_length` where the cut would fall inside or
    before an image's placeholder run, or would leave no supervised token.
    """
    input_ids, labels = collator.layout(sample)
    supervised = labels != IGNORE_INDEX
    if not supervised.any():
        problem = "no supervised token (empty answers, or {% generation %} blocks that mark nothing)"
        return ("no_supervised_tokens", problem), len(input_ids)
    cut = collator.max_length
    if cut is None or len(input_ids) <= cut:
        return None, len(input_ids)
    image_positions = (input_ids == collator.image_token_id).nonzero()
    if len(image_positions) and int(image_positions[-1]) >= cut:
        problem = (
            f"{len(input_ids)} tokens > max_length {cut}, and an image ends at token {int(image_positions[-1]) + 1}, "
            "so it cannot be truncated without cutting an image"
        )
        return ("too_long", problem), len(input_ids)
    if not supervised[:cut].any():
        problem = f"{len(input_ids)} tokens > max_length {cut}, and no answer token is left in the first {cut} tokens"
        return ("too_long", problem), len(input_ids)
    return None, len(input_ids)


def undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """The dataset with `datasets.Image` values left as `{"bytes", "path"}`, so checking does not decode them."""
    feature = getattr(dataset.features["images"], "feature", None)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return dataset


def sample_problem(sample: dict, image_folder: str | None, collator=None) -> tuple[tuple[str, str] | None, int]:
    """A sample's first problem as `(kind, description)` or None, and its token count (-1 when not counted).

    Checks the conversation, then each image, then (given a collator, when the rest is fine) the tokens.
    """
    images = sample["images"]
    problem = conversation_problem(sample["messages"], len(images))
    for image in images if problem is None else ():
        if problem := image_problem(image, image_folder):
            break
    if problem is None and collator is not None:
        problem, num_tokens = token_problem(collator, sample)
        return problem, num_tokens
    return problem, -1


def _check_batch(batch: dict, image_folder: str | None, collator) -> dict:
    checks = [
        sample_problem({"messages": messages, "images": images}, image_folder, collator)
        for messages, images in zip(batch["messages"], batch["images"])
    ]
    return {
        "kind": [problem and problem[0] for problem, _ in checks],
        "problem": [problem and problem[1] for problem, _ in checks],
        "num_tokens": [num_tokens for _, num_tokens in checks],
    }


def check_samples(
    dataset: datasets.Dataset, image_folder: str | None, collator=None, num_proc: int | None = None
) -> datasets.Dataset:
    """`sample_problem` of every sample, in `num_proc` processes: a dataset with the columns `kind`, `problem`
    (both None for a good sample) and `num_tokens`, row for row. Kept in memory: nothing is written next to the
    user's data."""
    return undecoded(dataset).map(
        _check_batch,
        fn_kwargs={"image_folder": image_folder, "collator": collator},
        batched=True,
        batch_size=256,
        remove_columns=dataset.column_names,
        features=datasets.Features(
            {
                "kind": datasets.Value("string"),
                "problem": datasets.Value("string"),
                "num_tokens": datasets.Value("int64"),
            }
        ),
        keep_in_memory=True,
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > 1 else None,
        new_fingerprint=f"{dataset._fingerprint}-checks",  # hashing the collator (a whole tokenizer) is slow
        desc="Checking samples",
    )


def problems_of(checks: datasets.Dataset) -> list[tuple[str, str] | None]:
    """The `(kind, description)` (or None) per sample of a `check_samples` result."""
    return [None if kind is None else (kind, problem) for kind, problem in zip(checks["kind"], checks["problem"])]


def drop_bad_samples(
    sources: list[tuple[str, datasets.Dataset]], problems: list[list], on_bad_sample: str
) -> tuple[list[datasets.Dataset], Counter]:
    """Applies `--on_bad_sample` to the problems of every source: the error names the first bad sample; skip logs
    each bad sample and the counts.

    Args:
        sources: `(path, dataset)` per `--data_path`.
        problems: per source, per sample: `(kind, description)` or None.
        on_bad_sample: `"error"` or `"skip"`.

    Returns:
        The sources' datasets without their bad samples, and the skipped counts by kind.

    Raises:
        BadSampleError: with `error`, for the first bad sample; with `skip`, when no sample is left.
    """
    bad = [(source, dataset["id"][index], index, problem)
           for (source, dataset), source_problems in zip(sources, problems)
           for index, problem in enumerate(source_problems) if problem is not None]  # fmt: skip
    total = sum(len(dataset) for _, dataset in sources)
    if bad and on_bad_sample == "error":
        source, sample_id, index, (_, description) = bad[0]
        raise BadSampleError(
            f"{source}: sample {sample_id!r} (index {index}): {description}. {len(bad)} of {total} samples are bad; "
            "pass --on_bad_sample skip to drop them."
        )
    for source, sample_id, index, (_, description) in bad:
        logger.warning("Skipping sample %r (index %d) of %s: %s", sample_id, index, source, description)
    skipped = Counter(problem[0] for *_, problem in bad)
    if bad:
        logger.warning("Skipped %d of %d samples before training: %s", len(bad), total, dict(skipped))
    if len(bad) == total:
        raise BadSampleError(
            f"No training sample left: all {total} samples of {', '.join(source for source, _ in sources)} are bad "
            f"({dict(skipped)}); see the warnings above."
        )
    kept = [
        dataset.select([index for index, problem in enumerate(source_problems) if problem is None])
        if any(source_problems) else dataset
        for (_, dataset), source_problems in zip(sources, problems)
    ]  # fmt: skip
    return kept, skipped


def resolve_images(dataset: datasets.Dataset, image_folder: str | None) -> datasets.Dataset:
    """Image paths joined to `image_folder`; `datasets.Image` values decoded on access (to PIL, row by row)."""
    feature = dataset.features["images"]
    if isinstance(getattr(feature, "feature", None), datasets.Image):
        return dataset.cast_column("images", datasets.List(datasets.Image()))
    if image_folder is None or feature != datasets.List(datasets.Value("string")):
        return dataset
    # A new column rather than `map`, which would write a cache file into the user's dataset dir.
    resolved = [[resolve_image_path(path, image_folder) for path in paths] for paths in dataset["images"]]
    dataset = dataset.remove_columns("images").add_column("images", resolved, feature=feature)
    return dataset.select_columns(["id", "messages", "images"])


def load_training_dataset(data_args: DataArguments, collator=None, num_proc: int | None = None) -> TrainingData:
    """All `--data_path` sources, checked once, bad samples handled by `--on_bad_sample`, then concatenated.

    Args:
        data_args: the sources, the image folder and the bad-sample policy.
        collator: a `TinyLlavaCollator`; given, each sample's tokens are checked too (see `token_problem`) and the
            over-long samples counted. It renders stand-in images, so no image is decoded here.
        num_proc: processes for the checks (`--dataset_num_proc`); the token check costs about half of what
            collating the sample does.
    """
    sources = [(path, load_samples(path)) for path in data_args.data_path]
    checks = [check_samples(dataset, data_args.image_folder, collator, num_proc) for _, dataset in sources]
    kept, skipped = drop_bad_samples(sources, [problems_of(check) for check in checks], data_args.on_bad_sample)
    dataset = kept[0] if len(kept) == 1 else datasets.concatenate_datasets(kept)
    dataset = resolve_images(dataset, data_args.image_folder)
    max_length = getattr(collator, "max_length", None)
    # Same order as `dataset`: each source's good samples, sources concatenated.
    num_tokens = [
        count for check in checks for kind, count in zip(check["kind"], check["num_tokens"]) if kind is None
    ] if collator is not None else []  # fmt: skip
    over_length = sum(count > max_length for count in num_tokens) if max_length is not None else 0
    if over_length:
        logger.warning(
            "%d of %d samples are longer than max_length %d; the collator cuts them to max_length tokens (after "
            "their last image).", over_length, len(dataset), max_length,
        )  # fmt: skip
    logger.info("Training data: %d samples from %s", len(dataset), ", ".join(data_args.data_path))
    return TrainingData(dataset, skipped, over_length, num_tokens)
