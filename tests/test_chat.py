"""The chat's model side and page handlers, without a browser: streamed answers equal `generate`'s, conversations,
settings, and the messages a user gets for bad input."""

import json

import gradio as gr
import pytest
import torch
from chat_helpers import (
    MAX_NEW_TOKENS,
    assistant_turn,
    greedy_answer,
    user_turn,
)
from conftest import assemble
from PIL import Image

from tinyllava_hf.chat import ChatInputError, ChatModel, Conversation, GenerationSettings
from tinyllava_hf.chat.cli import main as chat_main
from tinyllava_hf.chat.cli import parse_args
from tinyllava_hf.chat.examples import find_examples
from tinyllava_hf.chat.images import open_image
from tinyllava_hf.chat.web import ERROR_PREFIX, ChatApp, TabState

QUESTION, FOLLOW_UP = "What is shown in the image?", "What color is the square?"
SETTINGS = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def chat(word_model):
    return ChatModel(*word_model)


@pytest.fixture(scope="module")
def images(chat_files):
    return [Image.open(chat_files / f"image{seed}.png").convert("RGB") for seed in (0, 1)]


def test_streamed_answer_equals_greedy_generate(chat, word_model, images):
    references = [greedy_answer(*word_model, [user_turn(QUESTION, image)]) for image in images]
    assert references[0] and references[0] != references[1], "the test model's answers must depend on the image"

    for image, reference in zip(images, references):
        pieces = list(chat.stream(Conversation().next_prompt(QUESTION, image), SETTINGS))
        assert pieces[-1] == reference
        # Token by token: the answer grows through several intermediate values, each a prefix of the final one.
        assert len(pieces) >= MAX_NEW_TOKENS // 2
        assert all(reference.startswith(piece) for piece in pieces)
    assert chat.answer(images[1], QUESTION, SETTINGS) == references[1]


def test_conversation_keeps_history_until_a_new_image(chat, word_model, images):
    conversation = Conversation()
    first_prompt = conversation.next_prompt(QUESTION, images[0])
    first = chat.answer(images[0], QUESTION, SETTINGS)
    conversation.record(first_prompt, first)
    second_prompt = conversation.next_prompt(FOLLOW_UP, None)
    *_, second = chat.stream(second_prompt, SETTINGS)
    expected = [user_turn(QUESTION, images[0]), assistant_turn(first), user_turn(FOLLOW_UP)]
    assert second == greedy_answer(*word_model, expected)
    conversation.record(second_prompt, second)
    assert conversation.num_turns == 2

    # A new image starts a new conversation about it: the model sees no earlier turn.
    assert conversation.next_prompt(QUESTION, images[1]) == [user_turn(QUESTION, images[1])]
    conversation.reset()
    assert conversation.messages == []


def test_sampling_settings_reach_generate(chat, word_model, images):
    assert GenerationSettings().generate_kwargs() == {"do_sample": False}
    sampling = GenerationSettings(MAX_NEW_TOKENS, temperature=1.5, top_p=0.9)
    assert sampling.generate_kwargs() == {"do_sample": True, "temperature": 1.5, "top_p": 0.9}
    model, processor = word_model
    inputs = processor.apply_chat_template(
        [user_turn(QUESTION, images[0])],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    torch.manual_seed(3)
    output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=1.5, top_p=0.9)
    sampled = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert sampled != greedy_answer(model, processor, [user_turn(QUESTION, images[0])])
    torch.manual_seed(3)
    assert chat.answer(images[0], QUESTION, sampling) == sampled


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in kwargs.items()]
    with pytest.raises(SystemExit):
        parse_args(["some/model", *flags])


def test_pretraining_checkpoint_needs_an_image(components_dir, images):
    # The `pretrain` template renders an image in every user turn, so a question without one cannot be asked.
    model, processor = assemble(components_dir, "phi", "siglip", chat_template="pretrain")
    chat = ChatModel(model.eval(), processor)
    with pytest.raises(ChatInputError, match="needs an image"):
        chat.answer(None, QUESTION, SETTINGS)
    assert chat.answer(images[0], QUESTION, SETTINGS)


def test_context_limit_caps_the_answer_and_refuses_a_full_conversation(chat, images):
    prompt = Conversation().next_prompt(QUESTION, images[0])
    inputs, _ = chat.prepare_inputs(prompt, 10_000)
    room = chat.context_length - inputs["input_ids"].shape[1]
    assert chat.prepare_inputs(prompt, 10_000)[1] == room
    with pytest.raises(ChatInputError, match="reset it"):
        chat.answer(images[0], "shape " * chat.context_length, SETTINGS)


def test_open_image_explains_what_is_wrong(chat_files, tmp_path):
    assert open_image(chat_files / "image0.png").mode == "RGB"
    with pytest.raises(ChatInputError, match="No such file: .*missing.png"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ChatInputError, match="is a folder"):
        open_image(tmp_path)
    with pytest.raises(ChatInputError, match="notes.txt is not an image"):
        open_image(chat_files / "notes.txt")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((chat_files / "image0.png").read_bytes()[:200])
    with pytest.raises(ChatInputError, match="Could not read .*truncated.png"):
        open_image(truncated)


def test_examples_are_the_demo_held_out_questions(tmp_path):
    from tinyllava_hf.demo.dataset import write_demo_data

    data = write_demo_data(tmp_path / "data", num_pretrain=2, num_finetune=2, num_eval=8, image_size=32)
    checkpoint = tmp_path / "finetune"
    checkpoint.mkdir()
    record = {"stages": [{"datasets": [str(data.pretrain_json)]}, {"datasets": [str(data.finetune_json)]}]}
    (checkpoint / "tinyllava_run.json").write_text(json.dumps(record))

    examples = find_examples(str(checkpoint), limit=4)
    held_out = json.loads(data.eval_json.read_text())
    assert len({entry["type"] for entry in held_out}) == 4
    # One question of each type, each with its own image from the demo's image folder.
    first_of_type = {}
    for entry in held_out:
        first_of_type.setdefault(entry["type"], entry)
    assert [(example.image, example.question) for example in examples] == [
        (data.image_folder / entry["image"], entry["question"]) for entry in first_of_type.values()
    ]
    assert all(example.image.is_file() for example in examples)

    assert find_examples(str(tmp_path)) == []  # a directory without a run record
    assert find_examples("someone/some-model") == []  # a Hub id
    (checkpoint / "tinyllava_run.json").write_text(json.dumps({"stages": [{"datasets": ["/elsewhere/data.json"]}]}))
    assert find_examples(str(checkpoint)) == []  # trained on other data


def test_page_handler_streams_and_recovers_from_a_bad_upload(chat, word_model, chat_files):
    app, state = ChatApp(chat, SETTINGS), TabState()
    image = Image.open(chat_files / "image0.png").convert("RGB")

    updates = list(app.respond({"text": QUESTION, "files": [str(chat_files / "image0.png")]}, [], state, 12, 0, 1))
    history = updates[-1][0]
    first = greedy_answer(*word_model, [user_turn(QUESTION, image)])
    assert [message["role"] for message in history] == ["user", "user", "assistant"]
    assert history[-1]["content"] == first
    streamed = [update[0][-1]["content"] for update in updates if update[0][-1]["role"] == "assistant"]
    assert len(set(streamed)) >= MAX_NEW_TOKENS // 2  # the chat shows the answer growing

    *_, (history, _, state) = app.respond(
        {"text": FOLLOW_UP, "files": [str(chat_files / "notes.txt")]}, history, state, 12, 0, 1
    )
    assert history[-1]["content"].startswith(ERROR_PREFIX + "notes.txt is not an image")
    assert state.conversation.num_turns == 1  # the failed question left the conversation as it was

    *_, (history, _, state) = app.respond({"text": FOLLOW_UP, "files": []}, history, state, 12, 0, 1)
    expected = [user_turn(QUESTION, image), assistant_turn(first), user_turn(FOLLOW_UP)]
    assert history[-1]["content"] == greedy_answer(*word_model, expected)
    assert state.conversation.num_turns == 2

    history, _, state = app.reset()
    assert history == [] and state.conversation.messages == [] and state.pending_image is None


def test_a_failed_generation_leaves_the_page_usable(chat, chat_files, monkeypatch):
    def failing_stream(prompt, settings):
        raise RuntimeError("CUDA out of memory")
        yield  # a generator, like the real one

    monkeypatch.setattr(chat, "stream", failing_stream)
    app, state = ChatApp(chat, SETTINGS), TabState()
    *_, (history, box, state) = app.respond({"text": QUESTION, "files": []}, [], state, 12, 0, 1)
    assert history[-1]["content"].startswith(ERROR_PREFIX + "generation failed (RuntimeError: CUDA out of memory)")
    assert box.interactive and state.conversation.num_turns == 0


def test_answer_endpoint_function(chat, word_model, chat_files):
    app = ChatApp(chat, SETTINGS)
    image = Image.open(chat_files / "image1.png").convert("RGB")
    assert app.answer(str(chat_files / "image1.png"), QUESTION) == greedy_answer(
        *word_model, [user_turn(QUESTION, image)]
    )
    with pytest.raises(gr.Error, match="not an image"):
        app.answer(str(chat_files / "notes.txt"), QUESTION)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert chat_main([str(tmp_path / "no-such-model"), "--cli"]) == 2
    assert "Could not load a chat model from" in capsys.readouterr().err
