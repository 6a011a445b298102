"""Bad input to `tinyllava-convert`, `tinyllava-eval` and `tinyllava-push`, as a table: each error names the file,
sample or key at fault, and nothing is left half-written."""

import argparse
import json
import shutil

import pytest
import torch
from conftest import make_image
from conversion_helpers import write_factory_checkpoint
from safetensors.torch import load_file

import tinyllava_hf.evaluation.generation
from tinyllava_hf.conversion.cli import main as convert_main
from tinyllava_hf.evaluation.cli import main as eval_main
from tinyllava_hf.model_cards import PublishError, push, write_model_card

# --- tinyllava-convert -------------------------------------------------------------------------------------------


def truncate_safetensors(src):
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return (
        f"{path} is not a readable safetensors file (Error while deserializing header: incomplete metadata, file "
        "not fully covered); it is probably truncated or corrupt: download it again."
    )


def remove_tokenizer(src):
    for path in [*src.glob("tokenizer*"), *src.glob("special_tokens_map.json"), *src.glob("chat_template.*")]:
        path.unlink()
    return (
        f"No tokenizer in {src}: none of tokenizer.json, tokenizer.model, vocab.json, tokenizer_config.json. The "
        "original loads it from the config's tokenizer_name_or_path; pass that tokenizer's directory with "
        "--tokenizer DIR."
    )


def unknown_model_type(src):
    path = src / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "banana"}))
    return (
        f"{path} has model_type 'banana', not 'tinyllava': not a TinyLLaVA Factory checkpoint (use `legacy` for "
        "TinyLLaVABench checkpoints)."
    )


def pickle_beyond_weights_only(src):
    state = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    path = src / "pytorch_model.bin"
    # Any object beyond tensors and containers needs full unpickling (code execution), which weights_only refuses.
    torch.save({**state, "payload": argparse.Namespace(run="code")}, path)
    return (
        f"{path} cannot be read with weights_only=True (WeightsUnpickler error: Unsupported global: GLOBAL "
        "argparse.Namespace was not an allowed global by default. Please use "
        "`torch.serialization.add_safe_globals([argparse.Namespace])` or the "
        "`torch.serialization.safe_globals([argparse.Namespace])` context manager to allowlist this global if you "
        "trust this class/function.): it holds Python objects besides tensors, and unpickling them could run "
        "arbitrary code. Save its state dict again with tensors only, or as safetensors."
    )


@pytest.fixture(scope="module")
def factory_source(components_dir, tmp_path_factory):
    source = tmp_path_factory.mktemp("factory") / "src"
    write_factory_checkpoint(components_dir, source, "llama", "siglip")
    return source


@pytest.mark.parametrize(
    "breaks", [truncate_safetensors, remove_tokenizer, unknown_model_type, pickle_beyond_weights_only]
)
def test_convert(factory_source, tmp_path, capsys, breaks):
    src, dst = tmp_path / "src", tmp_path / "out" / "dst"
    shutil.copytree(factory_source, src)
    message = breaks(src)
    assert convert_main(["factory", str(src), str(dst)]) == 1
    assert capsys.readouterr().err == f"tinyllava-convert factory: error: {message}\nNothing was written to {dst}.\n"
    assert [path.name for path in tmp_path.iterdir()] == ["src"]  # no DST, no staging directory, no parent


# --- tinyllava-eval ----------------------------------------------------------------------------------------------

SPLITS, OBJECTS = ("adversarial", "popular"), ("dog", "cat", "red square")


@pytest.fixture
def pope(tmp_path):
    """Two POPE splits of three questions about three images; returns the `tinyllava-eval pope` arguments."""
    (tmp_path / "images").mkdir()
    (tmp_path / "ann").mkdir()
    questions = []
    for split in SPLITS:
        labels = []
        for index, name in enumerate(OBJECTS):
            make_image(seed=index).save(tmp_path / "images" / f"{index}.jpg")
            questions.append({"question_id": len(questions) + 1, "image": f"{index}.jpg",
                              "text": f"Is there a {name} in the image?", "category": split})  # fmt: skip
            labels.append({"question_id": index + 1, "image": f"{index}.jpg", "label": ("yes", "no")[index % 2]})
        (tmp_path / "ann" / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return ["--question-file", str(tmp_path / "q.jsonl"), "--annotation-dir", str(tmp_path / "ann"),
            "--image-folder", str(tmp_path / "images"), "--max-new-tokens", "3", "--num-workers", "0"]  # fmt: skip


def duplicate_question(data):
    path = data / "q.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    return (
        f"{path}: 1 question(s) appear more than once with the same id and text, so their answers could not be told "
        "apart; e.g. id 2 is question 2 and 7."
    )


def missing_image(data):
    (data / "images" / "1.jpg").unlink()
    return f"2 image(s) not found in {data / 'images'}, e.g. 1.jpg (question 2), 1.jpg (question 5)."


@pytest.mark.parametrize("breaks", [duplicate_question, missing_image])
def test_eval(pope, tmp_path, capsys, breaks):
    message = breaks(tmp_path)
    out = tmp_path / "out"
    # The model is never loaded: both are found before any model work.
    assert eval_main(["pope", "--model", "never-loaded", "--output-dir", str(out), *pope]) == 2
    assert capsys.readouterr().err == f"tinyllava-eval pope: error: {message}\n"
    assert not out.exists()


def test_eval_interrupted_twice_ends_like_an_uninterrupted_run(pope, saved_model_dir, tmp_path, monkeypatch):
    def run(out):
        return eval_main(
            ["pope", "--model", str(saved_model_dir), "--output-dir", str(out), "--batch-size", "2", *pope]
        )

    assert run(tmp_path / "straight") == 0

    real_generate_batch = tinyllava_hf.evaluation.generation.generate_batch
    batches = []

    def generate_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C while the model generates
        return real_generate_batch(*args, **kwargs)

    monkeypatch.setattr(tinyllava_hf.evaluation.generation, "generate_batch", generate_batch)
    out = tmp_path / "interrupted"
    answers = out / "pope_answers.jsonl"
    interrupt_at = 2  # the first run answers one batch of two
    with pytest.raises(KeyboardInterrupt):
        run(out)
    with answers.open("a") as file:
        file.write('{"question_id": 3, "prompt": "Is th')  # and a kill cut the next line short
    batches[:], interrupt_at = [], 2  # the second run answers one more batch
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert len(answers.read_text().splitlines()) == 4 and not (out / "pope_results.json").exists()
    batches[:], interrupt_at = [], None
    assert run(out) == 0
    assert len(batches) == 1  # only the last batch was left
    for name in ("pope_answers.jsonl", "pope_results.json", "pope_summary.json"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert sorted(path.name for path in out.iterdir()) == ["pope_answers.jsonl", "pope_results.json",
                                                           "pope_summary.json"]  # fmt: skip


# --- tinyllava-push ------------------------------------------------------------------------------------------------

REQUIRED = "license: mit\npipeline_tag: image-text-to-text\nlibrary_name: transformers\n"
DOES_NOT_PARSE = (
    "{readme}: the card metadata (the YAML block between the --- lines; its line numbers count from the line after "
    "the opening ---) does not parse: "
)
# case -> (the card's front matter, the error message)
BAD_METADATA = {
    "yaml": (
        "---\nlicense: mit\npipeline_tag: [image-text-to-text\n---\n",
        (
            DOES_NOT_PARSE + "while parsing a flow sequence\n"
            '  in "<unicode string>", line 2, column 15:\n'
            "    pipeline_tag: [image-text-to-text\n"
            "                  ^\n"
            "expected ',' or ']', but got '<stream end>'\n"
            '  in "<unicode string>", line 2, column 34:\n'
            "    pipeline_tag: [image-text-to-text\n"
            "                                     ^"
        ),
    ),
    "model-index": (
        f"---\n{REQUIRED}model-index:\n- name: tiny\n  results:\n  - task: {{name: POPE}}\n---\n",
        (
            DOES_NOT_PARSE + "Invalid `model_index` in metadata cannot be parsed: <class 'KeyError'> 'type'. Pass "
            "`ignore_metadata_errors=True` to ignore this error while loading a Model Card. Warning: some information "
            "will be lost. Use it at your own risk."
        ),
    ),
    "base_model": (
        f"---\n{REQUIRED}base_model: ../pretrain\n---\n",
        (
            "{readme}: metadata 'base_model' holds '../pretrain', which is not a Hub repo id (Repo id must use "
            "alphanumeric chars, '-', '_' or '.'. The name cannot start or end with '-' or '.' and the maximum "
            "length is 96: '../pretrain'.); the Hub refuses the card. Regenerate it with tinyllava-card, or fix the "
            "entry."
        ),
    ),
    "license": (
        "---\nlicense: [mit, apache-2.0]\npipeline_tag: image-text-to-text\nlibrary_name: transformers\n---\n",
        "{readme}: metadata 'license' must be a string, got ['mit', 'apache-2.0'].",
    ),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_push_card_with_invalid_metadata(saved_model_dir, tmp_path, monkeypatch, case):
    checkpoint = tmp_path / "model"
    shutil.copytree(saved_model_dir, checkpoint)
    write_model_card(checkpoint)
    readme = checkpoint / "README.md"
    front_matter, message = BAD_METADATA[case]
    card = front_matter + readme.read_text().split("\n---\n", 1)[1]
    readme.write_text(card)
    with pytest.raises(PublishError) as error:
        push(checkpoint, "me/tiny", dry_run=tmp_path / "dry")
    assert str(error.value) == message.format(readme=readme)
    assert not (tmp_path / "dry").exists() and readme.read_text() == card
