"""The processor: original prompt strings, image handling, placeholder expansion and input errors."""

import numpy as np
import pytest
import torch
from conftest import assemble, chat, make_image
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, SiglipImageProcessorPil

from modeling_tinyllava import TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import CHAT_TEMPLATES

# The conversation of reference §3.2, in chat-message form.
Q1, A1 = "<image>\nWhat is shown in the image?", "A red square on a blue background."
Q2, A2 = "What color is the square?", "The square is red."


def _messages(*turns):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


@pytest.fixture(scope="module")
def original_reference(original_fixture):
    return torch.load(original_fixture / "reference.pt", weights_only=False)


@pytest.mark.parametrize("template", ["phi", "llama", "gemma", "qwen2_base", "qwen2_instruct"])
def test_conversation_templates_render_the_original_strings(template, original_reference, tiny_model_and_processor):
    expected = original_reference["rendered_prompts"][template]
    tokenizer = tiny_model_and_processor[1].tokenizer
    render = lambda messages, **kw: tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATES[template], tokenize=False, **kw
    )
    assert render(_messages(Q1, A1, Q2, A2)) == expected["train_2turn"]
    assert render(_messages(Q1), add_generation_prompt=True) == expected["eval_1turn"]
    assert render(_messages(Q1, A1, Q2), add_generation_prompt=True) == expected["eval_2turn_history"]


def test_pretrain_template_renders_the_original_string(original_reference, tiny_model_and_processor):
    tokenizer = tiny_model_and_processor[1].tokenizer
    rendered = tokenizer.apply_chat_template(
        _messages(Q1, A1, Q2, A2), chat_template=CHAT_TEMPLATES["pretrain"], tokenize=False
    )
    assert rendered == original_reference["rendered_prompts"]["pretrain"]["train_2turn"]


def test_image_content_parts_render_like_inline_markers(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    parts = chat("  What is shown in the image?", image=make_image(), answer=A1)
    assert processor.apply_chat_template(parts) == processor.apply_chat_template(_messages(Q1, A1))


def test_assistant_mask_covers_answers_and_end_of_turn_only(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    messages = chat(image=make_image(), answer=A1) + _messages(Q2, A2)
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    supervised = out["input_ids"][0][out["assistant_masks"][0].bool()]
    eos = "<|endoftext|>"  # qwen2_base, the default for the qwen2 family
    assert processor.tokenizer.decode(supervised) == f" {A1}{eos} {A2}{eos}"
    assert (out["input_ids"][0] == processor.image_token_id).sum() == processor.num_image_tokens


def test_pad_and_square_image_processing_match_the_original(original_reference, original_fixture):
    image_processor = SiglipImageProcessorPil.from_pretrained(original_fixture)
    image = Image.fromarray(original_reference["image_uint8_hwc"].numpy())
    for mode, key in (("square", "pixel_values_square"), ("pad", "pixel_values_pad")):
        processor = TinyLlavaProcessor(
            image_processor=image_processor,
            tokenizer=add_image_token(PreTrainedTokenizerFast.from_pretrained(original_fixture), "qwen2"),
            image_aspect_ratio=mode,
            chat_template=CHAT_TEMPLATES["qwen2_base"],
            num_image_tokens=15,
        )
        pixels = processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels[0], original_reference[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_non_rgb_images_are_converted(mode, tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    image = make_image().convert(mode)
    out = processor(images=[image], text=["<image>hi"], return_tensors="pt")
    reference = processor(images=[image.convert("RGB")], text=["<image>hi"], return_tensors="pt")
    assert torch.equal(out["pixel_values"], reference["pixel_values"])


def test_each_image_expands_to_its_placeholders(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    out = processor(
        images=[[make_image(), make_image(seed=1)], []],
        text=["<image><image>two", "none"],
        padding=True,
        return_tensors="pt",
    )
    counts = (out["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [2 * processor.num_image_tokens, 0]
    assert out["pixel_values"].shape[0] == 2


def test_number_of_image_tokens_follows_vision_tower_and_strategy(components_dir):
    # 32x32 images in 8x8 patches: 16 patches; CLIP adds a CLS token; "default" drops the first token.
    cases = {("siglip", None): 16, ("siglip", "default"): 15, ("clip", None): 16, ("clip", "full"): 17}
    for (vision, strategy), expected in cases.items():
        _, processor = assemble(components_dir, "qwen2", vision, vision_feature_select_strategy=strategy)
        assert processor.num_image_tokens == expected, (vision, strategy)
    _, processor = assemble(components_dir, "qwen2", "siglip", connector_type="resampler", num_queries=4)
    assert processor.num_image_tokens == 4


def test_default_template_and_pad_token_follow_the_llm_family(components_dir):
    for family, template in (("llama", "llama"), ("phi", "phi"), ("gemma", "gemma"), ("stablelm", "phi")):
        _, processor = assemble(components_dir, family, "siglip")
        assert processor.chat_template == CHAT_TEMPLATES[template], family
        expected_pad = "<unk>" if family in ("llama", "phi", "gemma") else processor.tokenizer.eos_token
        assert processor.tokenizer.pad_token == expected_pad, family


def test_chunked_image_tokenization_matches_the_original_chunkwise_ids():
    """SentencePiece-style tokenizers get an extra '▁' after the image in the original (reference §2.1)."""
    vocab = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        "▁": 3,
        "\n": 4,
        "What": 5,
        "▁What": 6,
        "▁USER": 7,
        ":": 8,
        "▁is": 9,
        "▁it": 10,
        "?": 11,
        "US": 12,
        "ER": 13,
        "USER": 14,
    }
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer = add_image_token(tokenizer, "llama")
    tokenizer.add_bos_token = True
    processor = TinyLlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATES["llama"],
        num_image_tokens=3,
        chunked_image_tokenization=True,
    )
    prompt = "USER: <image>\nWhat is it?"
    before, after = prompt.split("<image>")
    chunkwise = (
        tokenizer(before).input_ids
        + [processor.image_token_id] * 3
        + tokenizer(after, add_special_tokens=False).input_ids
    )
    ids = processor(images=[make_image()], text=[prompt])["input_ids"][0]
    assert ids == chunkwise
    assert tokenizer.convert_ids_to_tokens(ids[ids.index(processor.image_token_id) + 3]) == "▁"


def test_wrong_number_of_images_is_an_error(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    with pytest.raises(ValueError, match="1 <image> tokens and 2 images"):
        processor(images=[make_image(), make_image()], text=["<image>one"])
    with pytest.raises(ValueError, match="no images were passed"):
        processor(text=["<image>one"])


def test_undecodable_image_file_is_named(tiny_model_and_processor, tmp_path):
    processor = tiny_model_and_processor[1]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        processor(images=[str(broken)], text=["<image>hi"])


def test_unknown_chat_template_name_is_an_error(components_dir):
    with pytest.raises(ValueError, match="Unknown chat template 'phii'"):
        assemble(components_dir, "qwen2", "siglip", chat_template="phii")


def test_numpy_images_are_accepted(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    array = np.asarray(make_image())
    out = processor(images=[array], text=["<image>hi"], return_tensors="pt")
    reference = processor(images=[make_image()], text=["<image>hi"], return_tensors="pt")
    assert torch.equal(out["pixel_values"], reference["pixel_values"])


def test_image_paths_in_chat_messages_and_nested_lists(tiny_model_and_processor, tmp_path):
    processor = tiny_model_and_processor[1]
    path = tmp_path / "image.png"
    make_image().save(path)
    messages = [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "Hi?"}]}]
    from_path = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    from_pil = processor.apply_chat_template(
        chat("Hi?", image=make_image()),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert torch.equal(from_path["pixel_values"], from_pil["pixel_values"])
    nested = processor(
        images=[[str(path)], [str(path)]], text=["<image>a", "<image>b"], padding=True, return_tensors="pt"
    )
    assert nested["pixel_values"].shape[0] == 2


def test_empty_video_and_audio_arguments_are_ignored(tiny_model_and_processor):
    # lmms-eval's generic `huggingface` model calls processor(text=..., images=..., videos=[], audios=[]).
    processor = tiny_model_and_processor[1]
    text = ["<image>What is it?", "<image>And this?"]
    plain = processor(images=[make_image(), make_image(seed=1)], text=text, padding=True, return_tensors="pt")
    harness = processor(
        images=[make_image(), make_image(seed=1)],
        text=text,
        videos=[],
        audios=[],
        audio=[[]],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert set(harness) == set(plain)
    for key in plain:
        assert torch.equal(harness[key], plain[key]), key


@pytest.mark.parametrize("name", ["videos", "audios", "audio"])
def test_non_empty_video_or_audio_is_an_error(tiny_model_and_processor, name):
    processor = tiny_model_and_processor[1]
    with pytest.raises(ValueError, match=f"images and text only, but got a non-empty {name}= argument"):
        processor(text=["hi"], **{name: [np.zeros(16, dtype=np.float32)]})
