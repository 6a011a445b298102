"""A training LM head that scores only the supervised positions.

TRL's `SFTTrainer` computes the loss through `model(**batch, fused_lm_head=True)`: a forward that TRL patches onto
the model instance and that runs the backbone, then its chunked log-prob kernel. Off Triton devices (CPU) that
kernel scores *every* position, so `lm_head` projects the system prompt, the user turns, the image placeholders and
the padding too, and its `(tokens, vocab)` tiles dominate the step (issue 7). In a multimodal SFT batch only the
answer tokens are supervised, often a few percent of the sequence.

`install_supervised_lm_head` replaces TRL's patch with one that gathers the hidden states at positions whose shifted
label is not -100 and runs the same kernel on those rows only. It returns TRL's `FusedCausalLMOutput`, so
`SFTTrainer.compute_loss` and its metrics (entropy, mean_token_accuracy, num_tokens) are unchanged. The loss equals
the model's own `forward(labels=...)` loss: same shift, same ignore index, `lm_head.bias` included (Phi), logit
soft-capping included (Gemma 2 style configs).
"""

import functools
import types

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

IGNORE_INDEX = -100
# Vocabulary tile of the kernel: bounds the (supervised tokens, tile) temporaries.
VOCAB_CHUNK_SIZE = 32768
METRIC_OUTPUTS = ("log_probs", "entropy", "is_top1")


def supervised_log_probs(
    hidden_states: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Linear, softcap: float | None = None
) -> FusedCausalLMOutput:
    """Next-token log-probabilities at the supervised positions, laid out like TRL's fused head output.

    Args:
        hidden_states: `(batch, seq_len, hidden)` last hidden states of the backbone.
        labels: `(batch, seq_len)` unshifted labels, -100 where unsupervised.
        lm_head: the output projection (weight `(vocab, hidden)`, optional bias `(vocab,)`).
        softcap: `final_logit_softcapping` of the text config, if any.

    Returns:
        `FusedCausalLMOutput` whose `log_probs`, `entropy`, `is_top1` and `label_mask` are `(batch, seq_len - 1)`,
        zero off the supervised positions, and whose `loss` is the mean negative log-likelihood over them.
    """
    weight, bias = lm_head.weight, lm_head.bias
    if isinstance(weight, DTensor):  # FSDP2 shards the head; the hidden states are a plain tensor
        weight, bias = weight.full_tensor(), None if bias is None else bias.full_tensor()
    labels = labels[:, 1:].to(weight.device)
    mask = labels != IGNORE_INDEX
    hidden = hidden_states[:, :-1][mask].to(weight.device)
    # The kernel reads the head's parameters directly, so under ZeRO-3 they must be gathered explicitly.
    with maybe_gather_lm_head_ctx(weight, bias):
        per_token = ChunkedLogProbFunction.apply(
            hidden, weight, bias, labels[mask], 1.0, VOCAB_CHUNK_SIZE, softcap, 1.0, METRIC_OUTPUTS
        )
    # masked_scatter keeps the result connected to the graph even when a micro-batch has no supervised token.
    log_probs, entropy, _, _, is_top1 = (
        None if values is None else values.new_zeros(mask.shape).masked_scatter(mask, values) for values in per_token
    )
    loss = -log_probs.sum() / mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)


def install_supervised_lm_head(model: PreTrainedModel) -> None:
    """Makes `model(..., labels=labels, fused_lm_head=True)` score only the supervised positions.

    Patches the instance (like TRL does), so the call still goes through any DDP / PEFT wrapper around `model`.
    Without `fused_lm_head=True` the class's own forward runs, so evaluation and generation are unchanged.

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
        output = supervised_log_probs(hidden_states, labels, self.get_output_embeddings(), softcap)
        if num_items_in_batch is not None:
            output.loss = -output.log_probs.sum() / num_items_in_batch
        return output

    model.forward = types.MethodType(forward, model)
