"""`python -m tinyllava_hf.demo` is `tinyllava-demo`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
