"""The training collator: labels token for token against the original's masking (reference §3.3), the truncation
rule, multi-turn / multi-image / text-only samples, image loading, and the token checks `training.data` runs."""

import pytest
import torch
from conftest import VISION_TOWERS, make_image
from PIL import Image
from tokenizers import processors
from training_helpers import A1, A2, Q1, Q2
from transformers import AutoTokenizer, SiglipImageProcessorPil

from modeling_tinyllava import TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import CHAT_TEMPLATES, SYSTEM_PROMPT
from tinyllava_hf.training.collator import IGNORE_INDEX, TinyLlavaCollator
from tinyllava_hf.training.data import text_to_parts, token_problem

ORIGINAL_IMAGE = -200
TEMPLATE_EOS = {"phi": "<|endoftext|>", "qwen2_base": "<|endoftext|>", "qwen2_instruct": "<|im_end|>", "llama": "</s>",
                "gemma": "<eos>"}  # fmt: skip
NUM_IMAGE_TOKENS = 16  # SigLIP 32 px / patch 8, strategy "full"


# --- the original's tokenization and masking (reference §2.1 and §3.3), written out for comparison -------------


def original_tokenize(prompt: str, tokenizer) -> list[int]:
    """`tokenizer_image_token`: chunks split at <image> tokenized separately, one -200 between them, one BOS."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for index, chunk in enumerate(chunks):
        ids += ([ORIGINAL_IMAGE] if index else []) + chunk[offset:]
    return ids


def unspliced(labels: list[int]) -> list[int]:
    """Image positions left in the labels become IGNORE when the original splices in the features (§2.2)."""
    return [IGNORE_INDEX if label == ORIGINAL_IMAGE else label for label in labels]


def original_labels(prompt: str, tokenizer, template: str) -> tuple[list[int], list[int]]:
    """`Template.make_labels` of the original for `template`; asserts its tokenization-mismatch check passes.

    The llama template's extra -1 for later rounds compensates a SentencePiece artefact ("USER" after "</s>"
    tokenizes differently than alone); byte-level tokenizers have no such artefact, so it does not apply here.
    """
    ids = original_tokenize(prompt, tokenizer)
    labels = list(ids)
    if template == "pretrain":
        num_masked = len(original_tokenize("<image>", tokenizer))
        return ids, unspliced([IGNORE_INDEX] * num_masked + labels[num_masked:])
    separator, eos = " ASSISTANT: ", TEMPLATE_EOS[template]
    with_bos = template in ("llama", "gemma")
    cur, eos_len, bos_len = (1, 1, 1) if with_bos else (0, len(tokenizer.encode(eos)), 0)
    labels[:cur] = [IGNORE_INDEX] * cur
    for round_text in prompt.split(eos):
        parts = round_text.split(separator)
        if round_text == "" or len(parts) != 2:
            break
        round_len = len(original_tokenize(round_text, tokenizer)) + eos_len - bos_len
        instruction_len = len(original_tokenize(parts[0] + separator, tokenizer)) - 1 - bos_len
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
    total_len = sum(token != tokenizer.pad_token_id for token in ids)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        total_len += prompt.count(eos)
    assert cur == total_len, "the original would have hit its tokenization-mismatch fallback"
    return ids, unspliced(labels)


def collapse_images(ids: torch.Tensor, labels: torch.Tensor, image_token_id: int) -> tuple[list[int], list[int]]:
    """Our expanded sequence in the original's layout: each placeholder run becomes one -200."""
    out_ids, out_labels = [], []
    for position, (token, label) in enumerate(zip(ids.tolist(), labels.tolist())):
        if token == image_token_id:
            assert label == IGNORE_INDEX
            if position and ids[position - 1] == image_token_id:
                continue
            token = ORIGINAL_IMAGE
        out_ids.append(token)
        out_labels.append(label)
    return out_ids, out_labels


# --- fixtures ------------------------------------------------------------------------------------------------


def make_processor(tokenizer, template: str, num_image_tokens: int = NUM_IMAGE_TOKENS) -> TinyLlavaProcessor:
    return TinyLlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATES[template],
        num_image_tokens=num_image_tokens,
    )


@pytest.fixture(scope="module")
def tokenizers(components_dir):
    """The tiny byte-level tokenizer as phi/qwen2 use it (no BOS) and as llama/gemma use it (BOS added)."""
    plain = add_image_token(AutoTokenizer.from_pretrained(components_dir / "phi"), "phi")
    with_bos = add_image_token(AutoTokenizer.from_pretrained(components_dir / "llama"), "llama")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", with_bos.bos_token_id)]
    )
    assert with_bos("x").input_ids[0] == with_bos.bos_token_id
    return {"plain": plain, "bos": with_bos}


def sample(*turns, images=None, sample_id="s0", system=None):
    """A sample in the collator's format from alternating user/assistant strings with <image> markers."""
    messages = [{"role": "system", "content": text_to_parts(system)}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text_to_parts(text)} for i, text in enumerate(turns)]
    num_images = sum(text.count("<image>") for text in turns)
    images = [make_image(seed=i) for i in range(num_images)] if images is None else images
    return {"id": sample_id, "messages": messages, "images": images}


def supervised_text(batch, row, tokenizer) -> str:
    labels = batch["labels"][row]
    return tokenizer.decode(labels[labels != IGNORE_INDEX])


# --- parity with the original ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["phi", "qwen2_base", "qwen2_instruct", "llama", "gemma"])
def test_conversation_labels_match_original_masking(tokenizers, template):
    tokenizer = tokenizers["bos" if template in ("llama", "gemma") else "plain"]
    eos = TEMPLATE_EOS[template]
    prompt = f"{SYSTEM_PROMPT} USER: {Q1} ASSISTANT: {A1}{eos}USER: {Q2} ASSISTANT: {A2}{eos}"
    processor = make_processor(tokenizer, template)
    encoded = TinyLlavaCollator(processor).encode(sample(Q1, A1, Q2, A2))

    ids, labels = collapse_images(encoded["input_ids"], encoded["labels"], processor.image_token_id)
    expected_ids, expected_labels = original_labels(prompt, tokenizer, template)
    assert ids == expected_ids
    assert labels == expected_labels
    assert tokenizer.decode([label for label in labels if label != IGNORE_INDEX]) == f" {A1}{eos} {A2}{eos}"


@pytest.mark.parametrize("turns", [1, 2])
def test_pretrain_labels_match_original_masking(tokenizers, turns):
    tokenizer = tokenizers["plain"]
    captions = ["a red square on a blue background", "two green circles"][:turns]
    prompt = "".join(f"<image>{caption}\n" for caption in captions)
    conversation = [text for caption in captions for text in ("<image>\nDescribe the picture.", caption)]
    processor = make_processor(tokenizer, "pretrain")
    encoded = TinyLlavaCollator(processor).encode(sample(*conversation))

    ids, labels = collapse_images(encoded["input_ids"], encoded["labels"], processor.image_token_id)
    expected_ids, expected_labels = original_labels(prompt, tokenizer, "pretrain")
    assert ids == expected_ids
    assert labels == expected_labels


def test_labels_equal_the_original_codes_own_labels(original_fixture):
    """Against labels written by the original code itself (fixture: qwen2_base template, 15 image tokens)."""
    reference = torch.load(original_fixture / "reference.pt", weights_only=False)
    tokenizer = add_image_token(AutoTokenizer.from_pretrained(original_fixture), "qwen2")
    image = reference["image_uint8_hwc"].numpy()
    cases = {
        "train2": ("qwen2_base", (Q1, A1, Q2, A2)),
        "train1": ("qwen2_base", ("<image>\nDescribe the picture.", "A red square.")),
        "pretrain": ("pretrain", ("<image>\nWhat is shown in the image?", "a red square on a blue background")),
    }
    for name, (template, turns) in cases.items():
        processor = make_processor(tokenizer, template, num_image_tokens=15)
        encoded = TinyLlavaCollator(processor).encode(sample(*turns, images=[Image.fromarray(image)]))
        ids, labels = collapse_images(encoded["input_ids"], encoded["labels"], processor.image_token_id)
        assert ids == reference[f"{name}_input_ids"].flatten().tolist(), name
        expected = [IGNORE_INDEX if x == ORIGINAL_IMAGE else x for x in reference[f"{name}_labels"].flatten().tolist()]
        assert labels == expected, name


def test_batch_keeps_real_end_of_text_attended_when_pad_equals_eos(original_fixture):
    """Qwen2-base pads with its eos; real end-of-text tokens must stay attended and supervised (reference §3.4)."""
    tokenizer = add_image_token(AutoTokenizer.from_pretrained(original_fixture), "qwen2")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    collator = TinyLlavaCollator(make_processor(tokenizer, "qwen2_base", num_image_tokens=15))
    batch = collator([sample(Q1, A1, Q2, A2), sample("<image>\nDescribe the picture.", "A red square.")])
    short = int(batch["attention_mask"][1].sum())
    assert short < batch["input_ids"].shape[1]
    assert batch["input_ids"][1, short - 1] == tokenizer.eos_token_id
    assert batch["labels"][1, short - 1] == tokenizer.eos_token_id
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


# --- sample shapes ---------------------------------------------------------------------------------------------


def test_multi_image_multi_turn_text_only_and_system_prompt(tokenizers):
    tokenizer = tokenizers["plain"]
    processor = make_processor(tokenizer, "phi")
    collator = TinyLlavaCollator(processor)
    batch = collator(
        [
            sample("<image>\n<image>\nCompare the two.", "The left is red.", "And the right?", "Blue."),
            sample("What is two plus two?", "Four.", system="You are terse."),
        ]
    )
    assert batch["pixel_values"].shape[0] == 2
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == 2 * NUM_IMAGE_TOKENS
    assert supervised_text(batch, 0, tokenizer) == " The left is red.<|endoftext|> Blue.<|endoftext|>"
    assert supervised_text(batch, 1, tokenizer) == " Four.<|endoftext|>"
    prompt_ids = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    assert tokenizer.decode(prompt_ids).startswith("You are terse. USER: What is two plus two?")
    assert "pixel_values" not in collator([sample("Hi?", "Hello.")])


# --- truncation --------------------------------------------------------------------------------------------------


def test_over_long_sample_is_cut_after_its_last_image_and_counted(tokenizers, caplog):
    tokenizer = tokenizers["plain"]
    processor = make_processor(tokenizer, "phi")
    long_answer = "one two three four five six seven eight nine ten " * 4
    full = TinyLlavaCollator(processor).encode(sample(Q1, long_answer))
    max_length = len(full["input_ids"]) - 10
    collator = TinyLlavaCollator(processor, max_length=max_length)
    assert token_problem(collator, sample(Q1, long_answer)) == (None, len(full["input_ids"]))
    batch = collator([sample(Q1, long_answer)])
    assert batch["input_ids"].shape == (1, max_length)
    assert torch.equal(batch["input_ids"][0], full["input_ids"][:max_length])
    # The cut keeps the untruncated labels token for token: the answer's first part stays supervised.
    assert torch.equal(batch["labels"][0], full["labels"][:max_length])
    assert (full["labels"][max_length:] != IGNORE_INDEX).all()  # only answer tokens were cut
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == NUM_IMAGE_TOKENS
    assert collator.counts == {"truncated": 1}
    assert "Truncated sample 's0'" in caplog.text


@pytest.mark.parametrize("vision", list(VISION_TOWERS))
def test_layout_is_the_encoding_without_opening_images(tokenizers, vision):
    """The load-time check renders unprocessed stand-in images; the tokens must be those of the real images."""
    processor = make_processor(tokenizers["plain"], "phi")
    processor.image_processor = VISION_TOWERS[vision][1]()
    collator = TinyLlavaCollator(processor)
    two_images = sample(Q1, A1, "<image>\n" + Q2, A2)
    input_ids, labels = collator.layout(two_images)
    encoded = collator.encode(two_images)
    assert torch.equal(input_ids, encoded["input_ids"]) and torch.equal(labels, encoded["labels"])


@pytest.mark.parametrize("problem", ["image_past_cut", "no_answer_before_cut"])
def test_over_long_sample_that_cannot_be_cut_cleanly_is_bad(tokenizers, problem):
    """An image past the cut, or no answer token before it: a bad sample for training.data's policy."""
    processor = make_processor(tokenizers["plain"], "phi")
    short = sample("Hi?", "Hello.", sample_id="short")
    max_length = len(TinyLlavaCollator(processor).encode(short)["input_ids"]) + 2
    long_question = "Describe the picture. " * 8
    if problem == "image_past_cut":  # the first answer fits, the second turn's image does not
        bad = sample("Hi?", "Hello.", long_question + "<image>", "Blue.", sample_id="long")
        message = "an image ends at token"
    else:
        bad = sample(long_question, "A red square.", sample_id="long")
        message = "no answer token is left"
    collator = TinyLlavaCollator(processor, max_length=max_length)
    (kind, description), _ = token_problem(collator, bad)
    assert kind == "too_long" and f"> max_length {max_length}" in description and message in description
    assert token_problem(collator, short)[0] is None
    if problem == "image_past_cut":  # unchecked, the collator still never cuts an image's placeholder run
        with pytest.raises(ValueError, match="'long' would lose image tokens when cut at max_length"):
            collator([bad])


# --- images and bad samples ----------------------------------------------------------------------------------------


def test_images_are_opened_at_collate_time_by_the_processors_loader(tokenizers, tmp_path):
    processor = make_processor(tokenizers["plain"], "phi")
    make_image(seed=3).convert("L").save(tmp_path / "grey.png")
    collator = TinyLlavaCollator(processor)
    from_path = collator([sample(Q1, A1, images=[str(tmp_path / "grey.png")])])
    from_pil = collator([sample(Q1, A1, images=[Image.open(tmp_path / "grey.png").convert("RGB")])])
    assert torch.equal(from_path["pixel_values"], from_pil["pixel_values"])
    (tmp_path / "grey.png").write_bytes(b"not a png")  # changed after the load-time check
    with pytest.raises(ValueError, match=r"Training sample 's0': Could not decode image file .*grey\.png"):
        collator([sample(Q1, A1, images=[str(tmp_path / "grey.png")])])


def test_template_without_supervised_tokens_is_a_bad_sample_not_a_silent_all_ignored_one(tokenizers):
    tokenizer = tokenizers["plain"]
    no_generation_markers = "{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}"
    collator = TinyLlavaCollator(make_processor(tokenizer, "phi"), chat_template=no_generation_markers)
    (kind, description), _ = token_problem(collator, sample("Hi?", "Hello."))
    assert kind == "no_supervised_tokens" and "no supervised token" in description
