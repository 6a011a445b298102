"""`--packing true`: best-fit decreasing rows of whole samples, the same loss and gradients as the padded batch, no
attention across samples, a packed `tinyllava-train` run, and the dataloader worker cap."""

import json
import logging
import math
import os
import random

import pytest
import torch
from conftest import assemble, chat, make_image
from training_helpers import A1, A2, Q1, Q2, llava_record, train_argv, write_llava_dataset
from trl import SFTConfig

from tinyllava_hf.training.cli import run
from tinyllava_hf.training.collator import IGNORE_INDEX, TinyLlavaCollator
from tinyllava_hf.training.data import text_to_parts
from tinyllava_hf.training.packed_attention import PACKED_SDPA, enable_packed_attention
from tinyllava_hf.training.packing import PackedBatchSampler, best_fit_decreasing, next_fit
from tinyllava_hf.training.supervised_head import install_supervised_lm_head
from tinyllava_hf.training.train import prepare_args

MAX_LENGTH = 384  # per row; positions restart at each sample, so they stay below the tiny LLMs' 256


def sample(*turns, seed=0):
    messages = [{"role": ("user", "assistant")[i % 2], "content": text_to_parts(t)} for i, t in enumerate(turns)]
    num_images = sum(t.count("<image>") for t in turns)
    return {"id": f"s{seed}", "messages": messages, "images": [make_image(seed=seed + i) for i in range(num_images)]}


def mixed_samples():
    """Two-image, one-image and text-only samples of different lengths."""
    return [
        sample(Q1, A1, Q2, A2, seed=0),
        sample("What is this?", "Nothing to see.", seed=1),
        sample("<image>\n<image>\nCompare them.", "The left one is red.", seed=2),
        sample(Q1, "Red.", seed=4),
        sample("Count to three.", "One two three.", Q2, "Red.", seed=5),
    ]


def test_best_fit_decreasing_fills_bins_tightly():
    lengths = [5, 4, 3, 3, 2, 2, 1]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert sorted(sum(lengths[i] for i in b) for b in bins) == [10, 10]
    with pytest.raises(ValueError, match="item 1 of length 11"):
        best_fit_decreasing([3, 11], 10)


def test_packed_batch_sampler_covers_every_sample_once_per_epoch_in_full_rows():
    lengths = [random.Random(i).randint(20, 700) for i in range(500)]
    sampler = PackedBatchSampler(lengths, max_length=1024, rows_per_batch=3, buffer_size=128, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        # The batch's samples, laid out in order, need no more rows than the sampler planned.
        assert all(len(next_fit([lengths[i] for i in b], 1024)) <= 3 for b in batches)
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    assert sum(lengths) / (len(sampler.rows) * 1024) > 0.95  # best-fit decreasing leaves little room


def test_packed_rows_restart_positions_mask_boundaries_and_keep_image_order(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    samples = mixed_samples()
    encoded = [TinyLlavaCollator(processor).encode(s) for s in samples]
    batch = TinyLlavaCollator(processor, max_length=MAX_LENGTH, packing=True)(samples)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape[1] <= MAX_LENGTH
    rows = next_fit([len(e["input_ids"]) for e in encoded], MAX_LENGTH)
    assert len(batch["input_ids"]) == len(rows) < len(samples)
    for row_index, row in enumerate(rows):
        start = 0
        for e in (encoded[i] for i in row):
            size = len(e["input_ids"])
            span = slice(start, start + size)
            assert torch.equal(batch["input_ids"][row_index, span], e["input_ids"])
            assert torch.equal(batch["position_ids"][row_index, span], torch.arange(size))
            assert batch["labels"][row_index, start] == IGNORE_INDEX
            assert torch.equal(batch["labels"][row_index, start + 1 : start + size], e["labels"][1:])
            start += size
        assert (batch["labels"][row_index, start:] == IGNORE_INDEX).all()
    expected_pixels = torch.cat([e["pixel_values"] for e in encoded if e["pixel_values"] is not None])
    assert torch.equal(batch["pixel_values"], expected_pixels)


def supervised_sum_and_grads(model, batch):
    """Summed token NLL through the training head, normalised like the Trainer (`num_items_in_batch`)."""
    model.zero_grad()
    num_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    output = model(**batch, fused_lm_head=True, num_items_in_batch=num_items)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return -output.log_probs.sum().detach(), output.loss.detach(), num_items, grads


def set_attention(model, attention):
    """`attention` is a transformers implementation, or "packed" for what `--packing true` switches sdpa to."""
    if attention == "packed":
        assert enable_packed_attention(model)
        assert model.config.get_text_config()._attn_implementation == PACKED_SDPA
    else:
        model.set_attn_implementation(attention)


@pytest.mark.parametrize(
    "family, attention, flatten",
    [
        ("llama", "sdpa", False),
        ("qwen2", "eager", False),
        ("phi", "sdpa", True),
        ("llama", "packed", False),  # its padded batch takes the sdpa path, with sdpa's mask
        ("gemma", "packed", False),
        ("phi", "packed", False),
    ],
)
def test_packed_step_equals_padded_step(components_dir, family, attention, flatten):
    model, processor = assemble(components_dir, family, "siglip")
    set_attention(model, attention)
    model.train()
    install_supervised_lm_head(model)
    samples = mixed_samples()
    padded = TinyLlavaCollator(processor, max_length=MAX_LENGTH)(samples)
    packing = TinyLlavaCollator(processor, max_length=MAX_LENGTH, packing=True)
    packing.flatten_packed_rows = flatten  # one row, as for flash attention
    packed = packing(samples)
    assert (len(packed["input_ids"]) == 1) == flatten

    padded_sum, padded_loss, padded_items, padded_grads = supervised_sum_and_grads(model, padded)
    packed_sum, packed_loss, packed_items, packed_grads = supervised_sum_and_grads(model, packed)
    assert packed_items == padded_items
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-5, atol=0)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=0)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The model's own loss (full logits, `ForCausalLMLoss`) agrees too. Without a cache: transformers detects packed
    # rows only when there is none (TRL's compute_loss passes use_cache=False).
    own_loss = type(model).forward
    torch.testing.assert_close(
        own_loss(model, **packed, use_cache=False).loss, own_loss(model, **padded).loss, rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager", "packed"])
def test_attention_never_crosses_samples_in_a_packed_row(components_dir, attention):
    model, processor = assemble(components_dir, "llama", "siglip")
    set_attention(model, attention)
    model.eval()
    samples = [
        sample("<image>\nWhat?", "Red.", seed=0),
        sample("<image>\nWhat?", "Blue.", seed=1),
        sample("Hi.", "Yes."),
    ]
    batch = TinyLlavaCollator(processor, max_length=MAX_LENGTH, packing=True)(samples)
    assert len(batch["input_ids"]) == 1
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    first, second, third = (slice(a, b) for a, b in zip(starts, starts[1:] + [None]))
    changed = {key: value.clone() for key, value in batch.items()}
    text = changed["input_ids"][0, second] != processor.image_token_id
    changed["input_ids"][0, second][text] = torch.randint(
        5, 300, (int(text.sum()),), generator=torch.Generator().manual_seed(0)
    )
    changed["pixel_values"][1] = torch.randn_like(changed["pixel_values"][1])  # the second sample's image

    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]
        changed_logits = model(**changed, use_cache=False).logits[0]
    assert not torch.allclose(logits[second], changed_logits[second], atol=1e-3)
    torch.testing.assert_close(changed_logits[first], logits[first], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed_logits[third], logits[third], rtol=0, atol=1e-6)


def test_packed_attention_keeps_padded_batches_and_generation_as_sdpa(components_dir):
    """Outside packed rows (left-padded batches, a KV cache), the packed attention is transformers' sdpa."""
    reference, processor = assemble(components_dir, "llama", "siglip")
    model, _ = assemble(components_dir, "llama", "siglip")
    set_attention(model, "packed")
    conversations = [chat("What color is it?", make_image(seed=0)), chat("Describe the picture in detail.")]
    processor.tokenizer.padding_side = "left"
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip
    assert not inputs["attention_mask"].all()  # the batch is padded
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=1e-6)
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(generated, reference.generate(**inputs, max_new_tokens=12, do_sample=False))
    # Several new tokens on top of a KV cache, with no mask at all: causal to the cached keys too.
    ids = inputs["input_ids"][1:, -40:]
    logits = []
    with torch.no_grad():
        for m in (model, reference):
            cache = m(input_ids=ids[:, :20], use_cache=True).past_key_values
            output = m(input_ids=ids[:, 20:], cache=cache, use_cache=True)
            assert output.past_key_values.get_seq_length() == 40
            logits.append(output.logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-6)


def test_packed_attention_leaves_sliding_window_and_other_attention_alone(components_dir):
    model, _ = assemble(components_dir, "qwen2", "siglip")
    model.config.text_config.layer_types = ["sliding_attention", "full_attention"]
    assert not enable_packed_attention(model)
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    model, _ = assemble(components_dir, "llama", "siglip")
    model.set_attn_implementation("eager")
    assert not enable_packed_attention(model)
    assert model.config.get_text_config()._attn_implementation == "eager"


@pytest.mark.parametrize("recipe", ["finetune", "finetune_lora"])
def test_packed_training_run(components_dir, tmp_path, caplog, recipe):
    """Packed rows through the whole CLI, with activation checkpointing (full fine-tune) and with LoRA."""
    records = [
        llava_record("a", "0.png", Q1, A1, Q2, A2),
        llava_record("b", None, "Count to three.", "One two three."),
        llava_record("c", ["1.png", "2.png"], "<image>\n<image>\nCompare them.", "The left one is red."),
        *[llava_record(f"d{i}", f"{i % 4}.png", "<image>\nWhat is in the image?", "red square") for i in range(5)],
    ]
    data = write_llava_dataset(tmp_path, records=records)
    argv = train_argv(
        recipe,
        tmp_path / "out",
        data,
        "--llm", str(components_dir / "llama"),
        "--vision_tower", str(components_dir / "siglip"),
        "--packing", "true",
        "--max_length", "128",
        "--per_device_train_batch_size", "2",
        "--activation_checkpointing", str(recipe == "finetune").lower(),
        max_steps=2,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="tinyllava_hf.training"):
        output_dir = run(argv)
    assert "Packing: 8 samples in" in caplog.text
    assert f"attends within each packed sample only ({PACKED_SDPA})" in caplog.text
    # The switch is for the run only: the checkpoint loads with plain sdpa.
    assert "attn_implementation" not in (output_dir / "config.json").read_text()
    record = json.loads((output_dir / "tinyllava_run.json").read_text())
    stage = record["stages"][-1] if "stages" in record else record
    assert stage["hyperparameters"]["packing"] is True
    assert stage["steps"] == 2
    assert math.isfinite(stage["final_loss"])


def test_packing_needs_max_length(tmp_path):
    with pytest.raises(ValueError, match="--packing true needs --max_length"):
        prepare_args(SFTConfig(output_dir=str(tmp_path), bf16=False, packing=True, max_length=None))


@pytest.mark.parametrize(
    "cpus, local_processes, requested, expected",
    [(2, 1, 8, 2), (2, 2, 8, 1), (16, 2, 4, 4), (2, 4, 8, 0), (2, 1, 0, 0)],
)
def test_dataloader_workers_capped_at_the_cpus_and_kept_alive(
    tmp_path, monkeypatch, caplog, cpus, local_processes, requested, expected
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, dataloader_num_workers=requested)
    with caplog.at_level(logging.INFO, logger="tinyllava_hf.training.train"):
        args = prepare_args(args)
    assert args.dataloader_num_workers == expected
    assert args.dataloader_persistent_workers == (expected > 0)
    assert (f"Using {expected} dataloader workers instead of {requested}" in caplog.text) == (expected < requested)
