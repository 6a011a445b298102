"""The unit of work: one question about (at most) one image."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One benchmark question, as the model is asked it.

    Attributes:
        question_id: the benchmark's id. Not always unique: MME and LLaVA's TextVQA file use the image as the id.
        text: the user text after the image, including any instruction suffix from the question file.
        image: the image path relative to the image folder, or None for a text-only question.
        category: the question file's `category` (the POPE split, the MME subtask), when it has one.
    """

    question_id: int | str
    text: str
    image: str | None = None
    category: str | None = None

    @property
    def key(self) -> tuple[int | str, str]:
        """Identifies the question in the answers file: its id together with its text."""
        return (self.question_id, self.text)
