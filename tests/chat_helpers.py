"""A tiny checkpoint for the chat tests whose greedy answers are plain words that depend on the image, and the
reference answers from `model.generate` that the chat must reproduce."""

import re

import pytest
import torch
from conftest import TEXT_CONFIGS, build_tokenizer, make_image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor

MAX_NEW_TOKENS = 12
# Tokens that decode to a lowercase word piece: answers made of them have no markdown, HTML or odd whitespace that
# a browser would render differently from the raw text.
WORD_PIECE = re.compile(r" ?[a-z]{2,}")


def save_word_model(components_dir, path):
    """A random Phi + SigLIP TinyLLaVA that answers in words that depend on the image and the question.

    Its LLM and connector are initialised with large weights (std 1 instead of 0.02), so that the image and the
    question change the greedy answer, and its LM head's bias rules out every token but word pieces (the end of turn
    included, so each greedy answer is exactly MAX_NEW_TOKENS word pieces long).
    """
    tokenizer = build_tokenizer()
    config = TEXT_CONFIGS["phi"](len(tokenizer))
    config.initializer_range = 1.0
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    llm = path.parent / f"{path.name}-llm"
    AutoModelForCausalLM.from_config(config).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    parts = {"llm": str(llm), "vision_tower": str(components_dir / "siglip")}
    torch.manual_seed(0)
    model = TinyLlavaForConditionalGeneration.from_pretrained_components(**parts, initializer_range=1.0)
    processor = TinyLlavaProcessor.from_pretrained_components(**parts)
    vocabulary = processor.tokenizer
    allowed = torch.tensor([bool(WORD_PIECE.fullmatch(vocabulary.decode([i]))) for i in range(len(vocabulary))])
    with torch.no_grad():
        model.lm_head.bias[~allowed] = -1e4
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def user_turn(question, image=None):
    content = [{"type": "image", "image": image}] if image is not None else []
    return {"role": "user", "content": [*content, {"type": "text", "text": question}]}


def assistant_turn(answer):
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


@torch.no_grad()
def greedy_answer(model, processor, messages, max_new_tokens=MAX_NEW_TOKENS) -> str:
    """The README's inference recipe: `generate` with `do_sample=False`, new tokens decoded without specials."""
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@pytest.fixture(scope="session")
def word_model_dir(components_dir, tmp_path_factory):
    return save_word_model(components_dir, tmp_path_factory.mktemp("chat") / "word-model")


@pytest.fixture(scope="session")
def word_model(word_model_dir):
    """The saved word model and its processor, loaded back as a user would."""
    model = AutoModelForImageTextToText.from_pretrained(word_model_dir).eval()
    return model, AutoProcessor.from_pretrained(word_model_dir)


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory):
    """Two different images and a text file, as a user would attach them."""
    root = tmp_path_factory.mktemp("chat-files")
    for seed in (0, 1):
        make_image(64, 48, seed=seed).save(root / f"image{seed}.png")
    (root / "notes.txt").write_text("These are notes, not a picture.\n")
    return root
