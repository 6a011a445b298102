"""Peak RSS of full fine-tuning vs LoRA vs LoRA + activation checkpointing at a ~0.5B config, batch 1.

    python -m benchmarks.memory               # each variant measured twice (--rounds)
    python -m benchmarks.memory --include-full-checkpointing   # also full fine-tuning with checkpointing

The model is a Qwen2-0.5B-like LM (random weights) + the 70M config's SigLIP-like tower, fp32. Each variant runs
`tinyllava-train` (the finetune / finetune_lora recipes, 3 steps, batch 1, no data-loader workers) in its own
process; the peak RSS is read when training ends, before the checkpoint is saved (and, for LoRA, merged).
"""

import argparse
import itertools
import tempfile
from pathlib import Path

from .measure import NUM_THREADS, format_table, write_results
from .training import run_worker

VARIANTS = {  # name -> (mode, activation checkpointing)
    "full fine-tune": ("finetune", False),
    "LoRA": ("lora", False),
    "LoRA + activation checkpointing": ("lora", True),
}
STEPS = 3
NUM_SAMPLES = 8


def prepare(workdir: Path) -> dict:
    from .data import write_llava_dataset
    from .models import (
        IMAGE_SIZE,
        build_model,
        build_processor,
        build_tokenizer,
        config_05b,
        count_parameters,
        save_checkpoint,
    )

    tokenizer = build_tokenizer("qwen2")
    model = build_model(config_05b(tokenizer))
    parameters = count_parameters(model)
    save_checkpoint(model, build_processor(tokenizer), workdir / "tinyllava-05b")
    del model
    data_path, image_folder = write_llava_dataset(workdir / "data", NUM_SAMPLES, IMAGE_SIZE)
    paths = {
        "checkpoint": str(workdir / "tinyllava-05b"),
        "data_path": str(data_path),
        "image_folder": str(image_folder),
    }
    return paths, parameters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--include-full-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch intra-op threads per run")
    parser.add_argument("--rounds", type=int, default=2, help="how many times each variant is measured")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if args.include_full_checkpointing:
        variants["full fine-tune + activation checkpointing"] = ("finetune", True)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        paths, parameters = prepare(Path(workdir))
        for round_index, (name, (mode, checkpointing)) in itertools.product(
            range(1, args.rounds + 1), variants.items()
        ):
            print(f"[round {round_index}: {name}] ...", flush=True)
            spec = {
                "mode": mode,
                "implementation": "tinyllava-train",
                "steps": STEPS,
                "batch_size": 1,
                "paths": paths,
                "activation_checkpointing": checkpointing,
                "count_flops": False,
                "threads": args.threads,
            }
            run = run_worker(spec, Path(workdir))
            rows.append(
                {
                    "round": round_index,
                    "variant": name,
                    "peak_RSS_MB": run["peak_rss_mb"],
                    "RSS_before_training_MB": run["rss_before_training_mb"],
                    "trainable_M": run["trainable_parameters"] / 1e6,
                    "step_s": run["median_step_seconds"],
                    "heap_free_held_MB": (run["glibc_heap_at_end"] or {}).get("free_held_mb"),
                    "load_1m": run["load_at_start"]["loadavg_1m"],
                    "run": run,
                }
            )
    full = {row["round"]: row["peak_RSS_MB"] for row in rows if row["variant"] == "full fine-tune"}
    for row in rows:
        row["vs full"] = row["peak_RSS_MB"] / full[row["round"]]
    targets = [
        {
            "round": row["round"],
            "target": "LoRA peak RSS <= 0.5 x full fine-tune",
            "value": row["vs full"],
            "met": row["vs full"] <= 0.5,
        }
        for row in rows
        if row["variant"] == "LoRA"
    ]
    path = write_results(
        "memory", {"parameters": parameters, "batch_size": 1, "steps": STEPS, "variants": rows, "targets": targets}
    )
    print(f"~0.5B TinyLLaVA ({parameters / 1e6:.0f}M params), batch 1, fp32, {STEPS} steps")
    print(
        format_table(
            rows,
            [
                "round",
                "variant",
                "peak_RSS_MB",
                "vs full",
                "RSS_before_training_MB",
                "heap_free_held_MB",
                "trainable_M",
                "step_s",
                "load_1m",
            ],
        )
    )
    print(format_table(targets, ["round", "target", "value", "met"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
