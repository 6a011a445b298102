"""Model cards and Hub publishing for TinyLLaVA checkpoints.

`write_model_card(dir)` writes `dir/README.md` from what the directory holds; `tinyllava-card` and `tinyllava-push`
are the command-line front ends (see `model_cards/README.md`).
"""

from .card import render_model_card, write_model_card
from .eval_results import merge_eval_results
from .gguf_card import write_gguf_card
from .publish import PublishError, push

__all__ = ["PublishError", "merge_eval_results", "push", "render_model_card", "write_gguf_card", "write_model_card"]
