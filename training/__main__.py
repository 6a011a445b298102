"""`python -m tinyllava_hf.training` is `tinyllava-train`."""

from .cli import main

if __name__ == "__main__":
    main()
