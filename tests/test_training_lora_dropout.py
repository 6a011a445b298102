"""The fused LoRA dropout gives peft's exact losses and gradients while saving less for backward."""

import copy

import pytest
import torch
from conftest import assemble, chat, make_image
from peft import get_peft_model

from tinyllava_hf.training.arguments import ModelArguments
from tinyllava_hf.training.lora_dropout import DropoutLinear
from tinyllava_hf.training.tuning import apply_lora, lora_config

LORA_ARGS = ModelArguments(
    model_name_or_path="unused", tune_llm="lora", tune_connector="full", lora_r=4, lora_alpha=8, lora_dropout=0.3
)


@pytest.fixture(scope="module")
def model_and_batch(components_dir):
    model, processor = assemble(components_dir, "llama", "siglip")
    conversation = chat(image=make_image(), answer="A red square.")
    batch = processor(text=processor.apply_chat_template(conversation), images=make_image(), return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == processor.image_token_id, -100)
    return model, batch


def wrap(model, fused: bool):
    """A LoRA copy of `model`; both variants get identical adapter weights (B random, so dropout matters)."""
    torch.manual_seed(0)
    model = copy.deepcopy(model)
    peft_model = apply_lora(model, LORA_ARGS) if fused else get_peft_model(model, lora_config(LORA_ARGS))
    generator = torch.Generator().manual_seed(1)
    for name, parameter in sorted(peft_model.named_parameters()):
        if "lora_" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    return peft_model.train()


def loss_grads_and_saved_bytes(model, batch, seed=123, autocast=False):
    saved = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(seed)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(saved.values())


@pytest.mark.parametrize(
    ("checkpointing", "autocast"),
    [(False, False), (True, False), (False, True)],
    ids=["fp32", "activation-checkpointing", "bf16-autocast"],
)
def test_fused_dropout_equals_peft_dropout(model_and_batch, checkpointing, autocast):
    model, batch = model_and_batch
    reference, fused = wrap(model, fused=False), wrap(model, fused=True)
    fused_layers = [m for m in fused.modules() if isinstance(m, DropoutLinear)]
    assert fused_layers and not any(isinstance(m, DropoutLinear) for m in reference.modules())
    if checkpointing:
        for peft_model in (reference, fused):
            peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            peft_model.enable_input_require_grads()

    reference_loss, reference_grads, reference_saved = loss_grads_and_saved_bytes(reference, batch, autocast=autocast)
    fused_loss, fused_grads, fused_saved = loss_grads_and_saved_bytes(fused, batch, autocast=autocast)
    assert torch.equal(fused_loss, reference_loss)
    assert fused_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        assert torch.equal(fused_grads[name], grad), name
    if not checkpointing:
        assert fused_saved < reference_saved
    if autocast:
        return

    # Dropout is really active in training (another seed, another loss) and off in eval.
    assert not torch.equal(loss_grads_and_saved_bytes(fused, batch, seed=7)[0], fused_loss)
    with torch.no_grad():
        assert torch.equal(fused.eval()(**batch).logits, reference.eval()(**batch).logits)


def test_adapter_keys_and_merge_are_unchanged(model_and_batch):
    model, _ = model_and_batch
    reference, fused = wrap(model, fused=False), wrap(model, fused=True)
    assert fused.state_dict().keys() == reference.state_dict().keys()
    merged, merged_reference = fused.merge_and_unload(), reference.merge_and_unload()
    for (name, tensor), (_, expected) in zip(merged.state_dict().items(), merged_reference.state_dict().items()):
        assert torch.equal(tensor, expected), name
