"""The offline end-to-end demo, `tinyllava-demo` (also `tinyllava-train demo`): synthetic data, a tiny model trained
through `tinyllava-train`, evaluation, model card and pipeline. See [`tinyllava_hf.demo.run`]."""

from .run import main

__all__ = ["main"]
