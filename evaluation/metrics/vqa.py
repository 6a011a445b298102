"""VQA accuracy with the EvalAI answer normalisation (VQAv2, TextVQA).

`normalize_vqa_answer` reproduces `EvalAIAnswerProcessor` (mmf, used by LLaVA and TinyLLaVA's `m4c_evaluator.py`
and `convert_vqav2_for_submission.py`) step by step, quirks included, so that scores match the published ones.
"""

import re
from collections.abc import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = ';/[]"{}()=+\\_-><@`,?!'  # removed or replaced by a space, one at a time, in this order
# `(?!<=\d)` was meant as a look-behind; as written it is a look-ahead for the text "<" "=" digit, which never blocks,
# so every period not followed by a digit is removed ("1.5" keeps its period, "a.m." loses both).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# The reference calls `PERIOD_STRIP.sub("", text, re.UNICODE)`, which passes re.UNICODE (32) as the *count*: at most
# 32 periods are removed.
PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    # A punctuation mark next to a space, or any digit-comma-digit group in the text, deletes the mark; otherwise it
    # becomes a space. The test looks at the input text, the replacements accumulate in `out`.
    has_number_comma = COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATIONS:
        if mark + " " in text or " " + mark in text or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, PERIOD_STRIP_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI's answer normalisation: lower case, punctuation, number words to digits, articles, contractions.

    Example: `"Two dogs."` -> `"2 dogs"`, `"The cat's toy"` -> `"cat 's toy"`, `"dont"` -> `"don't"`.
    """
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(answer))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The VQA soft accuracy of one prediction (m4c `TextVQAAccuracyEvaluator`, the VQAv2 metric).

    Each of the N human answers is left out in turn; the prediction scores `min(1, matches among the others / 3)`,
    and the N scores are averaged. With the usual 10 answers, 4 or more matches give 1.0, 3 give 0.9, 2 give 0.6
    and 1 gives 0.3.
    Prediction and answers are normalised with [`normalize_vqa_answer`] first.

    Args:
        prediction: the model's answer.
        gt_answers: the human answers (10 in VQAv2 and TextVQA).
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer.")
    prediction = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(answer) == prediction for answer in gt_answers]
    total = sum(matches)
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(matches)
