"""The benchmark metrics against hand-computed values, including the parsing edge cases users hit."""

import pytest

from tinyllava_hf.evaluation.metrics import (
    gqa_accuracy,
    gqa_prediction,
    mme_scores,
    normalize_vqa_answer,
    parse_mme_answer,
    parse_pope_answer,
    parse_pope_answer_strict,
    parse_scienceqa_choice,
    pope_metrics,
    pope_metrics_strict,
    vqa_accuracy,
)

ANSWERS = ["Yes", "No.", "not sure", "", "Yes.", "NO", "no, there is not", "There is no dog."]
LABELS = ["yes", "no", "yes", "no", "yes", "yes", "no", "yes"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Yes", "yes"),
        ("Yes.", "yes"),
        ("No.", "no"),
        ("No", "no"),
        ("not sure", "no"),  # "not" is one of the words
        ("", "yes"),  # the original counts an empty answer as yes
        ("NO", "yes"),  # case-sensitive word list
        ("Nope", "yes"),
        ("No,there is none", "yes"),  # the comma is removed, leaving the single word "Nothere"
        ("Yes. There is no dog.", "yes"),  # only the first sentence counts
        ("There is no dog.", "no"),
    ],
)
def test_pope_original_parsing(answer, expected):
    assert parse_pope_answer(answer) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [("Yes", "yes"), (" yes \n", "yes"), ("NO", "no"), ("Yes.", "other"), ("", "other"), ("not sure", "other")],
)
def test_pope_strict_parsing(answer, expected):
    assert parse_pope_answer_strict(answer) == expected


def test_pope_metrics_original_protocol():
    predictions = [parse_pope_answer(answer) for answer in ANSWERS]
    assert predictions == ["yes", "no", "no", "yes", "yes", "yes", "no", "no"]
    metrics = pope_metrics(predictions, LABELS)
    # TP = 3 (answers 0, 4, 5), FP = 1 (3), TN = 2 (1, 6), FN = 2 (2, 7).
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 1, 2, 2)
    assert metrics["accuracy"] == 5 / 8
    assert metrics["precision"] == pytest.approx(3 / 4, abs=1e-6)
    assert metrics["recall"] == pytest.approx(3 / 5, abs=1e-6)
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35, abs=1e-6)
    assert metrics["yes_ratio"] == 4 / 8
    # The original's epsilon makes precision and F1 slightly smaller than the exact fractions.
    assert metrics["precision"] < 3 / 4 and metrics["f1"] < 2 / 3


def test_pope_metrics_no_positive_predictions_give_zero_not_an_error():
    metrics = pope_metrics(["no", "no"], ["yes", "no"])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["yes_ratio"]) == (0, 0, 0, 0)
    assert metrics["accuracy"] == 0.5


def test_pope_metrics_strict_matches_lmms_eval_aggregation():
    predictions = [parse_pope_answer_strict(answer) for answer in ANSWERS]
    assert predictions == ["yes", "other", "other", "other", "other", "no", "other", "other"]
    metrics = pope_metrics_strict(predictions, LABELS)
    # Only answer 0 matches its label. "other" is wrong for accuracy and counts in none of TP/FP/FN:
    # TP = 1 (answer 0), FN = 1 (answer 5, "NO" on a yes), FP = 0.
    assert metrics["accuracy"] == 1 / 8
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == 0.5
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == 1 / 8
    assert metrics["other"] == 6


def test_pope_metrics_reject_bad_labels_and_mismatched_lengths():
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_metrics(["yes"], ["Yes"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="No POPE answers"):
        pope_metrics_strict([], [])


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two dogs.", "2 dogs"),
        ("The cat's toy", "cat 's toy"),
        ("dont", "don't"),
        ("Yes.", "yes"),
        ("yes!", "yes"),
        ("1.5", "1.5"),  # a period before a digit stays
        ("a.m.", "am"),
        ("left-hand", "left hand"),  # punctuation without a neighbouring space becomes a space
        ("hello, world", "hello world"),
        ("(a) red", "red"),  # "(" next to nothing -> space, then the article "a" is dropped
        ("  none \n", "0"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(answer, expected):
    assert normalize_vqa_answer(answer) == expected


def test_normalize_vqa_answer_removes_at_most_32_periods():
    # The reference passes re.UNICODE (= 32) as the `count` argument of re.sub.
    assert normalize_vqa_answer("." * 40 + "x") == "." * 8 + "x"


@pytest.mark.parametrize(
    "prediction, matches, expected",
    [("two", 4, 1.0), ("Two.", 3, 0.9), ("2", 2, 0.6), ("two", 1, 0.3), ("three", 0, 0.0), ("", 0, 0.0)],
)
def test_vqa_accuracy_leave_one_out(prediction, matches, expected):
    gt_answers = ["2"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy(prediction, gt_answers) == pytest.approx(expected)


def test_vqa_accuracy_empty_answer_matches_empty_ground_truth_only():
    assert vqa_accuracy("", [""] * 3 + ["x"] * 7) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


@pytest.mark.parametrize(
    "prediction, num_choices, expected",
    [
        ("A", 2, 0),
        ("B. a cat", 3, 1),
        ("C. ", 3, 2),
        ("The answer is C.", 3, 2),
        ("The answer is A. The answer is B.", 3, None),  # "The answer is X." must occur exactly once
        ("E", 3, None),  # beyond the question's options
        ("b", 3, None),  # lower case is not an option
        ("A.", 3, None),  # too short for "X. " and not a bare letter
        ("", 3, None),
    ],
)
def test_parse_scienceqa_choice(prediction, num_choices, expected):
    assert parse_scienceqa_choice(prediction, num_choices) == expected


def test_gqa_prediction_and_accuracy():
    assert gqa_prediction("Yes.") == "yes"
    assert gqa_prediction("Left...") == "left"
    assert gqa_prediction("") == ""
    predictions = [gqa_prediction(a) for a in ["Yes.", "table", "No", ""]]
    result = gqa_accuracy(predictions, ["yes", "chair", "no", "red"], ["verify", "query", "logical", "query"])
    assert result == {"accuracy": 0.5, "accuracy_binary": 1.0, "accuracy_open": 0.0}
    assert gqa_accuracy(["a"], ["a"], [None]) == {"accuracy": 1.0}


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes, it is.", "yes"),
        ("No, it is not.", "no"),
        ("not sure", "no"),  # "no" within the first 4 characters
        ("", "other"),
        ("I don't know", "other"),
        ("The answer is yes", "other"),  # only the first 4 characters are searched
    ],
)
def test_parse_mme_answer(answer, expected):
    assert parse_mme_answer(answer) == expected


def test_mme_scores_accuracy_acc_plus_and_totals():
    items = [
        ("existence", "1.jpg", "yes", "yes"),
        ("existence", "1.jpg", "no", "no"),  # image 1: both right
        ("existence", "2.jpg", "yes", "yes"),
        ("existence", "2.jpg", "other", "no"),  # image 2: one right
        ("code_reasoning", "3.png", "no", "yes"),
        ("code_reasoning", "3.png", "yes", "no"),
    ]
    scores = mme_scores(items)
    existence = scores["categories"]["existence"]
    assert (existence["accuracy"], existence["accuracy_plus"], existence["other"]) == (0.75, 0.5, 1)
    assert existence["score"] == pytest.approx(125.0)
    assert scores["categories"]["code_reasoning"]["score"] == 0.0
    assert scores["perception"] == pytest.approx(125.0) and scores["cognition"] == 0.0
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        mme_scores([("count", "4.jpg", "yes", "maybe")])
