"""`tinyllava-eval` end to end with a tiny saved checkpoint: the original eval prompt, batched generation equal to
one-by-one generation, resuming an interrupted run, the model card hand-off and the errors users hit."""

import json
import re

import pytest
import torch
from conftest import make_image

import tinyllava_hf.evaluation.generation
import tinyllava_hf.evaluation.runner
from tinyllava_hf.evaluation.answers import AnswerFile
from tinyllava_hf.evaluation.cli import main
from tinyllava_hf.evaluation.generation import build_prompt, generate_answers, load_model
from tinyllava_hf.evaluation.question import Question

SHORT = "\nAnswer the question using a single word or phrase."
OBJECTS = ["dog", "traffic light", "red square"]
DOG_QUESTION = Question(1, "Is there a dog in the image?" + SHORT, "0.png")
# The original eval prompt for DOG_QUESTION (reference §3.2), the same for every conversation template.
DOG_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nIs there a dog in the image?"
    f"{SHORT} ASSISTANT:"
)


@pytest.fixture
def pope_data(tmp_path):
    """Two POPE splits of three questions each, about three synthetic images."""
    (tmp_path / "images").mkdir()
    (tmp_path / "ann").mkdir()
    questions = []
    for split in ("adversarial", "popular"):
        labels = []
        for index, name in enumerate(OBJECTS):
            make_image(width=40 + 8 * index, seed=index).save(tmp_path / "images" / f"{index}.jpg")
            questions.append({"question_id": len(questions) + 1, "image": f"{index}.jpg",
                              "text": f"Is there a {name} in the image?{SHORT}", "category": split})  # fmt: skip
            labels.append({"question_id": index + 1, "image": f"{index}.jpg", "label": ("yes", "no")[index % 2]})
        (tmp_path / "ann" / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return tmp_path


def pope_args(data, model_dir, *extra):
    return ["pope", "--model", str(model_dir), "--question-file", str(data / "q.jsonl"), "--annotation-dir",
            str(data / "ann"), "--image-folder", str(data / "images"), "--output-dir", str(data / "out"),
            "--max-new-tokens", "3", "--num-workers", "0", *extra]  # fmt: skip


def test_prompt_is_the_original_eval_prompt(saved_model_dir):
    _, processor = load_model(str(saved_model_dir), device="cpu")
    assert processor.tokenizer.padding_side == "left"
    assert build_prompt(processor, DOG_QUESTION) == DOG_PROMPT
    assert "<image>" not in build_prompt(processor, Question(2, "Text only?"))


@pytest.fixture
def varied_questions(tmp_path):
    for index in range(3):
        make_image(width=24 + 16 * index, seed=10 + index).save(tmp_path / f"{index}.png")
    return [Question(1, "What is shown?", "0.png"), Question(2, "Is there a green triangle on the left?", "1.png"),
            Question(3, "Describe the picture.", "2.png"), Question(4, "How many circles are there?")]  # fmt: skip


def answer_all(model_dir, questions, folder, path, batch_size, num_workers=0):
    model, processor = load_model(str(model_dir), device="cpu")
    file = AnswerFile(path, model="m")
    generate_answers(model, processor, questions, folder, file, batch_size=batch_size, max_new_tokens=6,
                     num_workers=num_workers)  # fmt: skip
    return file.load()


def test_batched_answers_equal_one_by_one_answers(varied_model_dir, varied_questions, tmp_path):
    one_by_one = answer_all(varied_model_dir, varied_questions, tmp_path, tmp_path / "a1.jsonl", batch_size=1)
    # One left-padded batch that mixes text-only and image questions, prepared by two worker processes.
    batched = answer_all(varied_model_dir, varied_questions, tmp_path, tmp_path / "a4.jsonl", 4, num_workers=2)
    assert batched == one_by_one
    assert len(set(one_by_one.values())) > 1, "the answers should differ between questions"


def test_native_llava_export_gives_the_same_answers(varied_model_dir, varied_questions, tmp_path):
    from tinyllava_hf.conversion.cli import main as convert

    assert convert(["to-llava", str(varied_model_dir), str(tmp_path / "llava")]) == 0
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["model_type"] == "llava"
    ours = answer_all(varied_model_dir, varied_questions, tmp_path, tmp_path / "a.jsonl", batch_size=4)
    llava = answer_all(tmp_path / "llava", varied_questions, tmp_path, tmp_path / "b.jsonl", batch_size=4)
    assert llava == ours
    # lmms-eval's `llava_hf` model renders a "<image>\n" + question string with the tokenizer's chat template.
    _, processor = load_model(str(tmp_path / "llava"), device="cpu")
    lmms_eval_prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\n" + DOG_QUESTION.text}], tokenize=False, add_generation_prompt=True
    )
    assert lmms_eval_prompt == build_prompt(processor, DOG_QUESTION) == DOG_PROMPT


# Scripted answers, one per object, with the labels of `pope_data` (dog: yes, traffic light: no, red square: yes):
# a true positive, a false positive ("yes" to an absent object) and a false negative ("not" in the first sentence).
# lmms-eval's strict rule accepts only the exact "yes": the other two are "other".
SCRIPTED_ANSWERS = {"dog": "Yes, there is a dog.", "traffic light": "yes", "red square": "There is not. Or yes."}


def test_pope_end_to_end_resumes_an_interrupted_run(pope_data, saved_model_dir, monkeypatch, capsys):
    real_generate_batch = tinyllava_hf.evaluation.generation.generate_batch
    calls = []

    def generate_batch(model, processor, inputs, max_new_tokens):
        """The real generation runs; its answers are then replaced by scripted ones, whose scores are known."""
        calls.append(inputs["input_ids"].shape[0])
        if len(calls) == 2 and fail_second_batch:
            raise RuntimeError("simulated crash")
        real_generate_batch(model, processor, inputs, max_new_tokens)
        prompts = processor.batch_decode(inputs["input_ids"], skip_special_tokens=True)
        return [next(a for name, a in SCRIPTED_ANSWERS.items() if f"a {name} in" in p) for p in prompts]

    monkeypatch.setattr(tinyllava_hf.evaluation.generation, "generate_batch", generate_batch)
    answers_path = pope_data / "out" / "pope_answers.jsonl"

    fail_second_batch = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(pope_args(pope_data, saved_model_dir, "--batch-size", "4"))
    first_batch = answers_path.read_text().splitlines()
    assert calls == [4, 2] and len(first_batch) == 4  # the first batch was flushed before the crash
    with answers_path.open("a") as file:
        file.write('{"question_id": 5, "prom')  # and the crash cut a line short

    fail_second_batch, calls[:] = False, []
    assert main(pope_args(pope_data, saved_model_dir, "--batch-size", "4")) == 0
    assert calls == [2]  # only the two unanswered questions were generated
    lines = answers_path.read_text().splitlines()
    assert lines[:4] == first_batch and len(lines) == 6
    records = [json.loads(line) for line in lines]
    assert sorted(r["question_id"] for r in records) == [1, 2, 3, 4, 5, 6]
    assert {r["model"] for r in records} == {str(saved_model_dir.resolve())}

    results = json.loads((pope_data / "out" / "pope_results.json").read_text())
    assert set(results["splits"]) == {"adversarial", "popular"}
    for split in results["splits"].values():  # per split: one TP, one FP, one FN, no TN
        assert (split["questions"], split["tp"], split["fp"], split["tn"], split["fn"]) == (3, 1, 1, 0, 1)
        assert split["accuracy"] == 1 / 3 and split["yes_ratio"] == 2 / 3
        # precision = recall = 1/2 and F1 = 1/2, up to the original's 1e-6 in each denominator
        for name in ("precision", "recall", "f1"):
            assert split[name] == pytest.approx(1 / 2, abs=1e-5), name
    assert results["mean"]["accuracy"] == 1 / 3 and results["mean"]["f1"] == pytest.approx(1 / 2, abs=1e-5)
    summary = json.loads((pope_data / "out" / "pope_summary.json").read_text())
    assert summary["results"][0]["metrics"] == results["mean"]
    assert "adversarial" in capsys.readouterr().out

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load the model again")

    monkeypatch.setattr(tinyllava_hf.evaluation.runner, "load_model", no_model)
    assert main(pope_args(pope_data, saved_model_dir, "--strict")) == 0  # rescoring only
    strict = json.loads((pope_data / "out" / "pope_results.json").read_text())
    assert strict["mode"] == "strict"
    for split in strict["splits"].values():
        assert (split["tp"], split["fp"], split["tn"], split["fn"], split["other"]) == (0, 1, 0, 0, 2)
        assert split["accuracy"] == 0 and split["precision"] == 0 and split["yes_ratio"] == 1 / 3


def test_summary_feeds_the_model_card(pope_data, saved_model_dir, tmp_path):
    from tinyllava_hf.model_cards.cli import card_main

    assert main(pope_args(pope_data, saved_model_dir, "--batch-size", "6")) == 0
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    for file in saved_model_dir.iterdir():
        (card_dir / file.name).write_bytes(file.read_bytes())
    card_main([str(card_dir), "--eval-results", str(pope_data / "out" / "pope_summary.json")])
    merged = json.loads((card_dir / "eval_results.json").read_text())
    assert merged == json.loads((pope_data / "out" / "pope_summary.json").read_text())
    assert "POPE" in (card_dir / "README.md").read_text()


def test_missing_image_fails_before_loading_the_model(pope_data, saved_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(tinyllava_hf.evaluation.runner, "load_model", pytest.fail)
    (pope_data / "images" / "2.jpg").unlink()
    assert main(pope_args(pope_data, saved_model_dir)) == 2
    assert "2 image(s) not found" in capsys.readouterr().err and not (pope_data / "out" / "pope_answers.jsonl").exists()


def test_unreadable_image_is_named_with_its_question(pope_data, saved_model_dir, capsys):
    (pope_data / "images" / "2.jpg").write_bytes(b"not a jpeg")  # exists, so the up-front check passes
    assert main(pope_args(pope_data, saved_model_dir)) == 2
    assert re.search(r"Question 3: Could not decode image file '.*2\.jpg'", capsys.readouterr().err)


def test_cuda_request_without_a_gpu_is_a_clear_error(pope_data, saved_model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(pope_args(pope_data, saved_model_dir, "--device", "cuda")) == 2
    assert "no CUDA GPU is available here; use --device cpu" in capsys.readouterr().err


def test_answers_of_another_model_are_not_mixed_in(pope_data, saved_model_dir, capsys):
    out = pope_data / "out"
    out.mkdir()
    (out / "pope_answers.jsonl").write_text(json.dumps({"question_id": 1, "prompt": "Is there a dog in the image?"
                                                        + SHORT, "text": "yes", "model": "other"}) + "\n")  # fmt: skip
    assert main(pope_args(pope_data, saved_model_dir)) == 2
    assert "Use another --output-dir, or --overwrite" in capsys.readouterr().err
    assert main(pope_args(pope_data, saved_model_dir, "--overwrite", "--batch-size", "6")) == 0
    assert len((out / "pope_answers.jsonl").read_text().splitlines()) == 6
