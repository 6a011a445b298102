"""Answer masks under the chat templates of real instruct LLMs (tests/fixtures/chat_templates, sources in its README):
the collator must supervise exactly each answer and the end-of-turn token after it, written out by hand below, and
refuse templates it cannot split into turns."""

from pathlib import Path

import pytest
import torch
from conftest import make_image
from transformers import SiglipImageProcessorPil
from transformers.utils.chat_template_utils import render_jinja_template

from modeling_tinyllava import TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import CHAT_TEMPLATES, resolve_chat_template, with_image_parts
from tinyllava_hf.demo.tokenizer import build_tokenizer
from tinyllava_hf.training.answer_mask import flatten_content
from tinyllava_hf.training.collator import IGNORE_INDEX, TinyLlavaCollator
from tinyllava_hf.training.data import normalize_messages, text_to_parts

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
NUM_IMAGE_TOKENS = 4
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
]  # fmt: skip
CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Be brief.",
    "system user assistant model What is shown? Two squares. And here? A red circle. Which is red? The left one.",
    "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
]
# Per template: (bos, eos) as its model's tokenizer sets them (the templates print them).
FAMILIES = {
    "smollm2_instruct": ("<|im_start|>", "<|im_end|>"),
    "qwen2_5_instruct": (None, "<|im_end|>"),
    "llama3_2_instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "phi3_mini_instruct": ("<s>", "<|endoftext|>"),
    "gemma2_it": ("<bos>", "<eos>"),
    "zephyr": ("<s>", "</s>"),
}
# What each template closes an assistant turn with, worked out from its text: the supervised end-of-turn token.
END_OF_TURN = {
    "smollm2_instruct": "<|im_end|>",
    "qwen2_5_instruct": "<|im_end|>",
    "llama3_2_instruct": "<|eot_id|>",
    "phi3_mini_instruct": "<|end|>",
    "gemma2_it": "<end_of_turn>",
    "zephyr": "</s>",
}

TWO_TURNS_THREE_IMAGES = ("<image>\n<image>\nWhat is shown?", "Two squares.", "<image>\nAnd here?", "A red circle.")


def make_tokenizer(eos: str, bos: str | None = None):
    """A byte-level BPE tokenizer with the templates' special tokens, `<image>`, and the family's bos / eos."""
    tokenizer = add_image_token(build_tokenizer(CORPUS, special_tokens=SPECIAL_TOKENS, vocab_size=600), "qwen2")
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    return tokenizer


def make_processor(name: str) -> TinyLlavaProcessor:
    tokenizer = make_tokenizer(*reversed(FAMILIES[name]))
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return TinyLlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=resolve_chat_template("llm", tokenizer),
        num_image_tokens=NUM_IMAGE_TOKENS,
    )


def sample(*turns, system=None):
    messages = [{"role": "system", "content": text_to_parts(system)}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text_to_parts(text)} for i, text in enumerate(turns)]
    images = [make_image(seed=i) for i in range(sum(text.count("<image>") for text in turns))]
    return {"id": "s0", "messages": messages, "images": images}


def supervised_runs(input_ids: torch.Tensor, labels: torch.Tensor, tokenizer) -> list[str]:
    """The decoded text of each contiguous run of supervised tokens; labels must equal input ids where supervised."""
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], input_ids[supervised])
    runs, current = [], []
    for token, keep in zip(input_ids.tolist(), supervised.tolist(), strict=True):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def collapsed_text(input_ids: torch.Tensor, processor) -> str:
    """The tokens decoded, with each run of image placeholders shown once as `<image>` (as the template wrote it)."""
    ids = input_ids.tolist()
    kept = [t for i, t in enumerate(ids) if t != processor.image_token_id or i == 0 or ids[i - 1] != t]
    return processor.tokenizer.decode(kept)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_answer_and_its_end_of_turn_token_are_supervised_multi_turn_multi_image(name):
    processor = make_processor(name)
    batch = TinyLlavaCollator(processor)([sample(*TWO_TURNS_THREE_IMAGES)])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    end = END_OF_TURN[name]
    assert supervised_runs(input_ids, labels, processor.tokenizer) == [f"Two squares.{end}", f"A red circle.{end}"]
    assert int((input_ids == processor.image_token_id).sum()) == 3 * NUM_IMAGE_TOKENS
    assert batch["pixel_values"].shape[0] == 3


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"gemma2_it"}))
def test_system_prompt_is_rendered_by_the_template_and_never_supervised(name):
    processor = make_processor(name)
    input_ids, labels = TinyLlavaCollator(processor).layout(
        sample("<image>\nWhat is shown?", "Two squares.", system="Be brief.")
    )
    assert "Be brief." in collapsed_text(input_ids, processor)
    assert supervised_runs(input_ids, labels, processor.tokenizer) == [f"Two squares.{END_OF_TURN[name]}"]


def test_chatml_rendering_by_hand():
    """SmolLM2's template: its default system prompt, images in front of the turn's text, answer + <|im_end|>."""
    processor = make_processor("smollm2_instruct")
    input_ids, _ = TinyLlavaCollator(processor).layout(sample(*TWO_TURNS_THREE_IMAGES))
    assert collapsed_text(input_ids, processor) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n<image>\n<image>\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\nTwo squares.<|im_end|>\n"
        "<|im_start|>user\n<image>\nAnd here?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
    )


def test_phi3_closing_eos_after_the_last_turn_is_not_supervised():
    """Phi-3 ends a finished conversation with eos_token after `<|end|>\\n`; as for every turn, only the answer and
    `<|end|>` are supervised (the template renders the last turn differently from an inner one)."""
    processor = make_processor("phi3_mini_instruct")
    input_ids, labels = TinyLlavaCollator(processor).layout(sample("<image>\nWhat is shown?", "Two squares."))
    assert collapsed_text(input_ids, processor).endswith("<|assistant|>\nTwo squares.<|end|>\n<|endoftext|>")
    assert supervised_runs(input_ids, labels, processor.tokenizer) == ["Two squares.<|end|>"]


@pytest.mark.parametrize("template", ["llama", "qwen2_instruct", "gemma"])
def test_turn_splitting_gives_the_generation_markers_mask_on_built_in_templates(template):
    """The same mask, derived two ways: the built-in template's {% generation %} blocks, and prefix renders of the
    same template with its markers removed."""
    tokenizer = make_tokenizer({"llama": "</s>", "qwen2_instruct": "<|im_end|>", "gemma": "<eos>"}[template])
    marked = CHAT_TEMPLATES[template]
    unmarked = marked.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert unmarked != marked
    processor = TinyLlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=marked,
        num_image_tokens=NUM_IMAGE_TOKENS,
    )
    conversation = sample(*TWO_TURNS_THREE_IMAGES, system="Be brief.")
    ids_marked, labels_marked = TinyLlavaCollator(processor).layout(conversation)
    ids_unmarked, labels_unmarked = TinyLlavaCollator(processor, chat_template=unmarked).layout(conversation)
    assert torch.equal(ids_marked, ids_unmarked)
    assert torch.equal(labels_marked, labels_unmarked)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_llm_template_renders_list_contents_as_training_does(name):
    """`--chat_template llm` (the template saved for inference) renders image parts exactly as the collator's
    flattening does, so inference sees the training format."""
    template = (TEMPLATES / f"{name}.jinja").read_text()
    conversation = normalize_messages(sample(*TWO_TURNS_THREE_IMAGES)["messages"])
    flattened = [{"role": m["role"], "content": flatten_content(m["content"], "<image>")} for m in conversation]
    bos, eos = FAMILIES[name]
    tokens = {"bos_token": bos or "", "eos_token": eos}
    wrapped, _ = render_jinja_template([conversation], chat_template=with_image_parts(template), **tokens)
    plain, _ = render_jinja_template([flattened], chat_template=template, **tokens)
    assert wrapped == plain and wrapped[0].count("<image>") == 3
    assert with_image_parts(with_image_parts(template)) == with_image_parts(template)


# --- templates that cannot be split into turns are refused, naming the template ------------------------------


def refusal(template: str, conversation: dict) -> str:
    processor = make_processor("smollm2_instruct")
    with pytest.raises(ValueError) as error:
        TinyLlavaCollator(processor, chat_template=template).layout(conversation)
    return str(error.value)


def test_template_that_ignores_add_generation_prompt_is_refused():
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}{{ 'assistant: ' }}"
    message = refusal(template, sample("Hi?", "Hello."))
    assert "ignores add_generation_prompt" in message and "{% for m in messages %}" in message


def test_template_that_rewrites_earlier_turns_is_refused():
    """Shows only the last two messages: every prefix render differs from the full one."""
    template = (
        "{% for m in messages[-2:] %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    message = refusal(template, sample("Hi?", "Hello.", "And you?", "Fine."))
    assert "cannot be split into turns" in message and "messages[-2:]" in message


def test_template_whose_last_turn_has_no_end_of_turn_token_is_refused():
    """Qwen1.5-Chat's template leaves the last assistant turn open unless add_generation_prompt is set."""
    template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
        "You are a helpful assistant<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content']}}{% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|im_end|>' + '\\n'}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    message = refusal(template, sample("Hi?", "Hello."))
    assert "puts no special token after assistant turn 1" in message


def test_template_error_is_reported_with_the_template_named():
    gemma = (TEMPLATES / "gemma2_it.jinja").read_text()
    message = refusal(gemma, sample("Hi?", "Hello.", system="Be brief."))
    assert "Training sample 's0'" in message and "System role not supported" in message and "{{ bos_token }}" in message


def test_template_that_drops_images_is_refused():
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].replace('<image>', '') + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    message = refusal(template, sample("<image>\nWhat is shown?", "Two squares."))
    assert "renders 0 <image> tokens for 1 images" in message
