"""`python -m tinyllava_hf.model_cards card ...` is `tinyllava-card ...`; `python -m tinyllava_hf.model_cards push ...` is `tinyllava-push ...`."""

import sys

from .cli import card_main, push_main

COMMANDS = {"card": card_main, "push": push_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: python -m tinyllava_hf.model_cards {card,push} ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
