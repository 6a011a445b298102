"""`python -m tinyllava_hf.chat` is `tinyllava-chat`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
