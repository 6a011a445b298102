"""Bytes autograd saves for backward in one training forward of the ~0.5B config: full fine-tune vs LoRA variants.

    python -m benchmarks.saved_activations

Unlike peak RSS (`benchmarks.memory`), this counts tensors, not pages: every tensor autograd saves during the
forward (via `torch.autograd.graph.saved_tensors_hooks`), each storage once, parameters excluded. It isolates what a
change to the graph saves from what the allocator does with the memory. Same model, batch and sequence as
`benchmarks.memory` (batch 1, 256 image tokens + ~54 text tokens), the LM head on the last 40 positions.
"""

import argparse

import torch

from .measure import NUM_THREADS, format_table, set_threads, write_results

SEQUENCE_LENGTH = 310
SUPERVISED_POSITIONS = 40
VARIANTS = {  # name -> (tune_llm, lora_dropout, fuse the dropout)
    "full fine-tune": ("full", 0.0, False),
    "LoRA, peft's dropout (p=0.05)": ("lora", 0.05, False),
    "LoRA, fused dropout (p=0.05)": ("lora", 0.05, True),
    "LoRA, no dropout": ("lora", 0.0, False),
}


def saved_bytes(tune_llm: str, dropout: float, fuse: bool) -> tuple[int, float]:
    """(bytes saved for backward, trainable parameters in millions) for one variant, built from scratch."""
    from peft import get_peft_model

    from tinyllava_hf.training.arguments import ModelArguments
    from tinyllava_hf.training.tuning import apply_lora, lora_config, set_trainable

    from .models import build_model, build_tokenizer, config_05b

    config = config_05b(build_tokenizer("qwen2"))
    model = build_model(config).train()
    args = ModelArguments(
        model_name_or_path="unused",
        tune_llm=tune_llm,
        tune_vision_tower="frozen",
        tune_connector="full",
        lora_r=128,
        lora_alpha=256,
        lora_dropout=dropout,
    )
    if tune_llm == "lora":
        model = apply_lora(model, args) if fuse else get_peft_model(model, lora_config(args))
    set_trainable(model, args)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 1000, (1, SEQUENCE_LENGTH), generator=generator)
    input_ids[0, 10 : 10 + 256] = config.image_token_id
    pixel_values = torch.randn(1, 3, 224, 224, generator=generator)

    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=SUPERVISED_POSITIONS)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return sum(saved.values()), trainable / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch intra-op threads")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rows = []
    for name, (tune_llm, dropout, fuse) in VARIANTS.items():
        print(f"[{name}] ...", flush=True)
        nbytes, trainable = saved_bytes(tune_llm, dropout, fuse)
        rows.append({"variant": name, "saved_MB": nbytes / 2**20, "trainable_M": trainable})
    path = write_results("saved_activations", {"sequence_length": SEQUENCE_LENGTH, "variants": rows})
    print(f"~0.5B TinyLLaVA, batch 1 x {SEQUENCE_LENGTH} tokens, fp32: tensors saved for backward by one forward")
    print(format_table(rows, ["variant", "saved_MB", "trainable_M"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
