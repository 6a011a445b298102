"""Every task's file formats and scoring through `tinyllava-eval`, from answers already on disk (no model needed:
a run whose questions are all answered only scores), plus the resumable answers file."""

import json

import pytest

from tinyllava_hf.evaluation.answers import AnswerFile
from tinyllava_hf.evaluation.cli import main
from tinyllava_hf.evaluation.errors import EvaluationError
from tinyllava_hf.evaluation.question import Question

MODEL = "no-model-needed"  # every question is answered already, so the model is never loaded
SHORT = "\nAnswer the question using a single word or phrase."


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_answers(output_dir, task, rows):
    """rows: (question_id, prompt, answer text)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    records = [{"question_id": qid, "prompt": prompt, "text": text, "model": MODEL} for qid, prompt, text in rows]
    write_jsonl(output_dir / f"{task}_answers.jsonl", records)


def read(path):
    return json.loads(path.read_text())


def run(task, tmp_path, *args):
    return main([task, "--model", MODEL, "--output-dir", str(tmp_path / "out"), *map(str, args)])


@pytest.fixture
def pope_files(tmp_path):
    answers = ["Yes", "No.", "not sure", "", "Yes.", "NO", "no, there is not", "There is no dog."]
    labels = ["yes", "no", "yes", "no", "yes", "yes", "no", "yes"]
    questions, annotations, rows = [], [], []
    for index, (answer, label) in enumerate(zip(answers, labels)):
        text = f"Is there a thing {index} in the image?"
        questions.append({"question_id": 100 + index, "image": f"{index}.jpg", "text": text + SHORT,
                          "category": "random"})  # fmt: skip
        annotations.append({"question_id": index + 1, "image": f"{index}.jpg", "text": text, "label": label})
        rows.append((100 + index, text + SHORT, answer))
    (tmp_path / "ann").mkdir()
    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "ann" / "coco_pope_random.json", annotations)
    write_answers(tmp_path / "out", "pope", rows)
    return ["--question-file", tmp_path / "q.jsonl", "--annotation-dir", tmp_path / "ann", "--image-folder", tmp_path]


def test_pope_scores_answers_on_disk_with_both_protocols(tmp_path, pope_files, capsys):
    assert run("pope", tmp_path, *pope_files) == 0
    results = read(tmp_path / "out" / "pope_results.json")
    assert results["mode"] == "original"
    split = results["splits"]["random"]
    assert (split["tp"], split["fp"], split["tn"], split["fn"], split["questions"]) == (3, 1, 2, 2, 8)
    assert split["accuracy"] == 5 / 8 and split["yes_ratio"] == 0.5
    assert results["mean"]["f1"] == pytest.approx(2 / 3, abs=1e-6)  # the mean over the one split present
    summary = read(tmp_path / "out" / "pope_summary.json")
    assert summary["results"][0] | {"metrics": None} == {
        "task": "pope", "dataset_name": "POPE", "dataset_type": "lmms-lab/POPE", "split": "test", "metrics": None,
    }  # fmt: skip
    assert summary["results"][0]["metrics"] == results["mean"]
    table = capsys.readouterr().out
    assert "random" in table and "62.50" in table and "mean" in table

    assert run("pope", tmp_path, *pope_files, "--strict") == 0
    strict = read(tmp_path / "out" / "pope_results.json")
    assert strict["mode"] == "strict"
    assert strict["splits"]["random"]["accuracy"] == 1 / 8 and strict["splits"]["random"]["other"] == 6


def test_pope_refuses_misaligned_annotations(tmp_path, pope_files, capsys):
    path = tmp_path / "ann" / "coco_pope_random.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, records[::-1])
    assert run("pope", tmp_path, *pope_files) == 2
    assert "not in the same order" in capsys.readouterr().err
    write_jsonl(path, records[:-1])
    assert run("pope", tmp_path, *pope_files) == 2
    assert "has 7 labels but the question file has 8 questions with category 'random'" in capsys.readouterr().err


def test_scienceqa_img_accuracy(tmp_path):
    suffix = "\nAnswer with the option's letter from the given choices directly."
    questions = [
        {"id": "1", "image": "1.png", "conversations": [{"from": "human", "value": "<image>\nQ one?\nOptions: (A) x (B) y"}]},
        {"id": "2", "image": "2.png", "conversations": [{"from": "human", "value": "Q two?\n<image>"}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Q three?"}]},
    ]  # fmt: skip
    problems = {"1": {"choices": ["x", "y"], "answer": 0}, "2": {"choices": ["x", "y"], "answer": 0},
                "3": {"choices": ["x", "y", "z"], "answer": 1}}  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    write_answers(tmp_path / "out", "scienceqa", [
        ("1", "Q one?\nOptions: (A) x (B) y" + suffix, "A"),
        ("2", "Q two?" + suffix, "The answer is B."),
        ("3", "Q three?" + suffix, "B"),
    ])  # fmt: skip
    args = ["--question-file", tmp_path / "q.json", "--annotation-file", tmp_path / "problems.json"]
    assert run("scienceqa", tmp_path, *args, "--image-folder", tmp_path) == 0
    results = read(tmp_path / "out" / "scienceqa_results.json")
    assert results["accuracy"] == 0.5 and results["accuracy_all"] == pytest.approx(2 / 3)
    assert (results["questions"], results["questions_with_image"], results["unparsed_answers"]) == (3, 2, 0)
    entry = read(tmp_path / "out" / "scienceqa_summary.json")["results"][0]
    assert (entry["dataset_name"], entry["metrics"]["accuracy"]) == ("ScienceQA-IMG", 0.5)


def test_textvqa_matches_on_image_and_question_like_the_original(tmp_path):
    # LLaVA's TextVQA file uses the image id as question_id, so two questions share one id.
    prompts = ["what is written?\nReference OCR token: STOP" + SHORT, "what color is the sign?" + SHORT]
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": "img1", "image": "img1.jpg", "text": p} for p in prompts])
    annotations = {"data": [
        {"question_id": 5, "image_id": "img1", "question": "What is written?", "answers": ["stop"] * 10},
        {"question_id": 6, "image_id": "img1", "question": "What color is the sign?",
         "answers": ["red"] * 2 + ["crimson"] * 8},
    ]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    write_answers(tmp_path / "out", "textvqa", [("img1", prompts[0], "Stop."), ("img1", prompts[1], "Red")])
    args = ["--question-file", tmp_path / "q.jsonl", "--annotation-file", tmp_path / "ann.json"]
    assert run("textvqa", tmp_path, *args, "--image-folder", tmp_path) == 0
    assert read(tmp_path / "out" / "textvqa_results.json") == {"accuracy": pytest.approx(0.8), "questions": 2}


def test_vqav2_submission_and_optional_local_accuracy(tmp_path):
    write_jsonl(
        tmp_path / "q.jsonl", [{"question_id": i, "image": f"{i}.jpg", "text": f"q{i}?" + SHORT} for i in (1, 2)]
    )
    write_jsonl(tmp_path / "all.jsonl", [{"question_id": i} for i in (1, 2, 3)])
    write_answers(tmp_path / "out", "vqav2", [(1, "q1?" + SHORT, "Two."), (2, "q2?" + SHORT, "The dog")])
    args = ["--question-file", tmp_path / "q.jsonl", "--image-folder", tmp_path]
    assert run("vqav2", tmp_path, *args, "--submission-question-file", tmp_path / "all.jsonl") == 0
    submission = read(tmp_path / "out" / "vqav2_submission.json")
    assert submission == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "dog"},
                          {"question_id": 3, "answer": ""}]  # fmt: skip
    assert read(tmp_path / "out" / "vqav2_summary.json") == {"results": []}  # test-dev is scored by EvalAI

    annotations = {"annotations": [
        {"question_id": 1, "answers": [{"answer": "2"}] * 10},
        {"question_id": 2, "answers": [{"answer": "cat"}] * 9 + [{"answer": "dog"}]},
    ]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    assert run("vqav2", tmp_path, *args, "--annotation-file", tmp_path / "ann.json") == 0
    summary = read(tmp_path / "out" / "vqav2_summary.json")
    assert summary["results"][0]["metrics"] == {"accuracy": pytest.approx((1.0 + 0.3) / 2)}


def test_gqa_exact_match_and_prediction_file(tmp_path):
    questions = [{"question_id": q, "image": "n1.jpg", "text": f"{q}?" + SHORT} for q in ("201", "202", "203")]
    write_jsonl(tmp_path / "q.jsonl", questions)
    annotations = {"201": {"answer": "yes", "types": {"structural": "verify"}},
                   "202": {"answer": "table", "types": {"structural": "query"}},
                   "203": {"answer": "left", "types": {"structural": "query"}}}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    write_answers(tmp_path / "out", "gqa", [("201", "201?" + SHORT, "Yes."), ("202", "202?" + SHORT, "Table"),
                                            ("203", "203?" + SHORT, "right")])  # fmt: skip
    args = ["--question-file", tmp_path / "q.jsonl", "--annotation-file", tmp_path / "ann.json"]
    assert run("gqa", tmp_path, *args, "--image-folder", tmp_path) == 0
    metrics = read(tmp_path / "out" / "gqa_summary.json")["results"][0]["metrics"]
    assert metrics == {"accuracy": pytest.approx(2 / 3), "accuracy_binary": 1.0, "accuracy_open": 0.5}
    assert read(tmp_path / "out" / "gqa_predictions.json")[1] == {"questionId": "202", "prediction": "table"}


def test_mme_reads_both_answer_file_layouts(tmp_path):
    root = tmp_path / "MME"
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "1.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                               "Is there a cat? Please answer yes or no.\tNo\n")  # fmt: skip
    (root / "artwork" / "images").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN").mkdir()
    # MME has a few questions with a double space before the instruction; the original retries with it.
    (root / "artwork" / "questions_answers_YN" / "2.txt").write_text(
        "Is it by Monet?  Please answer yes or no.\tYes\nIs it by Manet? Please answer yes or no.\tNo\n"
    )
    rows = [("existence/1.jpg", "existence/1.jpg", "Is there a dog? Please answer yes or no.", "Yes"),
            ("existence/1.jpg", "existence/1.jpg", "Is there a cat? Please answer yes or no.", "No"),
            ("artwork/2.jpg", "artwork/images/2.jpg", "Is it by Monet?" + SHORT, "Yes"),
            ("artwork/2.jpg", "artwork/images/2.jpg", "Is it by Manet? Please answer yes or no.", "Yes")]  # fmt: skip
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": q, "image": i, "text": t} for q, i, t, _ in rows])
    write_answers(tmp_path / "out", "mme", [(q, t, a) for q, _, t, a in rows])
    assert run("mme", tmp_path, "--question-file", tmp_path / "q.jsonl", "--image-folder", root) == 0
    results = read(tmp_path / "out" / "mme_results.json")
    assert results["categories"]["existence"]["score"] == pytest.approx(200.0)
    assert results["categories"]["artwork"]["score"] == pytest.approx(50.0)  # accuracy 1/2, acc+ 0
    assert read(tmp_path / "out" / "mme_summary.json")["results"][0]["metrics"] == {
        "perception": pytest.approx(250.0), "cognition": 0.0}  # fmt: skip


def test_question_file_errors_name_the_file_and_line(tmp_path, capsys):
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.jpg", "text": "x"}, {"question_id": 2}])
    assert run("gqa", tmp_path, "--question-file", tmp_path / "q.jsonl", "--annotation-file", tmp_path / "a.json",
               "--image-folder", tmp_path) == 2  # fmt: skip
    assert f"{tmp_path / 'q.jsonl'}, question 2: missing key(s) ['image', 'text']" in capsys.readouterr().err
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.jpg", "text": "x"}] * 2)
    assert run("gqa", tmp_path, "--question-file", tmp_path / "q.jsonl", "--annotation-file", tmp_path / "a.json",
               "--image-folder", tmp_path) == 2  # fmt: skip
    assert "1 question(s) appear more than once with the same id and text" in capsys.readouterr().err


def test_answer_file_resumes_after_a_cut_off_line(tmp_path):
    answers = AnswerFile(tmp_path / "a.jsonl", model="m")
    first, second = Question(1, "q1"), Question(1, "q2")  # same id, different text: two questions
    answers.append([first], ["yes"])
    with answers.path.open("a") as file:
        file.write('{"question_id": 1, "prompt": "q2", "te')  # killed while writing
    assert answers.load() == {(1, "q1"): "yes"}
    AnswerFile(answers.path, model="m").append([second], ["no"])
    assert answers.load() == {(1, "q1"): "yes", (1, "q2"): "no"}
    assert len(answers.path.read_text().splitlines()) == 2


def test_answer_file_refuses_another_models_answers_and_corrupt_lines(tmp_path):
    AnswerFile(tmp_path / "a.jsonl", model="model-a").append([Question(1, "q")], ["yes"])
    with pytest.raises(EvaluationError, match="answer by model 'model-a', but this run evaluates 'model-b'"):
        AnswerFile(tmp_path / "a.jsonl", model="model-b").load()
    (tmp_path / "b.jsonl").write_text('not json\n{"question_id": 1, "prompt": "q", "text": "x"}\n')
    with pytest.raises(EvaluationError, match="b.jsonl, line 1: not an answer record"):
        AnswerFile(tmp_path / "b.jsonl", model="m").load()


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--max-new-tokens", "0"), ("--num-workers", "-1")])
def test_bad_numeric_options_are_rejected(tmp_path, pope_files, option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("pope", tmp_path, *pope_files, option, value)
    assert exit_info.value.code == 2 and option in capsys.readouterr().err
