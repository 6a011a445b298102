"""A synthetic image-QA world of coloured shapes, small enough to learn in minutes on a CPU.

Every scene holds one to four copies of the same shape in the same colour, each in its own quadrant of the image. That
makes every question unambiguous and every answer a short phrase (`"red"`, `"triangle"`, `"three"`, `"top left"`),
so accuracy is an exact string match, and a model that ignores the image can do no better than the answer prior.
"""

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("one", "two", "three", "four")
BACKGROUND = (235, 235, 235)
# Shapes are drawn this many times larger and then downsampled, so their edges are anti-aliased.
SUPERSAMPLE = 4

QUESTIONS = {
    "color": ("What color are the shapes?", "Which color do you see?"),
    "shape": ("What shape is shown?", "Which shape is in the image?"),
    "count": ("How many shapes are there?", "Count the shapes."),
    "position": ("Where is the shape?", "In which corner is the shape?"),
}
QUESTION_TYPES = tuple(QUESTIONS)
CAPTION_PROMPT = "Describe the image briefly."


@dataclass(frozen=True)
class Scene:
    """What an image shows: `count` copies of `shape` in `color`, in the quadrants listed in `quadrants`."""

    color: str
    shape: str
    quadrants: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.quadrants)

    def answer(self, question_type: str) -> str:
        """The exact expected answer to a question of `question_type` about this scene."""
        if question_type == "color":
            return self.color
        if question_type == "shape":
            return self.shape
        if question_type == "count":
            return NUMBER_WORDS[self.count - 1]
        if question_type == "position":
            if self.count != 1:
                raise ValueError(f"A position question needs a single shape, the scene has {self.count}.")
            return QUADRANTS[self.quadrants[0]]
        raise ValueError(f"Unknown question type {question_type!r}; expected one of {QUESTION_TYPES}.")

    def caption(self) -> str:
        """A one-sentence description used for pretraining, e.g. `"two blue circles."`."""
        noun = self.shape if self.count == 1 else self.shape + "s"
        text = f"{NUMBER_WORDS[self.count - 1]} {self.color} {noun}"
        if self.count == 1:
            text += f" at the {QUADRANTS[self.quadrants[0]]}"
        return text + "."


def random_scene(rng: random.Random) -> Scene:
    """A scene with a uniformly drawn colour, shape and count; half of all scenes hold a single shape, so that
    position questions (which need one) are as common as the other kinds."""
    count = 1 if rng.random() < 0.5 else rng.randint(2, len(QUADRANTS))
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), tuple(sorted(rng.sample(range(len(QUADRANTS)), count))))


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Renders `scene` as a `size` x `size` RGB image; shape sizes and offsets are jittered inside each quadrant."""
    canvas = size * SUPERSAMPLE
    half = canvas // 2
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for quadrant in scene.quadrants:
        extent = int(half * rng.uniform(0.55, 0.8))
        left = (quadrant % 2) * half + rng.randint(0, half - extent)
        top = (quadrant // 2) * half + rng.randint(0, half - extent)
        box = (left, top, left + extent, top + extent)
        fill = COLORS[scene.color]
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(left + extent / 2, top), (left, top + extent), (left + extent, top + extent)], fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def blank_image(size: int) -> Image.Image:
    """An empty scene: the background alone, the 'no information' input of the blank-image baseline."""
    return Image.new("RGB", (size, size), BACKGROUND)


def question_types_for(scene: Scene) -> tuple[str, ...]:
    """The kinds of questions that have a unique answer for `scene` (position only for a single shape)."""
    return QUESTION_TYPES if scene.count == 1 else tuple(kind for kind in QUESTION_TYPES if kind != "position")


def ask(question_type: str, rng: random.Random) -> str:
    """One phrasing of a question of `question_type`."""
    return rng.choice(QUESTIONS[question_type])


def vocabulary_corpus() -> list[str]:
    """Every word the synthetic data can contain, as sentences to train a tokenizer on."""
    words = [*COLORS, *SHAPES, *(shape + "s" for shape in SHAPES), *QUADRANTS, *NUMBER_WORDS, "at the"]
    questions = [question for phrasings in QUESTIONS.values() for question in phrasings]
    # Answers follow "ASSISTANT:" after a space, captions start a line: each word is needed in both forms.
    return [" ".join(words), " " + " ".join(words), CAPTION_PROMPT, *questions]
