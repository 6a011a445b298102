"""Bad training input through `tinyllava-train`, as a table: each case either stops with an error that names the
file, the sample and what is wrong, leaving no output directory behind, or trains and logs and records what it
dropped or cut."""

import io
import json
import logging
import re
from dataclasses import dataclass

import pytest
from conftest import make_image
from training_helpers import ANSWERS, llava_record, train_argv, write_llava_dataset

from modeling_tinyllava import TinyLlavaProcessor
from tinyllava_hf.training.cli import run
from tinyllava_hf.training.collator import TinyLlavaCollator
from tinyllava_hf.training.data import BadSampleError
from tinyllava_hf.training.outputs import RUN_RECORD

GOOD = 4  # samples 0-3 are good; the case's samples follow from index 4
LONG_ANSWER = "one two three four five six seven eight nine ten " * 6


def truncated_png() -> bytes:
    """The first half of a valid PNG: the signature and header are there, the image data is not."""
    buffer = io.BytesIO()
    make_image(seed=9).save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def ask(sample_id, image="0.png", *turns):
    return llava_record(sample_id, image, *(turns or ("<image>\nWhat is in the image?", "red square")))


@dataclass
class Case:
    """One row of the table.

    Attributes:
        bad: records appended after the good samples 0-3 (index 4 on).
        on_bad_sample: the policy.
        expected: a pattern of the error (`{data}`, `{images}` and `{max_length}` stand for the data file, the image
            folder and the max_length used), or the run record's `skipped_or_truncated_samples`.
        with_good: False to write only the `bad` records.
        error: the exception an `expected` pattern belongs to.
    """

    bad: list[dict]
    on_bad_sample: str
    expected: str | dict
    with_good: bool = True
    error: type = BadSampleError


LATE_IMAGE = ask("late_image", "0.png", "Hi?", LONG_ANSWER, "<image>\nAnd now?", "blue circle")
WRONG_ROLE = {"id": "robot", "image": "0.png",
              "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "robot", "value": "Beep."}]}  # fmt: skip
CASES = {
    "missing_image-error": Case([ask("gone", "gone.png")], "error", (
        r"{data}: sample 'gone' \(index 4\): missing image file '{images}/gone\.png'\. 1 of 5 samples are bad; "
        r"pass --on_bad_sample skip to drop them\.")),
    "missing_image-skip": Case([ask("gone", "gone.png")], "skip", {"missing_image": 1}),
    "corrupt_png-error": Case([ask("broken", "broken.png")], "error", (
        r"{data}: sample 'broken' \(index 4\): cannot read image '{images}/broken\.png': Truncated File Read\. "
        r"1 of 5 samples are bad")),
    "corrupt_png-skip": Case([ask("broken", "broken.png")], "skip", {"corrupt_image": 1}),
    "wrong_role": Case([WRONG_ROLE], "error", (
        r"{data}: sample 'robot' \(index 4\): turn 1 has the role 'robot'; expected one of system, user, assistant "
        r"\(LLaVA 'from': human, user, gpt, assistant, system\)\. 1 of 5 samples are bad")),
    "more_markers_than_images": Case([ask("markers", "0.png", "<image>\n<image>\nCompare.", "Same.")], "error", (
        r"{data}: sample 'markers' \(index 4\): 2 <image> markers but 1 images\. 1 of 5 samples are bad")),
    "image_past_max_length-error": Case([LATE_IMAGE], "error", (
        r"{data}: sample 'late_image' \(index 4\): \d+ tokens > max_length {max_length}, and an image ends at "
        r"token \d+, so it cannot be truncated without cutting an image\. 1 of 5 samples are bad")),
    "image_past_max_length-skip": Case([LATE_IMAGE], "skip", {"too_long": 1}),
    "longer_than_max_length": Case([ask("long", "0.png", "<image>\nDescribe it.", LONG_ANSWER)], "error",
                                   {"truncated": 1}),
    "empty_dataset": Case([], "error", r"--data_path '{data}' holds no samples\.", with_good=False,
                          error=ValueError),
    "empty_after_skipping": Case([ask("gone", "gone.png"), ask("broken", "broken.png")], "skip", (
        r"No training sample left: all 2 samples of {data} are bad "
        r"\({{'missing_image': 1, 'corrupt_image': 1}}\); see the warnings above\."), with_good=False),
}  # fmt: skip


@pytest.fixture(scope="module")
def max_length(components_dir) -> int:
    """Room for every good sample (as the finetune recipe renders it with the llama template) and a few tokens."""
    processor = TinyLlavaProcessor.from_pretrained_components(
        llm=str(components_dir / "llama"), vision_tower=str(components_dir / "siglip")
    )
    collator = TinyLlavaCollator(processor)
    lengths = [len(collator.layout({"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}], "images": [None]})[0])
        for answer in ANSWERS]  # fmt: skip
    long_answer = collator.layout({"messages": [{"role": "user", "content": "Hi?"},
                                                {"role": "assistant", "content": LONG_ANSWER}], "images": []})[0]  # fmt: skip
    assert len(long_answer) > max(lengths) + 10, "LONG_ANSWER must not fit into max_length"
    return max(lengths) + 4


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_input(case, components_dir, tmp_path, max_length, caplog):
    case = CASES[case]
    good = [ask(f"s{i}", f"{i}.png", "<image>\nWhat is in the image?", ANSWERS[i]) for i in range(GOOD)]
    data = write_llava_dataset(tmp_path, records=good * case.with_good + case.bad)
    data_path, image_folder = data
    (image_folder / "broken.png").write_bytes(truncated_png())
    output_dir = tmp_path / "out"
    argv = train_argv("finetune", output_dir, data, "--llm", str(components_dir / "llama"),
                      "--vision_tower", str(components_dir / "siglip"), "--on_bad_sample", case.on_bad_sample,
                      "--max_length", str(max_length), max_steps=2)  # fmt: skip

    if isinstance(case.expected, str):
        pattern = case.expected.format(
            data=re.escape(str(data_path)), images=re.escape(str(image_folder)), max_length=max_length
        )
        with pytest.raises(case.error, match=pattern):
            run(argv)
        assert not output_dir.exists(), f"a failed run left {sorted(p.name for p in output_dir.iterdir())}"
        return

    with caplog.at_level(logging.WARNING):
        run(argv)
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()
    stage = json.loads((output_dir / RUN_RECORD).read_text())["stages"][-1]
    assert stage["skipped_or_truncated_samples"] == case.expected
    assert stage["steps"] == 2
    if "truncated" in case.expected:
        assert f"1 of 5 samples are longer than max_length {max_length}" in caplog.text
        assert "Truncated sample 'long'" in caplog.text
    else:
        assert f"Skipped 1 of 5 samples before training: {case.expected}" in caplog.text
