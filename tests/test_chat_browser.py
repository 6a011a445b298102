"""The web app in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) drives the running
app, and every answer it shows must equal `model.generate`'s greedy answer for the same conversation."""

import json
import os
import shutil

import pytest
from chat_helpers import (
    MAX_NEW_TOKENS,
    assistant_turn,
    greedy_answer,
    user_turn,
)
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tinyllava_hf.chat import ChatModel, GenerationSettings
from tinyllava_hf.chat.browser import INSTALL_HINT, ChatPage, find_chromium
from tinyllava_hf.chat.examples import find_examples
from tinyllava_hf.chat.web import ERROR_PREFIX, serve

QUESTION, FOLLOW_UP = "What is shown in the image?", "What color is the square?"


@pytest.fixture(scope="module", autouse=True)
def chromium():
    if find_chromium() is None:
        message = f"These tests drive a real browser: {INSTALL_HINT}."
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): a missing browser there is a broken setup, not a skip
        pytest.skip(message)


@pytest.fixture(scope="module")
def demo_checkpoint(word_model_dir, tmp_path_factory):
    """The word model as if the offline demo had trained it: a run record naming the demo's data, whose held-out
    questions the page offers as examples."""
    from tinyllava_hf.demo.dataset import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    data = write_demo_data(root / "data", num_pretrain=1, num_finetune=1, num_eval=4, image_size=32)
    checkpoint = shutil.copytree(word_model_dir, root / "finetune")
    (checkpoint / "tinyllava_run.json").write_text(json.dumps({"stages": [{"datasets": [str(data.finetune_json)]}]}))
    return checkpoint


@pytest.fixture(scope="module")
def app_url(demo_checkpoint):
    """The app, started once for the module, loading the checkpoint itself as `tinyllava-chat` does."""
    chat_model = ChatModel.load(str(demo_checkpoint))
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    blocks = serve(chat_model, str(demo_checkpoint), settings, find_examples(str(demo_checkpoint)), block=False)
    try:
        yield blocks.local_url
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def page(app_url):
    page = ChatPage(app_url, timeout=120)
    try:
        yield page
    finally:
        page.close()


def open_rgb(path):
    return Image.open(path).convert("RGB")


def test_upload_ask_and_follow_up(page, word_model, chat_files, tmp_path):
    page.reset()
    image = open_rgb(chat_files / "image0.png")
    page.attach(chat_files / "image0.png")
    first = page.ask(QUESTION)
    assert first == greedy_answer(*word_model, [user_turn(QUESTION, image)])

    second = page.ask(FOLLOW_UP)
    expected = [user_turn(QUESTION, image), assistant_turn(first), user_turn(FOLLOW_UP)]
    assert second == greedy_answer(*word_model, expected)
    assert page.messages("user") == ["", QUESTION, FOLLOW_UP]  # the image, then the two questions
    assert page.messages("bot") == [first, second]
    assert page.screenshot(tmp_path / "chat.png").stat().st_size > 10_000


def test_a_text_file_gets_an_error_and_the_chat_goes_on(page, word_model, chat_files):
    page.reset()
    page.attach(chat_files / "notes.txt")
    error = page.ask(QUESTION)
    assert error.startswith(ERROR_PREFIX + "notes.txt is not an image")

    page.attach(chat_files / "image1.png")
    answer = page.ask(QUESTION)
    assert answer == greedy_answer(*word_model, [user_turn(QUESTION, open_rgb(chat_files / "image1.png"))])
    assert answer != greedy_answer(*word_model, [user_turn(QUESTION, open_rgb(chat_files / "image0.png"))])


def test_demo_examples_are_offered_and_answered(page, demo_checkpoint, word_model):
    (example, *_) = find_examples(str(demo_checkpoint))
    page.reset()
    page.use_example(example.question)
    answer = page.submit()
    assert answer == greedy_answer(*word_model, [user_turn(example.question, open_rgb(example.image))])


def test_answer_api(app_url, word_model, chat_files):
    client = Client(app_url, verbose=False)
    answer = client.predict(handle_file(str(chat_files / "image1.png")), QUESTION, api_name="/answer")
    assert answer == greedy_answer(*word_model, [user_turn(QUESTION, open_rgb(chat_files / "image1.png"))])
    with pytest.raises(AppError, match="notes.txt is not an image"):
        client.predict(handle_file(str(chat_files / "notes.txt")), QUESTION, api_name="/answer")


def test_screenshot_tool(demo_checkpoint, word_model, tmp_path, capsys):
    from tinyllava_hf.chat.screenshot import main as screenshot_main

    output = tmp_path / "docs" / "chat.png"
    assert screenshot_main([str(demo_checkpoint), str(output), f"--max-new-tokens={MAX_NEW_TOKENS}"]) == 0
    with Image.open(output) as shot:
        assert shot.format == "PNG" and shot.width >= 1000
    # It held the demo's first two example questions about the first example's image.
    first, second, *_ = find_examples(str(demo_checkpoint))
    image = open_rgb(first.image)
    answer = greedy_answer(*word_model, [user_turn(first.question, image)])
    follow_up = [user_turn(first.question, image), assistant_turn(answer), user_turn(second.question)]
    printed = capsys.readouterr().out
    assert f"Q: {first.question}\nA: {answer}\n" in printed
    assert f"Q: {second.question}\nA: {greedy_answer(*word_model, follow_up)}\n" in printed
