"""`python -m training` is `tinyllava-train`."""

from .cli import main

if __name__ == "__main__":
    main()
