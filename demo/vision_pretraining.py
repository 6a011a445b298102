"""Pretrains the demo's tiny vision tower on its synthetic world, as a real TinyLLaVA starts from a pretrained SigLIP.

Why: a tower left at random weights and trained only through the language model's loss learns colour and count, which
are global statistics of the image, but not shape or position within the demo's budget: the stage-1 caption loss
levels off at the entropy of the shape and position words, and the finetuned model answers those questions no better
than with a blank image. The same tower reaches high shape and position accuracy in a few hundred steps when it is
trained directly. So, like the tokenizer (trained on the demo's vocabulary), the tower is pretrained before TinyLLaVA
training starts: four linear classifiers (colour, shape, count, position), each reading the tower's patch features
through its own attention pooling, on freshly drawn scenes that are not among the demo's training or held-out images.
The classifiers are discarded; the tower is saved as an ordinary SigLIP model directory.
"""

import logging
import random

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import SiglipImageProcessorPil, SiglipVisionModel

from .synthetic import COLORS, NUMBER_WORDS, QUADRANTS, SHAPES, draw_scene, random_scene

logger = logging.getLogger(__name__)

# Class counts of the four probes, in this order; position is only defined for single-shape scenes.
CATEGORIES = {"color": len(COLORS), "shape": len(SHAPES), "count": len(NUMBER_WORDS), "position": len(QUADRANTS)}
IGNORE = -100


def labelled_scenes(num_images: int, image_size: int, processor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Freshly drawn scenes and their labels.

    Returns:
        `pixel_values` `(num_images, 3, image_size, image_size)` as the tower's processor prepares them, and `labels`
        `(num_images, 4)`: colour, shape, count - 1 and quadrant (-100 when there are several shapes).
    """
    rng = random.Random(f"vision-pretraining-{seed}")  # its own stream: never the demo's training or held-out images
    images, labels = [], []
    for _ in range(num_images):
        scene = random_scene(rng)
        images.append(draw_scene(scene, image_size, rng))
        position = scene.quadrants[0] if scene.count == 1 else IGNORE
        labels.append((list(COLORS).index(scene.color), SHAPES.index(scene.shape), scene.count - 1, position))
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    return pixel_values, torch.tensor(labels)


class ProbeHeads(nn.Module):
    """One attention-pooling query and one linear classifier per category, on patch features `(batch, tokens, dim)`."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(CATEGORIES), hidden_size) * hidden_size**-0.5)
        self.classifiers = nn.ModuleList(nn.Linear(hidden_size, classes) for classes in CATEGORIES.values())

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        weights = torch.softmax(torch.einsum("kd,bnd->bkn", self.queries, features) * features.shape[-1] ** -0.5, -1)
        pooled = torch.einsum("bkn,bnd->bkd", weights, features)
        return [classifier(pooled[:, index]) for index, classifier in enumerate(self.classifiers)]


def probe_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum of the categories' cross-entropies; a category without any label in the batch contributes nothing."""
    losses = [
        nn.functional.cross_entropy(category_logits, labels[:, index], ignore_index=IGNORE)
        for index, category_logits in enumerate(logits)
        if (labels[:, index] != IGNORE).any()
    ]
    return torch.stack(losses).sum()


@torch.no_grad()
def probe_accuracy(tower, heads, pixel_values, labels, feature_layer: int) -> dict[str, float]:
    """Held-out accuracy per category of the tower + heads."""
    logits = heads(tower(pixel_values, output_hidden_states=True).hidden_states[feature_layer])
    accuracy = {}
    for index, (name, category_logits) in enumerate(zip(CATEGORIES, logits)):
        known = labels[:, index] != IGNORE
        accuracy[name] = (category_logits.argmax(-1)[known] == labels[known, index]).float().mean().item()
    return accuracy


def pretrain_vision_tower(
    tower: SiglipVisionModel,
    processor: SiglipImageProcessorPil,
    image_size: int,
    steps: int,
    feature_layer: int = -1,
    num_images: int = 2000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Trains `tower` in place on labelled synthetic scenes (see the module docstring).

    Args:
        tower: the randomly initialised vision tower.
        processor: its image processor.
        image_size: side of the drawn scenes in pixels.
        steps: optimizer steps (AdamW, constant learning rate).
        feature_layer: the hidden state the probes read, the one TinyLLaVA's connector will read.
        num_images: training scenes drawn once; 200 more are held out to report the accuracy.

    Returns:
        The held-out probe accuracy per category after training.
    """
    torch.manual_seed(seed)
    pixel_values, labels = labelled_scenes(num_images + 200, image_size, processor, seed)
    train_pixels, train_labels = pixel_values[:num_images], labels[:num_images]
    heads = ProbeHeads(tower.config.hidden_size)
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    for _ in tqdm(range(steps), desc="Pretraining the vision tower", unit="step"):
        batch = torch.randint(0, num_images, (batch_size,), generator=generator)
        features = tower(train_pixels[batch], output_hidden_states=True).hidden_states[feature_layer]
        loss = probe_loss(heads(features), train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tower.eval()
    accuracy = probe_accuracy(tower, heads, pixel_values[num_images:], labels[num_images:], feature_layer)
    logger.info("Vision tower pretrained for %d steps; held-out probe accuracy: %s", steps, accuracy)
    return accuracy
