"""The training collator: labels token for token against the original's masking rules (reference §3.3, worked by
hand) and the original code's own labels, the truncation rule, multi-turn / multi-image / text-only samples, image
loading, and the token checks `training.data` runs."""

import pytest
import torch
from conftest import VISION_TOWERS, make_image
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from training_helpers import A1, A2, Q1, Q2
from transformers import AutoTokenizer, PreTrainedTokenizerFast, SiglipImageProcessorPil

from modeling_tinyllava import TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import CHAT_TEMPLATES
from tinyllava_hf.training.collator import IGNORE_INDEX, TinyLlavaCollator
from tinyllava_hf.training.data import text_to_parts, token_problem

ORIGINAL_IMAGE = -200
NUM_IMAGE_TOKENS = 16  # SigLIP 32 px / patch 8, strategy "full"


# --- hand-built tokenizers for hand-worked masks (reference §2.1 and §3.3) -----------------------------------

# A short conversation (a system turn keeps the sequences short; the masking rules do not depend on its text).
SYSTEM, HQ1, HA1, HQ2, HA2 = "Be brief.", "<image>\nWhat is it?", "A red square.", "And the color?", "Red."
WORDS = ["Be", "brief.", "What", "is", "it?", "ASSISTANT:", "A", "red", "square.", "And", "the", "color?", "Red."]
SPECIAL = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|im_end|>", "<eos>"]


def word_tokenizer(sentencepiece: bool, bos: bool) -> PreTrainedTokenizerFast:
    """A Unigram tokenizer over whole words, with the space as a `▁` prefix (SentencePiece style).

    `"▁USER:"` is not a piece: it splits into `"▁US", "ER:"` while `"USER:"` right after an end-of-turn token is one
    piece, which is the Llama vocabulary's artefact that the original's llama template corrects for (reference
    §3.3). With `sentencepiece` a `▁` is also prepended to the start of the text, so a chunk tokenized on its own
    after `<image>` starts with a lone `"▁"` (reference §2.1); without it the tokenizer behaves like a byte-level
    one, where tokenizing chunk-wise or in one pass gives the same ids.
    """
    pieces = [*SPECIAL, "\n", "What", "A", "Red.", "Be", "▁US", "ER:", "USER:", *("▁" + word for word in WORDS)]
    vocab = [(piece, -1.0) for piece in dict.fromkeys(pieces)] + [("▁", -5.0)]  # a lone ▁ only when nothing else fits
    backend = Tokenizer(models.Unigram(vocab, unk_id=0))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(prepend_scheme="first" if sentencepiece else "never"),
            pre_tokenizers.Split("\n", "isolated"),
        ]
    )
    backend.decoder = decoders.Metaspace(prepend_scheme="first" if sentencepiece else "never")
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[3:]})
    return add_image_token(tokenizer, "llama")


def expected_from_spec(spec: str, tokenizer, image_token_id: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) written as tokens: `[ ... ]` encloses the supervised ones, `<image>` is one placeholder
    run of `NUM_IMAGE_TOKENS`, `NL` is the newline token, and every other token is masked."""
    ids, labels, supervised = [], [], False
    for token in spec.split():
        if token in "[]":
            supervised = token == "["
            continue
        token = "\n" if token == "NL" else token
        token_ids = (
            [image_token_id] * NUM_IMAGE_TOKENS if token == "<image>" else [tokenizer.convert_tokens_to_ids(token)]
        )
        assert token == "<image>" or token_ids[0] != tokenizer.unk_token_id, f"{token!r} is not in the vocabulary"
        ids += token_ids
        labels += token_ids if supervised else [IGNORE_INDEX] * len(token_ids)
    return ids, labels


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


# Hand-worked with the rules of reference §3.3, for each template (E = its end-of-turn token). Tokens of the
# original's sequence are numbered from 0; `tok_img` counts the image as one token.
#
# phi, qwen2_base, qwen2_instruct (base rule, no BOS): tokens 0-10 `Be ... ▁ASSISTANT:`, 11-14 `▁A ▁red ▁square. E`,
#   15-19 `USER: ... ▁ASSISTANT:`, 20-21 `▁Red. E`. Round 1: tok_img(round) = 14 (the E is not in it),
#   round_len = 14 + eos_len 1 = 15; tok_img("... ASSISTANT: ") = 12, instr_len = 12 - 1 = 11: mask 0-10, cur = 15.
#   Round 2: tok_img = 6, round_len = 7; instr_len = 6 - 1 = 5: mask 15-19, cur = 22 = total: no mismatch.
# gemma (cur starts at 1 to mask BOS, eos_len = bos_len = 1): the same tokens shifted by the BOS. Round 1:
#   tok_img = 15 with BOS, round_len = 15 + 1 - 1 = 15; instr_len = 13 - 1 - 1 = 11: mask 1-11, cur = 16. Round 2:
#   round_len = 7, instr_len = 5: mask 16-20, cur = 23 = total.
# llama with the SentencePiece tokenizer (chunk-wise: a lone `▁` after the image; `▁USER:` is two pieces but `USER:`
#   after `</s>` one): tokens 0 `<s>`, 1-12 `▁Be ▁brief. ▁US ER: ▁ <image> ▁ NL What ▁is ▁it? ▁ASSISTANT:`, 13-16
#   `▁A ▁red ▁square. </s>`, 17-21 `USER: ▁And ▁the ▁color? ▁ASSISTANT:`, 22-23 `▁Red. </s>`. Round 1: tok_img = 16,
#   round_len = 16; instr_len = 14 - 2 = 12: mask 1-12, cur = 17. Round 2 tokenizes alone as `<s> ▁US ER: ...`, one
#   token more than in context, and the legacy correction (rounds after the first) takes 1 off both lengths:
#   round_len = 8 - 1 = 7, instr_len = 8 - 2 - 1 = 5: mask 17-21, cur = 24 = total. (Gemma's rule, without the
#   correction, would mask `▁Red.` and end at 25 != 24: the tokenization-mismatch fallback, no labels at all.)
HAND_WORKED = {
    "phi": "Be ▁brief. ▁US ER: ▁ <image> NL What ▁is ▁it? ▁ASSISTANT: [ ▁A ▁red ▁square. <|endoftext|> ] "
    "USER: ▁And ▁the ▁color? ▁ASSISTANT: [ ▁Red. <|endoftext|> ]",
    "qwen2_base": "Be ▁brief. ▁US ER: ▁ <image> NL What ▁is ▁it? ▁ASSISTANT: [ ▁A ▁red ▁square. <|endoftext|> ] "
    "USER: ▁And ▁the ▁color? ▁ASSISTANT: [ ▁Red. <|endoftext|> ]",
    "qwen2_instruct": "Be ▁brief. ▁US ER: ▁ <image> NL What ▁is ▁it? ▁ASSISTANT: [ ▁A ▁red ▁square. <|im_end|> ] "
    "USER: ▁And ▁the ▁color? ▁ASSISTANT: [ ▁Red. <|im_end|> ]",
    "gemma": "<s> Be ▁brief. ▁US ER: ▁ <image> NL What ▁is ▁it? ▁ASSISTANT: [ ▁A ▁red ▁square. <eos> ] "
    "USER: ▁And ▁the ▁color? ▁ASSISTANT: [ ▁Red. <eos> ]",
    "llama": "<s> ▁Be ▁brief. ▁US ER: ▁ <image> ▁ NL What ▁is ▁it? ▁ASSISTANT: [ ▁A ▁red ▁square. </s> ] "
    "USER: ▁And ▁the ▁color? ▁ASSISTANT: [ ▁Red. </s> ]",
}


@pytest.mark.parametrize("template", list(HAND_WORKED))
def test_conversation_labels_follow_the_original_masking_rules(template):
    sentencepiece = template == "llama"
    tokenizer = word_tokenizer(sentencepiece=sentencepiece, bos=template in ("llama", "gemma"))
    processor = TinyLlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATES[template],
        num_image_tokens=NUM_IMAGE_TOKENS,
        chunked_image_tokenization=sentencepiece,  # as converted llama checkpoints are set
    )
    encoded = TinyLlavaCollator(processor).encode(sample(HQ1, HA1, HQ2, HA2, system=SYSTEM))
    expected_ids, expected_labels = expected_from_spec(HAND_WORKED[template], tokenizer, processor.image_token_id)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == tokenizer.convert_ids_to_tokens(expected_ids)
    assert encoded["labels"].tolist() == expected_labels


def test_pretrain_labels_follow_the_original_masking_rule():
    """pretrain: `<image>` + caption + "\\n" per turn, question text ignored; only `tok_img("<image>")` (the first
    image) is masked, later images are masked when the features are spliced in (reference §2.2, §3.3)."""
    tokenizer = word_tokenizer(sentencepiece=False, bos=False)
    processor = make_processor(tokenizer, "pretrain")
    encoded = TinyLlavaCollator(processor).encode(sample("<image>\nDescribe it.", HA1, "<image>\nAnd now?", HA2))
    spec = "<image> [ A ▁red ▁square. NL ] <image> [ Red. NL ]"
    expected_ids, expected_labels = expected_from_spec(spec, tokenizer, processor.image_token_id)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == tokenizer.convert_ids_to_tokens(expected_ids)
    assert encoded["labels"].tolist() == expected_labels


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


def test_template_without_generation_markers_that_cannot_be_split_is_refused_not_silently_unsupervised(tokenizers):
    """Without {% generation %}, answers are found by prefix renders (tests/test_answer_masks.py); a template with
    no assistant header cannot be split into turns, and is refused by name."""
    tokenizer = tokenizers["plain"]
    no_generation_markers = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    collator = TinyLlavaCollator(make_processor(tokenizer, "phi"), chat_template=no_generation_markers)
    with pytest.raises(ValueError, match=r"Chat template .{% for m in messages %}.* cannot be split into turns"):
        token_problem(collator, sample("Hi?", "Hello."))
