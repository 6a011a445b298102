"""A checkpoint written by the original TinyLLaVA code converts into a model that reproduces the original's outputs.

The fixture (tests/fixtures/original_qwen2_siglip, see its README) holds a tiny Qwen2 + SigLIP Factory checkpoint
and the outputs the original code computed on fixed inputs.
"""

import json

import pytest
import torch
from PIL import Image

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.chat_templates import CHAT_TEMPLATES
from tinyllava_hf.conversion import convert_original

Q1, A1 = "<image>\nWhat is shown in the image?", "A red square on a blue background."
Q2, A2 = "What color is the square?", "The square is red."
VOCAB = 524  # the original vocabulary; the converted one has one more row, for <image>
ATOL = 1e-4


@pytest.fixture(scope="module")
def reference(original_fixture):
    return torch.load(original_fixture / "reference.pt", weights_only=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, original_fixture):
    dst = tmp_path_factory.mktemp("converted") / "qwen2-siglip"
    result = convert_original("factory", original_fixture, dst)
    model = TinyLlavaForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()
    return result, model, TinyLlavaProcessor.from_pretrained(dst)


@pytest.fixture(scope="module")
def image(reference):
    return Image.fromarray(reference["image_uint8_hwc"].numpy())


def collapse_image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Our ids with each run of `<image>` placeholders replaced by the original's single -200."""
    out = []
    for token in ids:
        token = -200 if token == image_token_id else token
        if not (token == -200 and out and out[-1] == -200):
            out.append(token)
    return out


def messages(turns):
    out = []
    for question, answer in turns:
        content = [{"type": "text", "text": question.replace("<image>\n", "")}]
        if "<image>" in question:
            content.insert(0, {"type": "image"})
        out.append({"role": "user", "content": content})
        if answer is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


def model_inputs(processor, image, turns):
    prompt = processor.apply_chat_template(messages(turns), add_generation_prompt=turns[-1][1] is None, tokenize=False)
    return prompt, processor(text=prompt, images=image, return_tensors="pt")


def test_conversion_record_and_config(converted):
    result, model, processor = converted
    record = json.loads((result.output_dir / "conversion.json").read_text())
    assert record["format"] == "factory" and record["lossy"] is False
    assert record["max_abs_logit_diff"] is not None and record["max_abs_logit_diff"] <= ATOL
    assert (result.output_dir / "README.md").is_file()
    # The original drops SigLIP's first patch ('patch'); 16 patches -> 15 image tokens.
    assert model.config.vision_feature_select_strategy == "default"
    assert processor.num_image_tokens == 15
    assert processor.chunked_image_tokenization  # the original's prompt tokenization
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight


def test_rendered_prompts_match_the_original(reference, converted):
    processor = converted[2]
    for name, expected in reference["rendered_prompts"].items():
        if name == "pretrain":
            continue

        def render(turns, open_end, template=CHAT_TEMPLATES[name]):
            return processor.apply_chat_template(
                messages(turns), chat_template=template, add_generation_prompt=open_end, tokenize=False
            )

        assert render([(Q1, A1), (Q2, A2)], False) == expected["train_2turn"], name
        assert render([(Q1, None)], True) == expected["eval_1turn"], name
        assert render([(Q1, A1), (Q2, None)], True) == expected["eval_2turn_history"], name


def test_pixel_values_square_and_pad(reference, converted, image):
    processor = converted[2]
    square = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(
        processor(text="<image>", images=image, return_tensors="pt")["pixel_values"][0],
        reference["pixel_values_square"],
    )
    pad = TinyLlavaProcessor.from_pretrained(converted[0].output_dir, image_aspect_ratio="pad")
    torch.testing.assert_close(
        pad(text="<image>", images=image, return_tensors="pt")["pixel_values"][0], reference["pixel_values_pad"]
    )
    assert not torch.equal(square[0], reference["pixel_values_pad"])


@torch.no_grad()
def test_vision_features_and_connector(reference, converted):
    model = converted[1]
    pixels = reference["pixel_values_square"][None]
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(torch.stack(hidden), reference["vision_hidden_states_all"], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[-2][:, 1:], reference["vision_features_selected"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.stack(model.get_image_features(pixels).pooler_output), reference["connector_out"], atol=1e-5, rtol=0
    )


@torch.no_grad()
@pytest.mark.parametrize(
    "turns, ids_key, logits_key",
    [
        ([(Q1, None)], "eval_input_ids", "eval_logits"),
        ([(Q1, A1), (Q2, None)], "eval_multi_input_ids", "eval_multi_logits"),
    ],
)
def test_eval_logits(reference, converted, image, turns, ids_key, logits_key):
    _, model, processor = converted
    _, inputs = model_inputs(processor, image, turns)
    assert (
        collapse_image_runs(inputs["input_ids"][0].tolist(), processor.image_token_id) == reference[ids_key][0].tolist()
    )
    logits = model(**inputs).logits[..., :VOCAB]
    assert logits.shape == reference[logits_key].shape
    assert (logits - reference[logits_key]).abs().max().item() <= ATOL


@torch.no_grad()
def test_training_loss_and_labels(reference, converted, image):
    _, model, processor = converted
    inputs = processor.apply_chat_template(
        messages([(Q1, A1), (Q2, A2)]),
        images=[image],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
    )
    labels = torch.where(inputs["assistant_masks"].bool(), inputs["input_ids"], -100)
    original_labels = reference["train2_merged_labels"][0]
    assert labels[0].tolist() == original_labels.tolist()
    output = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        labels=labels,
    )
    torch.testing.assert_close(output.logits[..., :VOCAB], reference["train2_logits"], atol=ATOL, rtol=0)
    # The original's loss is over its own vocabulary; the <image> row added by the conversion takes about 1/V of the
    # probability mass, so the full-vocabulary loss sits slightly above it.
    loss = torch.nn.functional.cross_entropy(output.logits[0, :-1, :VOCAB], labels[0, 1:])
    assert abs(loss.item() - reference["train2_loss"].item()) <= 1e-5
    assert 0 < output.loss.item() - loss.item() < 2 / VOCAB


@torch.no_grad()
def test_greedy_generation(reference, converted, image):
    _, model, processor = converted
    _, inputs = model_inputs(processor, image, [(Q1, None)])
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == reference["greedy_generate_ids"][0].tolist()
