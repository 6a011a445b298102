"""Shared tiny fixtures: a trained-on-the-spot tokenizer, tiny LLM and vision checkpoints, and TinyLLaVA models
assembled from them through the public `from_pretrained_components` API. Nothing is downloaded."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GemmaConfig,
    LlamaConfig,
    PhiConfig,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
    StableLmConfig,
)

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.demo.tokenizer import build_tokenizer as build_bpe_tokenizer

# A tiny checkpoint written and run by the original TinyLLaVA Factory code, with its outputs (see its README).
# Shared session fixtures: the chat tests' word-answering checkpoint and test files (three modules), and the model
# trained to read colors that the deployment tests compare runtimes on (ONNX, GGUF).
pytest_plugins = ["chat_helpers", "trained_vlm"]

ORIGINAL_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "original_qwen2_siglip"

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|im_end|>", "<eos>", "<pad>"]
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is shown in the image? ASSISTANT: A red square on a blue background.",
    "USER: What color is the square? ASSISTANT: The square is red.",
    "Describe the picture. How many circles are there? Is there a green triangle on the left?",
    "one two three four five six seven eight nine ten yes no left right top bottom",
    "red green blue yellow white black circle square triangle shape color position count",
]

TEXT_CONFIGS = {
    "llama": lambda vocab: LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    "phi": lambda vocab: PhiConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    ),
    "qwen2": lambda vocab: Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    ),
    "stablelm": lambda vocab: StableLmConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    "gemma": lambda vocab: GemmaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    ),
}
LLM_FAMILIES = tuple(TEXT_CONFIGS)

_VISION_KWARGS = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "patch_size": 8,
}
VISION_TOWERS = {
    "siglip": (
        lambda: SiglipVisionModel(SiglipVisionConfig(image_size=32, **_VISION_KWARGS)),
        lambda: SiglipImageProcessorPil(size={"height": 32, "width": 32}),
    ),
    "clip": (
        lambda: CLIPVisionModel(CLIPVisionConfig(image_size=32, **_VISION_KWARGS)),
        lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ),
    "dinov2": (
        lambda: Dinov2Model(Dinov2Config(image_size=32, **_VISION_KWARGS)),
        lambda: BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ),
}


def build_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with the end-of-turn tokens of every template."""
    return build_bpe_tokenizer(CORPUS, special_tokens=SPECIAL_TOKENS, vocab_size=400, model_max_length=256)


@pytest.fixture(scope="session")
def original_fixture() -> Path:
    """The original-code fixture directory; a test that compares against the original fails (never skips) without it."""
    if not (ORIGINAL_FIXTURE / "reference.pt").is_file():
        pytest.fail(f"original-code fixture missing: {ORIGINAL_FIXTURE} (it is part of the repository)")
    return ORIGINAL_FIXTURE


@pytest.fixture(scope="session")
def components_dir(tmp_path_factory):
    """Saved tiny LLMs (one per family) and vision towers (one per kind), as from_pretrained_components reads them."""
    root = tmp_path_factory.mktemp("components")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    for family, make_config in TEXT_CONFIGS.items():
        config = make_config(len(tokenizer))
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        AutoModelForCausalLM.from_config(config).save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
    for kind, (make_model, make_image_processor) in VISION_TOWERS.items():
        make_model().save_pretrained(root / kind)
        make_image_processor().save_pretrained(root / kind)
    return root


def assemble(components_dir, family="llama", vision="siglip", chat_template=None, **config_kwargs):
    """A tiny (model, processor) pair made through the public from_pretrained_components API."""
    torch.manual_seed(0)
    model = TinyLlavaForConditionalGeneration.from_pretrained_components(
        llm=str(components_dir / family), vision_tower=str(components_dir / vision), **config_kwargs
    )
    processor = TinyLlavaProcessor.from_pretrained_components(
        llm=str(components_dir / family),
        vision_tower=str(components_dir / vision),
        chat_template=chat_template,
        **config_kwargs,
    )
    return model, processor


@pytest.fixture(scope="session")
def tiny_model_and_processor(components_dir):
    return assemble(components_dir, "qwen2", "siglip")


def save_model_dir(model, processor, path):
    """Saves a model and its processor into one checkpoint directory, as a user's `save_pretrained` calls do."""
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def saved_model_dir(tiny_model_and_processor, tmp_path_factory):
    return save_model_dir(*tiny_model_and_processor, tmp_path_factory.mktemp("saved") / "tiny-tinyllava")


@pytest.fixture(scope="session")
def varied_model_and_processor(components_dir):
    """A tiny model with large random weights (std 1), so that its greedy answers depend on the image and the question.

    The default initialisation's outputs barely depend on the input: every prompt gets the same answer, and a test
    comparing two answers would prove nothing.
    """
    model, processor = assemble(components_dir, "llama", "siglip")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval(), processor


@pytest.fixture(scope="session")
def varied_model_dir(varied_model_and_processor, tmp_path_factory):
    return save_model_dir(*varied_model_and_processor, tmp_path_factory.mktemp("varied") / "model")


def make_image(width=40, height=24, seed=0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def chat(question="What is shown in the image?", image=None, answer=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
