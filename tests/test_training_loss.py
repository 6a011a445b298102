"""The training LM head that scores only supervised positions: same loss, gradients and metrics as the model's own
`forward(labels=...)`, with lm_head bias (Phi), tied embeddings (Qwen2), PEFT and gradient checkpointing, and
through `TinyLlavaSFTTrainer.compute_loss`; `lm_head` sees the supervised rows only, a bounded chunk at a time."""

import pytest
import torch
from conftest import assemble, make_image
from datasets import Dataset
from torch.utils._python_dispatch import TorchDispatchMode
from training_helpers import A1, A2, Q1, Q2
from trl import SFTConfig

from tinyllava_hf.training import supervised_head
from tinyllava_hf.training.arguments import ModelArguments
from tinyllava_hf.training.collator import IGNORE_INDEX, TinyLlavaCollator
from tinyllava_hf.training.data import text_to_parts
from tinyllava_hf.training.supervised_head import install_supervised_lm_head
from tinyllava_hf.training.trainer import TinyLlavaSFTTrainer
from tinyllava_hf.training.tuning import apply_lora


def batch_for(processor):
    def sample(*turns, seed=0):
        messages = [{"role": ("user", "assistant")[i % 2], "content": text_to_parts(t)} for i, t in enumerate(turns)]
        return {"id": "s", "messages": messages, "images": [make_image(seed=seed)] * Q1.count("<image>")}

    return TinyLlavaCollator(processor)([sample(Q1, A1, Q2, A2), sample(Q1, "Red.", seed=1)])


def record_head_inputs(lm_head) -> list[torch.Size]:
    """The input shapes of every `lm_head` call from now on."""
    shapes = []
    lm_head.register_forward_hook(lambda module, args, output: shapes.append(args[0].shape))
    return shapes


def reference_metrics(model, batch):
    """Loss, entropy and top-1 accuracy from the full logits of the model's own forward."""
    output = model(**batch)
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    log_probs = logits[mask].float().log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    accuracy = (logits[mask].argmax(-1) == labels[mask]).float().mean()
    return output.loss, entropy, accuracy


@pytest.mark.parametrize("family", ["phi", "qwen2", "gemma"])
def test_supervised_head_equals_model_loss_and_gradients(components_dir, family, monkeypatch):
    model, processor = assemble(components_dir, family, "siglip")
    vocab = model.lm_head.out_features
    monkeypatch.setattr(supervised_head, "LOGITS_PER_CHUNK", 5 * vocab)  # several chunks of 5 rows
    model.train()
    if model.lm_head.bias is not None:  # Phi: make the bias matter (it is initialised to zero)
        torch.nn.init.normal_(model.lm_head.bias)
    batch = batch_for(processor)
    loss, entropy, accuracy = reference_metrics(model, batch)
    loss.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    install_supervised_lm_head(model)
    head_inputs = record_head_inputs(model.lm_head)
    output = model(**batch, fused_lm_head=True)
    output.loss.backward()
    torch.testing.assert_close(output.loss, loss, rtol=1e-5, atol=1e-6)
    mask = output.label_mask
    # Our head, observably: lm_head projected the supervised rows only, 5 at a time (and again in the backward,
    # which recomputes each chunk instead of keeping its logits).
    num_supervised = int(mask.sum())
    assert num_supervised > 10
    forward_rows = [shape[0] for shape in head_inputs[: len(head_inputs) // 2]]
    assert sum(forward_rows) == num_supervised and max(forward_rows) == 5
    assert sorted(shape[0] for shape in head_inputs[len(head_inputs) // 2 :]) == sorted(forward_rows)
    torch.testing.assert_close(output.entropy[mask], entropy, rtol=1e-4, atol=1e-5)
    assert output.is_top1[mask].float().mean() == accuracy
    assert (output.log_probs[~mask] == 0).all()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)
    # Outside training the class's own forward runs (logits, generation).
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_supervised_head_without_supervised_tokens_gives_a_zero_loss_with_gradients(components_dir):
    """A micro-batch whose answers were all truncated away still calls lm_head (DDP / FSDP / ZeRO-3 wait for its
    gradient on every rank) and contributes a differentiable zero."""
    model, processor = assemble(components_dir, "llama", "siglip")
    model.train()
    install_supervised_lm_head(model)
    head_inputs = record_head_inputs(model.lm_head)
    batch = batch_for(processor)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    output = model(**batch, fused_lm_head=True)
    output.loss.backward()
    assert output.loss == 0 and not output.label_mask.any()
    assert head_inputs[0][0] == 0
    assert model.lm_head.weight.grad is not None and not model.lm_head.weight.grad.any()


def test_supervised_head_with_lora_and_gradient_checkpointing(components_dir):
    model, processor = assemble(components_dir, "llama", "siglip")
    model.train()
    peft_model = apply_lora(model, ModelArguments(model_name_or_path="x", tune_llm="lora", lora_r=4, lora_alpha=8,
                                                  lora_dropout=0.0))  # fmt: skip
    for parameter in peft_model.parameters():  # make the adapters non-trivial (B starts at zero)
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()
    batch = batch_for(processor)
    loss = peft_model(**batch).loss

    install_supervised_lm_head(peft_model.get_base_model())
    output = peft_model(**batch, fused_lm_head=True)
    torch.testing.assert_close(output.loss, loss, rtol=1e-5, atol=1e-6)
    output.loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


# aten matrix products -> the positions of their two matrix operands.
PRODUCTS = {"mm": (0, 1), "addmm": (1, 2), "bmm": (0, 1), "baddbmm": (1, 2)}


class RowsProjectedBy(TorchDispatchMode):
    """Counts the rows multiplied with `weight` (or a view of it) by matrix products, whatever code issues them."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.storage = weight.untyped_storage().data_ptr()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        operands = PRODUCTS.get(func.overloadpacket.__name__)
        if operands is not None:
            left, right = (args[index] for index in operands)
            if right.untyped_storage().data_ptr() == self.storage:  # hidden @ weight.T
                self.rows += left.shape[-2] * (left.shape[0] if left.ndim == 3 else 1)
            elif left.untyped_storage().data_ptr() == self.storage:  # weight @ hidden.T
                self.rows += right.shape[-1] * (right.shape[0] if right.ndim == 3 else 1)
        return func(*args, **(kwargs or {}))


def test_trainer_compute_loss_uses_supervised_head(components_dir, tmp_path):
    model, processor = assemble(components_dir, "phi", "siglip")
    torch.nn.init.normal_(model.lm_head.bias)
    batch = batch_for(processor)
    model.train()
    expected = model(**batch).loss
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, report_to="none",
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})  # fmt: skip
    trainer = TinyLlavaSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"id": "s"}]),
                                  data_collator=lambda x: x, processing_class=processor)  # fmt: skip
    head_inputs = record_head_inputs(model.lm_head)
    with RowsProjectedBy(model.lm_head.weight) as counter:
        loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # Our head calls the lm_head module (TRL's reads its weight), on the supervised rows only.
    assert [shape[0] for shape in head_inputs] == [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())]
    assert trainer._metrics["train"]["mean_token_accuracy"] and trainer._metrics["train"]["entropy"]
    # The LM head projects the supervised positions only (TRL's own head projects all batch * (seq_len - 1)).
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert 0 < supervised < batch["labels"][:, 1:].numel() / 4
    assert counter.rows == supervised
