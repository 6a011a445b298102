"""The offline end-to-end demo behind `tinyllava-train demo` (see [`training.demo.run`])."""

from .run import main

__all__ = ["main"]
