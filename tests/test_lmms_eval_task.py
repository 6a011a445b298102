"""The shipped lmms-eval files (evaluation/lmms_eval/): the task YAML parses, names functions and files that exist,
scores like `tinyllava-eval pope --strict`, and the constraints keep the installed torch."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from tinyllava_hf.evaluation.metrics.pope import parse_pope_answer_strict, pope_metrics_strict

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL_DIR = REPO / "evaluation" / "lmms_eval"
TASK_YAML = LMMS_EVAL_DIR / "tinyllava_pope_local.yaml"
SHORT = "\nAnswer the question using a single word or phrase."


class _TaskLoader(yaml.SafeLoader):
    """lmms-eval's YAML dialect: `!function module.name` names a function in a module beside the YAML file."""


_TaskLoader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))


@pytest.fixture(scope="module")
def task():
    return yaml.load(TASK_YAML.read_text(), Loader=_TaskLoader)


@pytest.fixture(scope="module")
def utils():
    spec = importlib.util.spec_from_file_location("lmms_eval_task_utils", LMMS_EVAL_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def functions(value):
    """Every `!function` reference anywhere in a parsed YAML value."""
    if isinstance(value, tuple) and value[0] == "!function":
        yield value[1]
    elif isinstance(value, dict):
        for item in value.values():
            yield from functions(item)
    elif isinstance(value, list):
        for item in value:
            yield from functions(item)


def sample_docs(task):
    path = REPO / task["dataset_kwargs"]["data_files"][task["test_split"]]  # relative to the repository root
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_task_yaml_names_functions_and_files_that_exist(task, utils):
    assert task["task"] == "tinyllava_pope_local" and task["output_type"] == "generate_until"
    assert task["dataset_path"] == "json"
    references = list(functions(task))
    assert len(references) == 8
    for reference in references:
        module, name = reference.split(".")
        assert module == "utils" and callable(getattr(utils, name)), reference
    docs = sample_docs(task)
    assert docs and all({"question_id", "question", "answer", "image"} <= set(doc) for doc in docs)
    for doc in docs:
        assert (REPO / doc["image"]).is_file(), doc["image"]
    assert task["generation_kwargs"]["max_new_tokens"] == 128 and task["generation_kwargs"]["do_sample"] is False


def test_task_prompt_and_images(task, utils, monkeypatch):
    monkeypatch.chdir(REPO)  # lmms-eval is run from the repository root
    doc = sample_docs(task)[0]
    kwargs = task["lmms_eval_specific_kwargs"]["default"]
    # The question text `tinyllava-eval pope` asks (LLaVA's POPE question file carries the same suffix).
    assert utils.pope_local_doc_to_text(doc, kwargs) == "Is there a red square in the image?" + SHORT
    (image,) = utils.pope_local_doc_to_visual(doc)
    assert image.mode == "RGB" and image.size == (64, 64)
    embedded = Image.new("L", (8, 8))
    assert utils.pope_local_doc_to_visual({**doc, "image": embedded})[0].mode == "RGB"
    with pytest.raises(FileNotFoundError, match="Question 1: image .*missing.png not found"):
        utils.pope_local_doc_to_visual({**doc, "image": "missing.png"})


def test_task_scores_like_tinyllava_eval_strict(utils):
    answers = ["Yes", "no", "yes.", " NO ", "yes", "Yes, there is.", "no", "yes"]
    labels = ["yes", "no", "yes", "yes", "no", "no", "no", "yes"]
    records = [
        utils.pope_local_process_results({"question_id": i, "answer": label}, [answer])
        for i, (answer, label) in enumerate(zip(answers, labels))
    ]
    assert all(set(record) == {f"pope_{n}" for n in ("accuracy", "precision", "recall", "f1_score", "yes_ratio")}
               for record in records)  # fmt: skip
    expected = pope_metrics_strict([parse_pope_answer_strict(answer) for answer in answers], labels)
    for name, key in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                      ("f1_score", "f1"), ("yes_ratio", "yes_ratio")):  # fmt: skip
        aggregate = getattr(utils, f"pope_local_{name}")
        assert aggregate([record[f"pope_{name}"] for record in records]) == pytest.approx(expected[key]), name
    # By hand: correct 1, 2, 7, 8; TP 1, 8; FP 5; FN 4; "yes." and "Yes, there is." are neither yes nor no.
    assert (expected["tp"], expected["fp"], expected["fn"], expected["other"]) == (2, 1, 1, 2)
    assert expected["accuracy"] == 1 / 2 and expected["f1"] == pytest.approx(2 / 3) and expected["yes_ratio"] == 3 / 8
    with pytest.raises(ValueError, match="Question 0: answer must be 'yes' or 'no', got 'maybe'"):
        utils.pope_local_process_results({"question_id": 0, "answer": "maybe"}, ["yes"])


def test_constraints_pin_the_installed_torch_and_its_torchvision():
    lines = (LMMS_EVAL_DIR / "constraints.txt").read_text().splitlines()
    requirements = {r.name: r for r in (Requirement(line) for line in lines if line.strip() and line[0] != "#")}
    assert set(requirements) == {"torch", "torchvision", "filelock"}
    installed = Version(torch.__version__).base_version  # "2.13.0" for "2.13.0+cpu"
    assert requirements["torch"].specifier.contains(installed)
    assert str(requirements["torchvision"].specifier) == "==0.28.0"  # its wheel requires torch==2.13.0
    assert requirements["torchvision"].specifier.contains("0.28.0+cpu")  # the CPU build satisfies it too
