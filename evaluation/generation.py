"""Batched greedy answers from a TinyLLaVA (or any image-text-to-text) checkpoint, with the original eval prompt."""

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_tinyllava.processing_tinyllava import load_image

from .answers import AnswerFile
from .errors import EvaluationError
from .question import Question


def load_model(model: str, dtype: str = "float32", device: str | None = None):
    """Loads a checkpoint with the Auto classes (remote code trusted), ready for batched generation.

    Args:
        model: a checkpoint directory or Hub id: a TinyLLaVA checkpoint, or a native LLaVA export.
        dtype: a torch dtype name, or "auto" for the saved dtype. The default float32 matches the original
            evaluation, which ignored the requested dtype and ran fp32 weights (reference §8).
        device: e.g. "cuda", "cuda:1", "cpu"; the default is "cuda" when available.

    Returns:
        `(model, processor)`: the model in eval mode on `device`; the processor's tokenizer pads on the left, as
        batched generation with a decoder-only model requires.
    """
    import modeling_tinyllava  # noqa: F401  (registers TinyLLaVA with the Auto classes for dirs without remote code)

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype, None)
    if not isinstance(torch_dtype, (str, torch.dtype)):
        raise EvaluationError(f"Unknown dtype {dtype!r}; use e.g. float32, bfloat16, float16 or auto.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device}: no CUDA GPU is available here; use --device cpu.")
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=True, dtype=torch_dtype)
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
    except OSError as error:
        raise EvaluationError(f"Cannot load --model {model}: {error}") from error
    processor.tokenizer.padding_side = "left"
    return loaded.to(device).eval(), processor


def build_prompt(processor, question: Question) -> str:
    """The original eval prompt: one user turn `"<image>\\n" + text` and the open assistant turn, rendered with the
    checkpoint's chat template (for the original templates: `SYSTEM USER: <image>\\n{text} ASSISTANT:`).

    The turn is a plain string, which every chat template renders (an LLM's own template may not know image parts);
    the processor then expands `<image>` into the image's placeholder tokens.
    """
    text = question.text if question.image is None else "<image>\n" + question.text
    return processor.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


class _QuestionImages(Dataset):
    """(question, RGB image or None) pairs, read in DataLoader workers."""

    def __init__(self, questions: Sequence[Question], image_folder: Path | None):
        self.questions, self.image_folder = questions, image_folder

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        question = self.questions[index]
        if question.image is None:
            return question, None
        try:
            return question, load_image(self.image_folder / question.image)
        except ValueError as error:
            raise EvaluationError(f"Question {question.question_id!r}: {error}") from error


def _collate(processor, items):
    questions, images = zip(*items)
    texts = [build_prompt(processor, question) for question in questions]
    images = [image for image in images if image is not None]
    return list(questions), processor(text=texts, images=images or None, padding=True, return_tensors="pt")


@torch.inference_mode()
def generate_batch(model, processor, inputs, max_new_tokens: int) -> list[str]:
    """Greedy answers for one padded batch: the new tokens only, decoded without special tokens and stripped.

    Args:
        inputs: the processor's output for left-padded prompts: `input_ids`/`attention_mask` `(batch, seq)` and
            `pixel_values` `(num_images, 3, H, W)`.
    """
    inputs = inputs.to(model.device, dtype=model.dtype)  # casts only floating tensors (the pixel values)
    output = model.generate(
        **inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        pad_token_id=processor.tokenizer.pad_token_id, use_cache=True,
    )  # fmt: skip
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def check_images(questions: Sequence[Question], image_folder: str | os.PathLike | None) -> Path | None:
    """Fails fast, before any model work, if an image is missing; returns the folder as a Path."""
    needs_images = [question for question in questions if question.image is not None]
    if not needs_images:
        return None if image_folder is None else Path(image_folder)
    if image_folder is None:
        raise EvaluationError("These questions have images: pass --image-folder.")
    folder = Path(image_folder)
    missing = [q for q in needs_images if not (folder / q.image).is_file()]
    if missing:
        examples = ", ".join(f"{q.image} (question {q.question_id!r})" for q in missing[:3])
        raise EvaluationError(f"{len(missing)} image(s) not found in {folder}, e.g. {examples}.")
    return folder


def generate_answers(
    model,
    processor,
    questions: Sequence[Question],
    image_folder: str | os.PathLike | None,
    answer_file: AnswerFile,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    num_workers: int = 0,
    description: str = "answering",
) -> None:
    """Answers `questions` in batches, appending each batch to `answer_file` as soon as it is generated.

    Args:
        questions: the questions still to answer.
        image_folder: the folder image paths are relative to.
        num_workers: DataLoader worker processes that read and preprocess images while the model generates.
    """
    folder = check_images(questions, image_folder)
    loader = DataLoader(
        _QuestionImages(questions, folder), batch_size=batch_size, num_workers=num_workers,
        collate_fn=partial(_collate, processor),
    )  # fmt: skip
    with tqdm(total=len(questions), desc=description, unit="question") as progress:
        for batch_questions, inputs in loader:
            answer_file.append(batch_questions, generate_batch(model, processor, inputs, max_new_tokens))
            progress.update(len(batch_questions))
