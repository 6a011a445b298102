"""Padding-free packing: `tinyllava-train --packing true` vs the same CLI padded vs TRL's stock padded VLM path.

    python -m benchmarks.packing --quick       # 1 round, 4 steps per run (a few minutes on 2 idle cores)
    python -m benchmarks.packing               # 2 rounds, 10 steps per run

The 70M benchmark config (`benchmarks/models.py`: 256 image tokens per image), fp32, 2 threads, full fine-tune
(the `finetune` recipe), no activation checkpointing, no data-loader workers, `--max_length 2048` (the recipe's).
Every run is its own process, so peak RSS (`ru_maxrss` at the end of training) is that run's own.

- `padded`: `tinyllava-train finetune`, `--per_device_train_batch_size 8` samples, right-padded to the longest.
- `packed`: the same with `--packing true --per_device_train_batch_size 2`: 2 rows of up to 2048 tokens, filled by
  best-fit decreasing (about 3.8 samples a row with this mix, so about as many samples per step as `padded`), with
  the packed SDPA `--packing` switches to (`training/packed_attention.py`).
- `trl-llava`: `trl.SFTTrainer` on transformers' `LlavaForConditionalGeneration` with the same weights (exported
  with `tinyllava-convert to-llava`), its default VLM collator, `assistant_only_loss=True`, batch 8, same samples.

Throughput is taken over the steady steps (after 1 warm-up step), from the start of a step to the end of its
optimizer update (data loading excluded): samples/s = samples in those steps / their time, real tokens/s the same
with the non-pad tokens (each step's batch is counted as the collator builds it). `speedup` = packed samples/s /
padded samples/s of the same round. `loss_max_abs_diff`: a separate process collates the packed run's first
batches both ways and compares the training loss (`num_items_in_batch`-normalised, as the Trainer computes it).

The length mix follows the shape of LLaVA-665k (`llava_v1_5_mix665k.json`, LLaVA-1.5 paper table 7). That file is
not on this machine, so the histogram below is an approximation by source, not a measurement: answers and
questions are made of corpus words, about one token each with the benchmark tokenizer, and every image sample has
one image (256 tokens). Turns are question/answer pairs.

| kind (sources) | share | images | turns | answer words | question words |
|---|---|---|---|---|---|
| short VQA (VQAv2, GQA, OKVQA, OCR-VQA, A-OKVQA) | 0.47 | 1 | 1-16 | 1-3 | 12-20 |
| captions and regions (TextCaps, RefCOCO, VG) | 0.23 | 1 | 1-10 | 4-16 | 6-14 |
| LLaVA-Instruct detail + reasoning | 0.15 | 1 | 1 | 60-180 | 8-20 |
| LLaVA-Instruct conversations | 0.09 | 1 | 2-6 | 20-100 | 6-14 |
| ShareGPT (text only) | 0.06 | 0 | 1-6 | 60-300 | 10-60 |

Counts are uniform within each range; samples are drawn with a fixed seed. With the `llama` template this gives
about 280-1250 tokens per sample (median about 490, mean about 520). A padded batch of 8 then holds about 770 tokens
per sample, a packed row about 540: that ratio (1.43) bounds the speedup of every layer but attention.

`attention` (in the equivalence process): forward + backward of one attention layer of the 70M config over the first
packed batch's rows, sdpa with the dense block-diagonal mask transformers builds for packed rows vs the packed SDPA
(one causal call per sample), best of 5; the ratio is `attention_dense_over_packed`.
"""

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

from . import measure
from .measure import NUM_THREADS, format_table, machine_load, write_results

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 2048  # the finetune recipe's
PADDED_BATCH = 8
PACKED_ROWS = 2
WARMUP_STEPS = 1
NUM_SAMPLES = 160
EQUIVALENCE_BATCHES = 3
IMPLEMENTATIONS = ("packed", "padded", "trl-llava")
# (kind, share, images, turns, answer words, question words), see the module docstring.
LENGTH_MIX = (
    ("short_vqa", 0.47, 1, (1, 16), (1, 3), (12, 20)),
    ("captions_regions", 0.23, 1, (1, 10), (4, 16), (6, 14)),
    ("llava_detail_reasoning", 0.15, 1, (1, 1), (60, 180), (8, 20)),
    ("llava_conversation", 0.09, 1, (2, 6), (20, 100), (6, 14)),
    ("sharegpt_text", 0.06, 0, (1, 6), (60, 300), (10, 60)),
)


# ---------------------------------------------------------------------------------------------------------------------
# Data and models, written once by the parent process.


def words(rng: random.Random, count: int) -> str:
    from .data import COLORS, PLACES, SHAPES

    vocabulary = COLORS + SHAPES + [place.split()[-1] for place in PLACES] + ["the", "is", "in", "a", "of"]
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def mixed_conversation(index: int) -> tuple[int, list[tuple[str, str]]]:
    """Sample `index` of the LLaVA-665k-like mix: (number of images, [(question, answer), ...])."""
    rng = random.Random(index)
    kind = rng.choices(LENGTH_MIX, weights=[row[1] for row in LENGTH_MIX])[0]
    _, _, images, turns, answer_words, question_words = kind
    pairs = [
        (words(rng, rng.randint(*question_words)) + "?", words(rng, rng.randint(*answer_words)) + ".")
        for _ in range(rng.randint(*turns))
    ]
    return images, pairs


def write_mixed_dataset(directory: Path, num_samples: int) -> tuple[Path, Path, list[dict]]:
    """The mix as LLaVA JSON + image folder (`tinyllava-train`) and as TRL `messages` + `images` records."""
    from .data import make_image
    from .models import IMAGE_SIZE

    image_folder = directory / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    records, trl_records = [], []
    for index in range(num_samples):
        num_images, pairs = mixed_conversation(index)
        record = {"id": str(index), "conversations": []}
        messages = []
        for turn, (question, answer) in enumerate(pairs):
            with_image = num_images and turn == 0
            record["conversations"] += [
                {"from": "human", "value": f"<image>\n{question}" if with_image else question},
                {"from": "gpt", "value": answer},
            ]
            content = [{"type": "image"}] if with_image else []
            messages += [
                {"role": "user", "content": [*content, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
        images = []
        if num_images:
            record["image"] = f"{index:05d}.png"
            image = make_image(index, IMAGE_SIZE)
            image.save(image_folder / record["image"])
            images = [image]
        records.append(record)
        trl_records.append({"messages": messages, "images": images})
    data_path = directory / "data.json"
    data_path.write_text(json.dumps(records))
    return data_path, image_folder, trl_records


def prepare(workdir: Path) -> dict:
    """Writes the 70M checkpoint, its Llava export and the mixed dataset (both formats); returns their paths."""
    import pickle

    from .models import build_model, build_processor, build_tokenizer, config_70m, export_to_llava

    tokenizer = build_tokenizer()
    model, processor = build_model(config_70m(tokenizer)), build_processor(tokenizer)
    export_to_llava(model, processor, workdir)  # writes workdir/tinyllava and workdir/llava
    data_path, image_folder, trl_records = write_mixed_dataset(workdir / "data", NUM_SAMPLES)
    trl_path = workdir / "data" / "trl_records.pkl"
    trl_path.write_bytes(pickle.dumps(trl_records))
    return {
        "checkpoint": str(workdir / "tinyllava"),
        "llava": str(workdir / "llava"),
        "data_path": str(data_path),
        "image_folder": str(image_folder),
        "trl_records": str(trl_path),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Worker side: one implementation per process.


class BatchCounter:
    """Samples and real (non-pad) tokens of each batch a collator builds, in order (no workers: one per step)."""

    def __init__(self):
        self.batches: list[dict] = []

    def wrap(self, collate, real_tokens):
        def counted(samples):
            batch = collate(samples)
            self.batches.append({"samples": len(samples), "real_tokens": real_tokens(batch, samples)})
            return batch

        return counted


def step_recorder(steps: int):
    from .training import StepRecorder

    return StepRecorder(steps, count_flops=False)


def run_tinyllava(spec: dict, output_dir: str, info: dict, counter: BatchCounter):
    from tinyllava_hf.training import collator as collator_module
    from tinyllava_hf.training.cli import parse_args
    from tinyllava_hf.training.train import train

    from .training import trainer_callback

    paths = spec["paths"]
    packed = spec["implementation"] == "packed"
    flags = {
        "model_name_or_path": paths["checkpoint"],
        "data_path": paths["data_path"],
        "image_folder": paths["image_folder"],
        "output_dir": output_dir,
        "max_steps": spec["steps"],
        "per_device_train_batch_size": PACKED_ROWS if packed else PADDED_BATCH,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "activation_checkpointing": False,
        "bf16": False,
        "dataloader_num_workers": 0,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
        "max_length": MAX_LENGTH,
        "packing": packed,
    }
    argv = ["finetune"] + [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    info["command"] = "tinyllava-train " + " ".join(argv)
    original_call = collator_module.TinyLlavaCollator.__call__

    def real_tokens(batch: dict, samples: list) -> int:
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        return batch["input_ids"].numel() - packed_padding(batch)

    # The Trainer calls the collator once per step (no workers, no accumulation): count each batch it builds.
    def counted_call(self, samples):
        return counter.wrap(lambda samples: original_call(self, samples), real_tokens)(samples)

    collator_module.TinyLlavaCollator.__call__ = counted_call
    recorder = step_recorder(spec["steps"])
    model_args, data_args, sft_config, recipe_name = parse_args(argv)
    train(model_args, data_args, sft_config, recipe=recipe_name, callbacks=[trainer_callback(recorder, info)])
    return recorder


def packed_padding(batch: dict) -> int:
    """Padding at the end of the packed rows (`pack_rows` pads them to the longest one): a row's last block of
    restarting positions when it holds no supervised label (every sample holds one)."""
    padding = 0
    for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"]):
        last_start = int((positions == 0).nonzero().flatten()[-1])
        if (labels[last_start:] == -100).all() and last_start > 0:
            padding += len(ids) - last_start
    return padding


def run_trl_llava(spec: dict, output_dir: str, info: dict, counter: BatchCounter):
    import pickle

    import datasets
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    from .training import recipe, trainer_callback

    paths = spec["paths"]
    model = LlavaForConditionalGeneration.from_pretrained(paths["llava"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(paths["llava"])
    for name, parameter in model.named_parameters():  # the finetune recipe: LM + connector, vision tower frozen
        parameter.requires_grad_(not name.startswith("model.vision_tower."))
    records = pickle.loads(Path(paths["trl_records"]).read_bytes())
    config = recipe("finetune")
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=spec["steps"],
        per_device_train_batch_size=PADDED_BATCH,
        gradient_accumulation_steps=1,
        learning_rate=config["learning_rate"],
        lr_scheduler_type=config["lr_scheduler_type"],
        weight_decay=config["weight_decay"],
        warmup_steps=0,
        bf16=False,
        dataloader_num_workers=0,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        seed=0,
        max_length=MAX_LENGTH,
        assistant_only_loss=True,
    )
    recorder = step_recorder(spec["steps"])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=processor,
        callbacks=[trainer_callback(recorder, info)],
    )
    trainer.data_collator = counter.wrap(
        trainer.data_collator, lambda batch, samples: int(batch["attention_mask"].sum())
    )
    trainer.train()
    return recorder


def run_equivalence(spec: dict) -> dict:
    """The packed run's first batches, collated packed and padded: the training loss and the summed token loss."""
    import torch

    from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
    from tinyllava_hf.training.arguments import DataArguments
    from tinyllava_hf.training.collator import TinyLlavaCollator
    from tinyllava_hf.training.data import load_training_dataset
    from tinyllava_hf.training.packed_attention import enable_packed_attention
    from tinyllava_hf.training.packing import PackedBatchSampler
    from tinyllava_hf.training.supervised_head import install_supervised_lm_head

    paths = spec["paths"]
    model = TinyLlavaForConditionalGeneration.from_pretrained(paths["checkpoint"], dtype=torch.float32).train()
    install_supervised_lm_head(model)
    enable_packed_attention(model)  # as `--packing true` does; padded batches still take sdpa's path
    processor = TinyLlavaProcessor.from_pretrained(paths["checkpoint"])
    padded = TinyLlavaCollator(processor, max_length=MAX_LENGTH)
    packed = TinyLlavaCollator(processor, max_length=MAX_LENGTH, packing=True)
    data = load_training_dataset(DataArguments([paths["data_path"]], paths["image_folder"]), padded)
    sampler = PackedBatchSampler([min(n, MAX_LENGTH) for n in data.num_tokens], MAX_LENGTH, PACKED_ROWS, seed=0)
    rows = []
    samples_of_first_batch = [data.dataset[i] for i in next(iter(sampler))]
    for _, indices in zip(range(EQUIVALENCE_BATCHES), sampler):
        samples = [data.dataset[i] for i in indices]
        losses = {}
        for name, collator in (("padded", padded), ("packed", packed)):
            batch = collator(samples)
            num_items = (batch["labels"][:, 1:] != -100).sum()
            with torch.no_grad():
                output = model(**batch, use_cache=False, fused_lm_head=True, num_items_in_batch=num_items)
            losses[name] = (output.loss.item(), -output.log_probs.sum().item(), batch["input_ids"].numel())
        rows.append(
            {
                "samples": len(samples),
                "padded_loss": losses["padded"][0],
                "packed_loss": losses["packed"][0],
                "loss_abs_diff": abs(losses["padded"][0] - losses["packed"][0]),
                "summed_loss_rel_diff": abs(losses["padded"][1] - losses["packed"][1]) / abs(losses["padded"][1]),
                "padded_tokens": losses["padded"][2],
                "packed_tokens": losses["packed"][2],
            }
        )
    first_rows = packed(samples_of_first_batch)["position_ids"]
    return {"implementation": "equivalence", "batches": rows, "attention": attention_times(model, first_rows)}


def attention_times(model, position_ids) -> dict:
    """Forward + backward of one attention layer over packed rows: sdpa with transformers' dense block-diagonal
    mask vs the packed SDPA, same random queries, keys and values; best of 5 each."""
    import time

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import find_packed_sequence_indices

    from tinyllava_hf.training.packed_attention import packed_sdpa_attention_forward

    module = model.model.language_model.layers[0].self_attn
    config = model.config.text_config
    rows, length = position_ids.shape
    head_dim = config.hidden_size // config.num_attention_heads
    query = torch.randn(rows, config.num_attention_heads, length, head_dim, requires_grad=True)
    key, value = (torch.randn(rows, config.num_key_value_heads, length, head_dim, requires_grad=True) for _ in "kv")
    sequence = find_packed_sequence_indices(position_ids)
    dense_mask = (sequence[:, :, None] == sequence[:, None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    variants = {
        "dense_mask": lambda: sdpa_attention_forward(module, query, key, value, dense_mask[:, None]),
        "packed": lambda: packed_sdpa_attention_forward(module, query, key, value, None, position_ids=position_ids),
    }
    best = {}
    for name, attend in variants.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            attend()[0].sum().backward()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return {
        "rows": rows,
        "row_length": length,
        "samples_per_row": [int(s.max()) + 1 for s in sequence],
        "dense_mask_ms": 1000 * best["dense_mask"],
        "packed_ms": 1000 * best["packed"],
        "attention_dense_over_packed": best["dense_mask"] / best["packed"],
    }


def worker(spec: dict, out: Path) -> None:
    """Runs one spec and writes its measurements to `out`."""
    from .measure import peak_rss_mb, set_threads

    set_threads(spec["threads"])
    if spec["implementation"] == "equivalence":
        out.write_text(json.dumps(run_equivalence(spec)))
        return
    info = {"implementation": spec["implementation"], "load_at_start": machine_load()}
    counter = BatchCounter()
    runner = run_trl_llava if spec["implementation"] == "trl-llava" else run_tinyllava
    with tempfile.TemporaryDirectory() as output_dir:
        recorder = runner(spec, output_dir, info, counter)
    steady = slice(WARMUP_STEPS, len(recorder.step_seconds))
    seconds = sum(recorder.step_seconds[steady])
    batches = counter.batches[: len(recorder.step_seconds)][steady]
    info.update(
        {
            "step_seconds": recorder.step_seconds,
            "batches": counter.batches,
            "steady_seconds": seconds,
            "samples_per_s": sum(b["samples"] for b in batches) / seconds,
            "real_tokens_per_s": sum(b["real_tokens"] for b in batches) / seconds,
            "samples_per_step": statistics.mean(b["samples"] for b in batches),
            "peak_rss_mb": recorder.peak_rss_training_mb or peak_rss_mb(),
            "load_at_end": machine_load(),
        }
    )
    out.write_text(json.dumps(info))


# ---------------------------------------------------------------------------------------------------------------------
# Parent side.


def run_worker(spec: dict, workdir: Path) -> dict:
    return measure.run_worker("benchmarks.packing", spec, workdir, spec["implementation"])


def summarize(runs: list[dict], equivalence: dict) -> tuple[list[dict], dict]:
    rows = [
        {
            "round": run["round"],
            "implementation": run["implementation"],
            "samples/step": run["samples_per_step"],
            "samples/s": run["samples_per_s"],
            "real_tok/s": run["real_tokens_per_s"],
            "peak_RSS_MB": run["peak_rss_mb"],
            "load_1m": run["load_at_start"]["loadavg_1m"],
        }
        for run in runs
    ]
    by_round = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["implementation"]] = run
    speedups = [r["packed"]["samples_per_s"] / r["padded"]["samples_per_s"] for r in by_round.values() if len(r) >= 2]
    trl = [
        r["packed"]["samples_per_s"] / r["trl-llava"]["samples_per_s"] for r in by_round.values() if "trl-llava" in r
    ]
    of = {name: [run["peak_rss_mb"] for run in runs if run["implementation"] == name] for name in IMPLEMENTATIONS}
    summary = {
        "speedup": statistics.median(speedups) if speedups else None,
        "speedup_per_round": speedups,
        "speedup_vs_trl_llava": statistics.median(trl) if trl else None,
        "loss_max_abs_diff": max(row["loss_abs_diff"] for row in equivalence["batches"]),
        "summed_loss_max_rel_diff": max(row["summed_loss_rel_diff"] for row in equivalence["batches"]),
        "attention_dense_over_packed": equivalence["attention"]["attention_dense_over_packed"],
        "packed_peak_rss_mb": max(of["packed"]) if of["packed"] else None,
        "padded_peak_rss_mb": max(of["padded"]) if of["padded"] else None,
        "trl_llava_peak_rss_mb": max(of["trl-llava"]) if of["trl-llava"] else None,
    }
    summary["targets_met"] = {
        "speedup >= 1.5": summary["speedup"] is not None and summary["speedup"] >= 1.5,
        "loss equal (<= 1e-5 relative)": summary["summed_loss_max_rel_diff"] <= 1e-5,
        "packed peak RSS <= padded": None not in (summary["packed_peak_rss_mb"], summary["padded_peak_rss_mb"])
        and summary["packed_peak_rss_mb"] <= summary["padded_peak_rss_mb"],
    }
    return rows, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 4 steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run; default 10 (4 with --quick)")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch intra-op threads per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker), Path(args.out))
    rounds = args.rounds or (1 if args.quick else 2)
    steps = args.steps or (4 if args.quick else 10)

    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        paths = prepare(workdir)
        spec = {"paths": paths, "threads": args.threads, "steps": steps}
        print("[equivalence] ...", flush=True)
        equivalence = run_worker({**spec, "implementation": "equivalence"}, workdir)
        for round_index in range(1, rounds + 1):
            order = list(args.implementations)
            shift = (round_index - 1) % len(order)
            for implementation in order[shift:] + order[:shift]:
                print(f"[round {round_index}] {implementation} ...", flush=True)
                runs.append({**run_worker({**spec, "implementation": implementation}, workdir), "round": round_index})
    rows, summary = summarize(runs, equivalence)
    path = write_results(
        "packing",
        {
            "max_length": MAX_LENGTH,
            "padded_batch_size": PADDED_BATCH,
            "packed_rows_per_batch": PACKED_ROWS,
            "steps": steps,
            "warmup_steps": WARMUP_STEPS,
            "length_mix": [
                dict(zip(("kind", "share", "images", "turns", "answer_words", "question_words"), row))
                for row in LENGTH_MIX
            ],
            "equivalence": equivalence,
            "runs": runs,
            "rows": rows,
            "summary": summary,
        },
    )
    print(
        format_table(
            rows, ["round", "implementation", "samples/step", "samples/s", "real_tok/s", "peak_RSS_MB", "load_1m"]
        )
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
