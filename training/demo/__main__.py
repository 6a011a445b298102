"""`python -m tinyllava_hf.training.demo` is `tinyllava-train demo`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
