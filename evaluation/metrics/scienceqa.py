"""ScienceQA multiple-choice parsing (LLaVA / TinyLLaVA `eval_science_qa.py`)."""

import re

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_scienceqa_choice(prediction: str, num_choices: int) -> int | None:
    """The index of the chosen option, or None when the answer cannot be parsed (scored as wrong, no random guess).

    In order: the answer is a bare letter `A`-`E`; it starts with a letter followed by ". " (`"B. cat"`); it
    contains exactly one "The answer is X." A letter beyond the question's choices is also None.

    Args:
        prediction: the model's answer, stripped.
        num_choices: how many options the question has.
    """
    if prediction in OPTIONS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in OPTIONS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        found = _ANSWER_IS.findall(prediction)
        letter = found[0] if len(found) == 1 else None
    if letter is None or letter not in OPTIONS[:num_choices]:
        return None
    return OPTIONS.index(letter)
