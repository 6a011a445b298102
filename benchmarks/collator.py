"""Collator time per batch against the training step time (target: the collator takes <= 5% of the step).

    python -m benchmarks.collator          # reads step times from benchmarks/results/training.json when present

Batch 4 of the training benchmark's samples (224 px PNG images read from disk at collate time, one-turn
conversations, ~310 tokens each), 2 threads. Timed: `training.collator.TinyLlavaCollator` with the finetune template
and with the `pretrain` template, and, for reference, TRL's stock `DataCollatorForVisionLanguageModeling` on
transformers' `LlavaProcessor` (the `trl-llava` path of the training benchmark). The step time is the median
`tinyllava-train` step of the same mode from the training benchmark's results (or, when those are missing, a short
`tinyllava-train` run made here).
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

from .measure import NUM_THREADS, RESULTS_DIR, format_table, machine_load, set_threads, write_results

BATCH_SIZE = 4
NUM_BATCHES = 8


def time_batches(collate, samples: list) -> list[float]:
    """Seconds per batch for consecutive batches of `samples` (one warm-up batch first)."""
    collate(samples[:BATCH_SIZE])
    times = []
    for start in range(0, NUM_BATCHES * BATCH_SIZE, BATCH_SIZE):
        begin = time.perf_counter()
        collate(samples[start : start + BATCH_SIZE])
        times.append(time.perf_counter() - begin)
    return times


def step_seconds(mode: str, paths: dict, workdir: Path, make_checkpoint) -> tuple[float, str]:
    """The median tinyllava-train step of `mode`: from the training results, else measured now (6 steps) on the
    checkpoint `make_checkpoint()` writes."""
    results = RESULTS_DIR / "training.json"
    if results.exists():
        runs = [
            run
            for run in json.loads(results.read_text())["runs"]
            if run["mode"] == mode and run["implementation"] == "tinyllava-train"
        ]
        if runs:
            return statistics.median(run["median_step_seconds"] for run in runs), "benchmarks/results/training.json"
    from .training import run_worker

    paths = {**paths, "checkpoint": make_checkpoint()}
    spec = {
        "mode": mode,
        "implementation": "tinyllava-train",
        "steps": 6,
        "batch_size": BATCH_SIZE,
        "paths": paths,
        "activation_checkpointing": False,
        "count_flops": False,
        "threads": NUM_THREADS,
    }
    return run_worker(spec, workdir)["median_step_seconds"], "measured here (6 steps)"


def main(argv=None):
    set_threads()
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from tinyllava_hf.chat_templates import CHAT_TEMPLATES
    from tinyllava_hf.training.arguments import DataArguments
    from tinyllava_hf.training.collator import TinyLlavaCollator
    from tinyllava_hf.training.data import load_training_dataset

    from .data import trl_messages_records, write_llava_dataset
    from .models import (
        IMAGE_SIZE,
        build_llava_processor,
        build_model,
        build_processor,
        build_tokenizer,
        config_70m,
        save_checkpoint,
    )

    num_samples = (NUM_BATCHES + 1) * BATCH_SIZE
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)
        data_path, image_folder = write_llava_dataset(workdir / "data", num_samples, IMAGE_SIZE)
        dataset = load_training_dataset(
            DataArguments(data_path=[str(data_path)], image_folder=str(image_folder))
        ).dataset  # image paths resolved against the folder
        samples = [dataset[index] for index in range(num_samples)]
        paths = {"data_path": str(data_path), "image_folder": str(image_folder)}

        def make_checkpoint() -> str:
            if not (workdir / "ckpt").exists():
                save_checkpoint(build_model(config_70m(tokenizer)), processor, workdir / "ckpt")
            return str(workdir / "ckpt")

        trl_collator = DataCollatorForVisionLanguageModeling(build_llava_processor(tokenizer), assistant_only_loss=True)
        trl_samples = trl_messages_records(num_samples, IMAGE_SIZE)
        collators = {
            "finetune": ("tinyllava", TinyLlavaCollator(processor), samples),
            "pretrain": (
                "tinyllava",
                TinyLlavaCollator(processor, chat_template=CHAT_TEMPLATES["pretrain"]),
                samples,
            ),
            "finetune (TRL stock, Llava)": ("trl", trl_collator, trl_samples),
        }
        for name, (kind, collate, inputs) in collators.items():
            mode = "pretrain" if name == "pretrain" else "finetune"
            # TRL's collator mutates its samples (image -> images), so give it copies.
            call = (lambda batch, c=collate: c([dict(sample) for sample in batch])) if kind == "trl" else collate
            batch_ms = statistics.median(time_batches(call, inputs)) * 1000
            step, source = step_seconds(mode, paths, workdir, make_checkpoint)
            rows.append(
                {
                    "collator": name,
                    "ms/batch": batch_ms,
                    "step_ms": step * 1000,
                    "share of step": batch_ms / (step * 1000),
                    "step time from": source,
                    "met (<= 5%)": batch_ms / (step * 1000) <= 0.05 if kind == "tinyllava" else None,
                    "load_1m": machine_load()["loadavg_1m"],
                }
            )
    path = write_results("collator", {"batch_size": BATCH_SIZE, "num_batches": NUM_BATCHES, "rows": rows})
    print(
        format_table(
            rows, ["collator", "ms/batch", "step_ms", "share of step", "met (<= 5%)", "step time from", "load_1m"]
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
