"""`tinyllava-chat MODEL [--cli]` (also `python -m tinyllava_hf.chat`): chat with a checkpoint in the browser or in
the terminal."""

import argparse
import logging
import sys

from .session import DTYPES, GenerationSettings


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tinyllava-chat",
        description="Chat with a TinyLLaVA checkpoint: a local web app (default) or the terminal (--cli).",
    )
    parser.add_argument("model", help="a local checkpoint directory or a Hub id (offline: from the local cache)")
    parser.add_argument("--cli", action="store_true", help="chat in the terminal instead of the browser")
    web = parser.add_argument_group("web app")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    web.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    web.add_argument("--share", action="store_true", help="also publish a temporary public link through Gradio")
    generation = parser.add_argument_group("generation (the web app's initial settings)")
    generation.add_argument("--max-new-tokens", type=positive_int, default=GenerationSettings.max_new_tokens)
    generation.add_argument(
        "--temperature", type=float, default=GenerationSettings.temperature, help="0 (default) decodes greedily"
    )
    generation.add_argument("--top-p", type=float, default=GenerationSettings.top_p, help="used when sampling")
    model = parser.add_argument_group("model")
    model.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    model.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the checkpoint's dtype")
    args = parser.parse_args(argv)
    try:
        args.settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests to the local server
    from .session import ChatModel

    try:
        chat_model = ChatModel.load(args.model, device=args.device, dtype=args.dtype)
    except OSError as error:
        print(f"tinyllava-chat: {error}", file=sys.stderr)
        return 2
    if args.cli:
        from .terminal import TerminalChat

        return TerminalChat(chat_model, args.settings).run()
    from .examples import find_examples
    from .web import serve

    serve(chat_model, args.model, args.settings, find_examples(args.model), args.host, args.port, args.share)
    return 0
