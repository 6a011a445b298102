"""`tinyllava-chat MODEL --cli` as a user scripts it: a subprocess reading its questions from piped stdin."""

import os
import subprocess
import sys

from chat_helpers import (
    MAX_NEW_TOKENS,
    assistant_turn,
    greedy_answer,
    user_turn,
)
from PIL import Image

QUESTION, FOLLOW_UP, THIRD = "What is shown in the image?", "What color is the square?", "Is it on the left?"


def test_piped_conversation_matches_greedy_generate(word_model_dir, word_model, chat_files):
    script = "\n".join(
        [
            f"/image {chat_files / 'image0.png'}",
            QUESTION,
            FOLLOW_UP,
            f"/image {chat_files / 'notes.txt'}",  # refused: the conversation goes on without it
            f"/image {chat_files / 'missing.png'}",
            THIRD,
            "/reset",
            f"/image {chat_files / 'image1.png'}",
            QUESTION,
            "/exit",
            "never asked",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-m", "tinyllava_hf.chat", str(word_model_dir), "--cli", f"--max-new-tokens={MAX_NEW_TOKENS}"],
        check=False,  # the exit status is asserted below, with stderr in the message
        input=script + "\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr

    images = [Image.open(chat_files / f"image{seed}.png").convert("RGB") for seed in (0, 1)]
    first = greedy_answer(*word_model, [user_turn(QUESTION, images[0])])
    conversation = [user_turn(QUESTION, images[0]), assistant_turn(first), user_turn(FOLLOW_UP)]
    second = greedy_answer(*word_model, conversation)
    third = greedy_answer(*word_model, [*conversation, assistant_turn(second), user_turn(THIRD)])
    after_reset = greedy_answer(*word_model, [user_turn(QUESTION, images[1])])
    expected = [first, second, third, after_reset]
    assert result.stdout.splitlines() == expected  # standard output holds the answers, one line each
    assert "notes.txt is not an image" in result.stderr
    assert "No such file" in result.stderr and "missing.png" in result.stderr
    assert "[conversation reset]" in result.stderr
