"""Training speed, peak memory and MFU: `tinyllava-train` (TRL) vs a plain PyTorch loop vs TRL's stock VLM path.

    python -m benchmarks.training                       # pretrain, finetune and LoRA; 2 rounds; 13 steps each
    python -m benchmarks.training --modes finetune --rounds 1

The issue's 70M config, fp32, 2 threads, batch 4 (about 310 tokens per sample: 256 image tokens + a one-turn
conversation), the recipes' learning rates and tuning modes, no activation checkpointing, no data-loader workers.
Every (mode, implementation) runs in its own process, so peak RSS is that run's own; within a round the three
implementations run one after the other in a rotating order, and each round repeats the whole comparison.

- `tinyllava-train`: the real CLI path (`training.cli.parse_args` + `training.train.train` with the recipe and
  command-line overrides), with a timing callback added.
- `plain`: `TinyLlavaForConditionalGeneration(**batch, labels)` -> `loss.backward()` -> grad-norm clip ->
  `torch.optim.AdamW(fused=True)` (the optimizer `Trainer` picks) on batches of the same collator (each collated
  just before its step, outside the timed window).
  It imports TRL too, so that library memory is the same on both sides of the RSS comparison.
- `trl-llava`: `trl.SFTTrainer` on transformers' `LlavaForConditionalGeneration` holding the same weights (exported with
  `tinyllava-convert to-llava`), its default VLM collator with `assistant_only_loss=True` on the same samples.

Step time is from the start of a step to the end of its optimizer update (data loading excluded; the collator has its
own benchmark); the median over the steady steps (after 2 warm-up steps) is reported. The last of the 13 steps is
run under `torch.utils.flop_counter` to count its FLOPs (CPU attention included) and is not timed, leaving 12 timed
steps, 10 of them steady. MFU = the implementation's own FLOPs per step / step time / the fp32 matmul ceiling, the
best 2048^3 matmul rate measured in any of the run's processes (each measures before and after training).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from . import measure
from .measure import (
    NUM_THREADS,
    RESULTS_DIR,
    current_rss_mb,
    format_table,
    glibc_heap_mb,
    machine_load,
    matmul_ceiling_gflops,
    peak_rss_mb,
    write_results,
)

IMPLEMENTATIONS = ("tinyllava-train", "plain", "trl-llava")
MODES = {"pretrain": "pretrain", "finetune": "finetune", "lora": "finetune_lora"}  # mode -> recipe
BATCH_SIZE = 4
WARMUP_STEPS = 2
NUM_SAMPLES = 64
REPO_ROOT = Path(__file__).resolve().parent.parent


def recipe(mode: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "training" / "recipes" / f"{MODES[mode]}.yaml").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Shared set-up, done once by the parent process.


def prepare(workdir: Path) -> dict:
    """Writes the 70M checkpoint, its Llava export and the LLaVA-JSON dataset; returns their paths."""
    from .data import write_llava_dataset
    from .models import IMAGE_SIZE, build_model, build_processor, build_tokenizer, config_70m, export_to_llava

    tokenizer = build_tokenizer()
    model, processor = build_model(config_70m(tokenizer)), build_processor(tokenizer)
    export_to_llava(model, processor, workdir)  # writes workdir/tinyllava and workdir/llava
    data_path, image_folder = write_llava_dataset(workdir / "data", NUM_SAMPLES, IMAGE_SIZE)
    return {
        "checkpoint": str(workdir / "tinyllava"),
        "llava": str(workdir / "llava"),
        "data_path": str(data_path),
        "image_folder": str(image_folder),
        "llava_export": "tinyllava-convert to-llava",
    }


# ---------------------------------------------------------------------------------------------------------------------
# Worker side: one (mode, implementation) per process.


class StepRecorder:
    """Collects per-step times and (when `count_flops`) the FLOPs of the last step, which is then not timed."""

    def __init__(self, total_steps: int, count_flops: bool = True):
        self.total_steps = total_steps
        self.count_flops = count_flops
        self.step_seconds: list[float] = []
        self.flops = None
        self.rss_before_training_mb = None
        self.peak_rss_training_mb = None
        self.heap_at_end = None
        self._start = None
        self._counter = None

    def begin(self, step_index: int) -> None:
        if self.count_flops and step_index == self.total_steps - 1:  # the extra, untimed step: count its FLOPs
            from .flops import count_flops

            self._counter = count_flops()
            self._flops = self._counter.__enter__()
        self._start = time.perf_counter()

    def end(self, step_index: int) -> None:
        elapsed = time.perf_counter() - self._start
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._flops["flops"], None
        else:
            self.step_seconds.append(elapsed)

    def finish(self) -> None:
        self.peak_rss_training_mb = peak_rss_mb()
        self.heap_at_end = glibc_heap_mb()

    def result(self) -> dict:
        steady = self.step_seconds[WARMUP_STEPS:]
        return {
            "step_seconds": self.step_seconds,
            "median_step_seconds": statistics.median(steady),
            "flops_per_step": self.flops,
            "rss_before_training_mb": self.rss_before_training_mb,
            "peak_rss_mb": self.peak_rss_training_mb,
            "glibc_heap_at_end": self.heap_at_end,
        }


def trainer_callback(recorder: StepRecorder, info: dict):
    """A `TrainerCallback` feeding `recorder` from the Trainer's step hooks."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            recorder.rss_before_training_mb = current_rss_mb()

        def on_step_begin(self, args, state, control, **kwargs):
            recorder.begin(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            recorder.end(state.global_step - 1)

        def on_train_end(self, args, state, control, **kwargs):
            recorder.finish()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                info.setdefault("losses", []).append(logs["loss"])

    return Recorder()


def common_trainer_flags(spec: dict, output_dir: str) -> dict:
    """The settings every TRL run shares (the recipe's learning rate and schedule are kept)."""
    return {
        "output_dir": output_dir,
        "max_steps": spec["steps"],
        "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": recipe(spec["mode"])["learning_rate"],
        "warmup_steps": 0,
        "activation_checkpointing": spec["activation_checkpointing"],
        "bf16": False,
        "dataloader_num_workers": 0,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
        "max_length": 2048,
    }


def run_tinyllava_train(spec: dict, output_dir: str, info: dict) -> StepRecorder:
    from tinyllava_hf.training.cli import parse_args
    from tinyllava_hf.training.train import train

    paths = spec["paths"]
    flags = {
        **common_trainer_flags(spec, output_dir),
        "model_name_or_path": paths["checkpoint"],
        "data_path": paths["data_path"],
        "image_folder": paths["image_folder"],
        **spec.get("overrides", {}),
    }
    argv = [MODES[spec["mode"]]] + [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    info["command"] = "tinyllava-train " + " ".join(argv)
    recorder = StepRecorder(spec["steps"], spec["count_flops"])
    model_args, data_args, sft_config, recipe_name = parse_args(argv)
    train(model_args, data_args, sft_config, recipe=recipe_name, callbacks=[trainer_callback(recorder, info)])
    return recorder


def run_trl_llava(spec: dict, output_dir: str, info: dict) -> StepRecorder:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    from tinyllava_hf.chat_templates import CHAT_TEMPLATES

    from .data import trl_messages_records
    from .models import IMAGE_SIZE

    mode, paths = spec["mode"], spec["paths"]
    model = LlavaForConditionalGeneration.from_pretrained(paths["llava"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(paths["llava"])
    if mode == "pretrain":
        processor.chat_template = CHAT_TEMPLATES["pretrain"]
    config = recipe(mode)
    trainable = {
        "pretrain": ("multi_modal_projector.",),
        "finetune": ("multi_modal_projector.", "language_model.", "lm_head."),
    }.get(mode, ())
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(f".{prefix}" in f".{name}" for prefix in trainable))
    peft_config = None
    if mode == "lora":
        from tinyllava_hf.training.arguments import DEFAULT_LORA_TARGET_MODULES

        peft_config = LoraConfig(
            r=config["lora_r"],
            lora_alpha=config["lora_alpha"],
            lora_dropout=config["lora_dropout"],
            target_modules=DEFAULT_LORA_TARGET_MODULES,
            modules_to_save=["multi_modal_projector"],
            task_type="CAUSAL_LM",
        )
    dataset = datasets.Dataset.from_list(trl_messages_records(NUM_SAMPLES, IMAGE_SIZE))
    args = SFTConfig(
        **common_trainer_flags(spec, output_dir),
        lr_scheduler_type=config["lr_scheduler_type"],
        weight_decay=config["weight_decay"],
        assistant_only_loss=True,
    )
    recorder = StepRecorder(spec["steps"], spec["count_flops"])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[trainer_callback(recorder, info)],
    )
    trainer.train()
    return recorder


def plain_trainable_model(model, mode: str):
    """The recipe's tuning modes, set by hand: pretrain = connector; finetune = LM + connector; LoRA = peft on the LM's
    linears (the recipe's r / alpha / dropout) + the connector."""
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        from tinyllava_hf.training.arguments import DEFAULT_LORA_TARGET_MODULES

        config = recipe(mode)
        return get_peft_model(
            model,
            LoraConfig(
                r=config["lora_r"],
                lora_alpha=config["lora_alpha"],
                lora_dropout=config["lora_dropout"],
                target_modules=DEFAULT_LORA_TARGET_MODULES,
                modules_to_save=["connector"],
                task_type="CAUSAL_LM",
            ),
        )
    trainable = ("model.connector.",) + (("model.language_model.", "lm_head.") if mode == "finetune" else ())
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(trainable))
    return model


def run_plain(spec: dict, output_dir: str, info: dict) -> StepRecorder:
    import torch
    import trl  # noqa: F401  (same imported libraries as the TRL runs, for a fair RSS comparison)

    from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
    from tinyllava_hf.chat_templates import CHAT_TEMPLATES
    from tinyllava_hf.training.arguments import DataArguments
    from tinyllava_hf.training.collator import TinyLlavaCollator
    from tinyllava_hf.training.data import load_training_dataset

    mode, paths, steps, batch_size = spec["mode"], spec["paths"], spec["steps"], spec["batch_size"]
    if spec["activation_checkpointing"]:
        raise ValueError("The plain loop runs without activation checkpointing.")
    torch.manual_seed(0)
    model = TinyLlavaForConditionalGeneration.from_pretrained(paths["checkpoint"], dtype=torch.float32)
    model = plain_trainable_model(model.train(), mode)
    parameters = [p for p in model.parameters() if p.requires_grad]
    info["trainable_parameters"] = sum(p.numel() for p in parameters)
    optimizer = torch.optim.AdamW(parameters, lr=recipe(mode)["learning_rate"], weight_decay=0.0, fused=True)

    processor = TinyLlavaProcessor.from_pretrained(paths["checkpoint"])
    collator = TinyLlavaCollator(
        processor,
        chat_template=CHAT_TEMPLATES["pretrain"] if mode == "pretrain" else None,
        max_length=2048,
    )
    data_args = DataArguments(data_path=[paths["data_path"]], image_folder=paths["image_folder"])
    samples = load_training_dataset(data_args, collator).dataset

    recorder = StepRecorder(steps, spec["count_flops"])
    recorder.rss_before_training_mb = current_rss_mb()
    for index in range(steps):
        # Collated just before its step, outside the timed window, as the Trainer's data loader does.
        batch = collator([samples[i] for i in range(index * batch_size, (index + 1) * batch_size)])
        recorder.begin(index)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recorder.end(index)
        info.setdefault("losses", []).append(loss.item())
    recorder.finish()
    return recorder


RUNNERS = {"tinyllava-train": run_tinyllava_train, "plain": run_plain, "trl-llava": run_trl_llava}


def worker(spec: dict, out: Path) -> None:
    """Runs one spec (`mode`, `implementation`, `steps`, `batch_size`, `paths`, `activation_checkpointing`,
    `count_flops`, and for `tinyllava-train` optional `overrides`: extra flags) and writes its measurements to `out`."""
    from .measure import set_threads

    set_threads(spec["threads"])
    info = {**spec, "load_at_start": machine_load(), "matmul_ceiling_gflops": [matmul_ceiling_gflops()]}
    with tempfile.TemporaryDirectory() as output_dir:
        recorder = RUNNERS[spec["implementation"]](spec, output_dir, info)
    info.update(recorder.result())
    info["matmul_ceiling_gflops"].append(matmul_ceiling_gflops())
    info["load_at_end"] = machine_load()
    out.write_text(json.dumps(info))


# ---------------------------------------------------------------------------------------------------------------------
# Parent side: orchestration and summary.


def run_worker(spec: dict, workdir: Path) -> dict:
    return measure.run_worker("benchmarks.training", spec, workdir, f"{spec['mode']}/{spec['implementation']}")


def matmul_ceiling(runs: list[dict]) -> float:
    """The best fp32 matmul rate seen in any run (each measures before and after training): on a shared machine
    the best observation is the closest to what the hardware can do."""
    return max(max(run["matmul_ceiling_gflops"]) for run in runs)


def summarize(runs: list[dict]) -> list[dict]:
    """One row per run, with the ratios against the plain loop of the same mode and round."""
    plain = {(run["mode"], run["round"]): run for run in runs if run["implementation"] == "plain"}
    ceiling = matmul_ceiling(runs)
    rows = []
    for run in runs:
        reference = plain.get((run["mode"], run["round"]))
        step = run["median_step_seconds"]
        row = {
            "mode": run["mode"],
            "round": run["round"],
            "implementation": run["implementation"],
            "step_s": step,
            "samples/s": BATCH_SIZE / step,
            "GFLOP/step": run["flops_per_step"] / 1e9,
            "GFLOP/s": run["flops_per_step"] / step / 1e9,
            "MFU": run["flops_per_step"] / step / (ceiling * 1e9),
            "peak_RSS_MB": run["peak_rss_mb"],
            "trainable_M": run["trainable_parameters"] / 1e6,
            "load_1m": run["load_at_start"]["loadavg_1m"],
        }
        if reference is not None:
            row["step/plain"] = step / reference["median_step_seconds"]
            row["RSS-plain_MB"] = run["peak_rss_mb"] - reference["peak_rss_mb"]
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's training targets, judged per round on the tinyllava-train rows (5% is noise for the time ratio)."""
    checks = []
    for row in rows:
        if row["implementation"] != "tinyllava-train" or "step/plain" not in row:
            continue
        checks.append(
            {
                "mode": row["mode"],
                "round": row["round"],
                "target": "step time <= 1.0 x plain (5% noise)",
                "value": row["step/plain"],
                "met": row["step/plain"] <= 1.05,
            }
        )
        checks.append(
            {
                "mode": row["mode"],
                "round": row["round"],
                "target": "TRL peak RSS overhead <= 200 MB",
                "value": row["RSS-plain_MB"],
                "met": row["RSS-plain_MB"] <= 200,
            }
        )
        if row["mode"] == "finetune":
            checks.append(
                {
                    "mode": row["mode"],
                    "round": row["round"],
                    "target": "MFU >= 0.50 (full fine-tune)",
                    "value": row["MFU"],
                    "met": row["MFU"] >= 0.5,
                }
            )
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--rounds", type=int, default=2, help="how many times each comparison is measured")
    parser.add_argument(
        "--steps",
        type=int,
        default=13,
        help=f"steps per run (>= {WARMUP_STEPS + 3}); the last one counts FLOPs and is not timed",
    )
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch intra-op threads per run")
    parser.add_argument("--name", default="training", help="results file name (benchmarks/results/NAME.json)")
    parser.add_argument("--append", action="store_true", help="keep the other modes' runs already in the results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a JSON run spec
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker), Path(args.out))
    if args.steps < WARMUP_STEPS + 3:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 3}")

    runs = []
    results = RESULTS_DIR / f"{args.name}.json"
    if args.append and results.exists():
        runs = [run for run in json.loads(results.read_text())["runs"] if run["mode"] not in args.modes]
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        paths = prepare(workdir)
        for mode in args.modes:
            for round_index in range(1, args.rounds + 1):
                order = list(args.implementations)
                shift = (round_index - 1) % len(order)
                for implementation in order[shift:] + order[:shift]:
                    print(f"[{mode} round {round_index}] {implementation} ...", flush=True)
                    spec = {
                        "mode": mode,
                        "implementation": implementation,
                        "steps": args.steps,
                        "batch_size": BATCH_SIZE,
                        "paths": paths,
                        "activation_checkpointing": False,
                        "count_flops": True,
                        "threads": args.threads,
                    }
                    runs.append({**run_worker(spec, workdir), "round": round_index})
                    report(args.name, runs, args.steps, paths["llava_export"], final=False)
    report(args.name, runs, args.steps, paths["llava_export"], final=True)


def report(name: str, runs: list[dict], steps: int, llava_export: str, final: bool) -> None:
    """Writes the results so far (after every run, so that an interrupted benchmark keeps what it measured)."""
    rows = summarize(runs)
    checks = targets(rows)
    path = write_results(
        name,
        {
            "batch_size": BATCH_SIZE,
            "steps": steps,
            "warmup_steps": WARMUP_STEPS,
            "matmul_ceiling_gflops": matmul_ceiling(runs),
            "llava_export": llava_export,
            "runs": runs,
            "summary": rows,
            "targets": checks,
        },
    )
    if not final:
        return
    print(f"MFU against the best fp32 matmul rate seen in this run: {matmul_ceiling(runs):.0f} GFLOP/s")
    print(
        format_table(
            rows,
            [
                "mode",
                "round",
                "implementation",
                "step_s",
                "samples/s",
                "step/plain",
                "MFU",
                "GFLOP/step",
                "peak_RSS_MB",
                "RSS-plain_MB",
                "trainable_M",
                "load_1m",
            ],
        )
    )
    print(format_table(checks, ["mode", "round", "target", "value", "met"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
