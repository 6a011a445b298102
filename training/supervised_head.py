"""A training LM head that scores only the supervised positions, in bounded memory.

TRL's `SFTTrainer` computes the loss through `model(**batch, fused_lm_head=True)`, a forward it patches onto the
model instance. Off Triton devices (CPU) TRL's kernel scores *every* position, so `lm_head` projects the system
prompt, the user turns, the image placeholders and the padding too, and its `(tokens, vocab)` tiles dominate the step
(issue 7). In a multimodal SFT batch only the answer tokens are supervised, often a few percent of the sequence.

`install_supervised_lm_head` replaces TRL's patch with our own: it gathers the hidden states at positions whose
shifted label is not -100 and calls the `lm_head` *module* on them, a bounded number of rows at a time, each chunk
under activation checkpointing so that no `(rows, vocab)` tensor outlives its chunk. Calling the module, rather than
reading its weight, lets every distributed strategy do its own bookkeeping: FSDP2 gathers the sharded weight in its
forward hook and reduce-scatters its gradient (`fully_shard` supports per-chunk head calls), DeepSpeed ZeRO-3 gathers
and re-partitions it, DDP all-reduces it. Nothing of TRL's private kernels is used.

The output carries the fields `SFTTrainer.compute_loss` reads (`log_probs`, `entropy`, `is_top1`, `label_mask`), so
its loss, gradient accumulation and metrics (entropy, mean_token_accuracy, num_tokens) are unchanged. The loss equals
the model's own `forward(labels=...)` loss: same shift, same ignore index, `lm_head.bias` included (Phi), logit
soft-capping included (Gemma 2 style configs), logits upcast to float32 before the softmax.
"""

import functools
import types
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

IGNORE_INDEX = -100
# Logits per chunk (rows x vocab): 2^24 float32 values are 64 MiB, so a chunk's logits, log-softmax and gradient stay
# within a few hundred MiB whatever the number of supervised tokens (512 rows of a 32k vocabulary, 110 of Qwen2's).
LOGITS_PER_CHUNK = 2**24


@dataclass
class SupervisedLMOutput(ModelOutput):
    """What `model(..., labels=labels, fused_lm_head=True)` returns during training.

    Every per-token field is `(batch, seq_len - 1)`, aligned with the shifted labels and zero where the label is -100.

    Args:
        loss: negative log-likelihood summed over the supervised tokens and divided by `num_items_in_batch` (their
            count when not passed).
        log_probs: log-probability of each next-token label (differentiable).
        entropy: entropy of the next-token distribution (no gradient).
        is_top1: whether the label is the most likely next token.
        label_mask: whether the label is not -100.
    """

    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None


def _score_rows(
    lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores one chunk of supervised rows.

    Args:
        lm_head: the output projection module.
        hidden: `(rows, hidden)` hidden states.
        targets: `(rows,)` next-token labels.
        softcap: `final_logit_softcapping`, or None.

    Returns:
        `(rows,)` label log-probabilities, `(rows,)` entropies (no gradient) and `(rows,)` top-1 hits.
    """
    logits = lm_head(hidden)
    if softcap:  # in the head's dtype, then upcast: the order of the model's own forward and loss
        logits = torch.tanh(logits / softcap) * softcap
    log_probs = logits.float().log_softmax(-1)
    label_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        is_top1 = log_probs.argmax(-1) == targets
    return label_log_probs, entropy, is_top1


def supervised_log_probs(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    softcap: float | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> SupervisedLMOutput:
    """Next-token log-probabilities at the supervised positions only.

    Args:
        hidden_states: `(batch, seq_len, hidden)` last hidden states of the backbone.
        labels: `(batch, seq_len)` unshifted labels, -100 where unsupervised.
        lm_head: the output projection module (an `nn.Linear` `(hidden -> vocab)`, possibly wrapped by FSDP2 or
            DeepSpeed hooks); it is called on `(rows, hidden)` inputs holding only supervised positions.
        softcap: `final_logit_softcapping` of the text config, if any.
        num_items_in_batch: the loss denominator across gradient accumulation (and ranks); by default the number of
            supervised tokens here.

    Returns:
        [`SupervisedLMOutput`].
    """
    labels = labels[:, 1:].to(hidden_states.device)
    mask = labels != IGNORE_INDEX
    hidden, targets = hidden_states[:, :-1][mask], labels[mask]
    rows_per_chunk = max(1, LOGITS_PER_CHUNK // lm_head.out_features)
    # At least one (possibly empty) chunk: every rank must call lm_head, or DDP / FSDP / ZeRO-3 would wait for a
    # gradient that never comes when a micro-batch has no supervised token.
    chunks = [
        checkpoint(_score_rows, lm_head, hidden[start : start + rows_per_chunk],
                   targets[start : start + rows_per_chunk], softcap, use_reentrant=False)
        for start in range(0, max(len(targets), 1), rows_per_chunk)
    ]  # fmt: skip
    # masked_scatter keeps the result connected to the graph even when the micro-batch has no supervised token.
    log_probs, entropy, is_top1 = (
        torch.zeros(mask.shape, dtype=values[0].dtype, device=mask.device).masked_scatter(mask, torch.cat(values))
        for values in zip(*chunks)
    )
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / denominator
    return SupervisedLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)


def install_supervised_lm_head(model: PreTrainedModel) -> None:
    """Makes `model(..., labels=labels, fused_lm_head=True)` score only the supervised positions.

    Patches the instance (like TRL does), so the call still goes through any DDP / FSDP / DeepSpeed / PEFT wrapper
    around `model`. Without `fused_lm_head=True` the class's own forward runs, so evaluation and generation are
    unchanged.

    Args:
        model: a causal LM whose `base_model` returns `last_hidden_state` (the TinyLLaVA backbone) and whose
            `get_output_embeddings()` is the LM head. For a PEFT model pass `get_base_model()`.
    """
    class_forward = type(model).forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    # Keep the class signature: `generate` validates its model kwargs against it.
    @functools.wraps(class_forward)
    def forward(self, *args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return class_forward(self, *args, **kwargs)
        kwargs["use_cache"] = False
        hidden_states = self.base_model(*args, **kwargs).last_hidden_state
        # The head is looked up on each call: FSDP and PEFT may replace it after this patch.
        return supervised_log_probs(hidden_states, labels, self.get_output_embeddings(), softcap, num_items_in_batch)

    model.forward = types.MethodType(forward, model)
