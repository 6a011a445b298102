"""A screenshot of a real conversation in the web app, for the README.

    python -m tinyllava_hf.chat.screenshot demo_output/finetune docs/chat_screenshot.png

starts the app on the checkpoint, opens it in headless Chromium, attaches the image of the checkpoint's first example
(the demo's first held-out question), asks that question and then the next example's question about the same
image, and saves the page. `--image` and `--question` (repeatable) choose another conversation.
"""

import argparse
import sys
from pathlib import Path

from .browser import ChatPage
from .examples import find_examples
from .session import ChatModel, GenerationSettings
from .web import serve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tinyllava_hf.chat.screenshot", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="checkpoint directory or Hub id")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--image", type=Path, help="image to attach (default: the first example's)")
    parser.add_argument(
        "--question", action="append", help="a question to ask, in order (default: the first two examples' questions)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--window", default="1280x1250", help="browser window size, WIDTHxHEIGHT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    examples = find_examples(args.model)
    image = args.image or (examples[0].image if examples else None)
    questions = args.question or [example.question for example in examples[:2]]
    if image is None or not questions:
        sys.exit(f"{args.model} has no examples: pass --image and --question.")
    width, height = (int(side) for side in args.window.split("x"))

    chat_model = ChatModel.load(args.model)
    blocks = serve(chat_model, args.model, GenerationSettings(args.max_new_tokens), examples, block=False)
    try:
        page = ChatPage(blocks.local_url, window=(width, height))
        try:
            page.attach(image)
            for question in questions:
                print(f"Q: {question}\nA: {page.ask(question)}")
            print(f"Saved {page.screenshot(args.output)}")
        finally:
            page.close()
    finally:
        blocks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
