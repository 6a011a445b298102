"""`tinyllava-demo` (also `tinyllava-train demo`, `python -m tinyllava_hf.demo`): the whole TinyLLaVA workflow,
offline, in a few minutes on a laptop CPU.

1. Generate a synthetic image-QA dataset (coloured shapes): captions for pretraining, multi-turn questions for
   finetuning, held-out questions for evaluation, as LLaVA JSON + an image folder.
2. Build a tokenizer, a tiny Llama-style LLM and a tiny SigLIP vision tower from configs and save them as model dirs.
3. Pretrain, then finetune, through the real `tinyllava-train` command (`tinyllava_hf.training.cli.main`), the
   finetune stage starting from the pretrain checkpoint with `--model_name_or_path`.
4. Measure held-out accuracy with the real images and with a blank image (`tinyllava_hf.evaluation`'s batched greedy
   generation); in every category the real images must win clearly.
5. Put the results on the Hub-ready checkpoint's model card and answer a question through
   `pipeline("image-text-to-text")`.
"""

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinyllava_hf.training.cli import main as train_main

from .components import ModelSize, build_components
from .dataset import DemoData, write_demo_data
from .evaluate import evaluate_checkpoint
from .plots import plot_stage_losses
from .report import check_margins, print_report, publish_results


@dataclass(frozen=True)
class DemoSettings:
    """Data sizes, training length and the success criterion of one demo run.

    `vision_pretraining_steps` pretrain the vision tower before TinyLLaVA training (see `vision_pretraining`).
    `min_margin` is how much the real-image accuracy must exceed the blank-image accuracy (absolute), in every
    question category; None reports the margins without enforcing them, for runs too short to learn (`--quick`).
    With 50 held-out questions per category, the standard error of a category's margin is about 8 points, and the
    full run clears 30 points by 45 or more in every category (README), so the rule is a clear win, not noise.
    """

    num_pretrain: int
    num_finetune: int
    num_eval: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    pretrain_lr: float
    finetune_lr: float
    vision_pretraining_steps: int
    min_margin: float | None
    model: ModelSize = field(default_factory=ModelSize)


FULL = DemoSettings(
    num_pretrain=2000, num_finetune=2000, num_eval=200, pretrain_steps=300, finetune_steps=300, batch_size=16,
    pretrain_lr=1e-3, finetune_lr=1e-3, vision_pretraining_steps=600, min_margin=0.3,
)  # fmt: skip
QUICK = DemoSettings(
    num_pretrain=32, num_finetune=32, num_eval=16, pretrain_steps=3, finetune_steps=3, batch_size=4,
    pretrain_lr=1e-3, finetune_lr=1e-3, vision_pretraining_steps=3, min_margin=None,
    model=ModelSize(vision_layers=1, text_hidden=64, text_layers=1),
)  # fmt: skip


def stage_argv(
    settings: DemoSettings, image_folder: Path, output_dir: Path, steps: int, learning_rate: float, seed: int
) -> list[str]:
    """Flags shared by both stages: the demo's schedule, and CPU-friendly overrides of the paper recipes' settings
    (no activation checkpointing, which only pays off on large models; one dataloader worker, so the
    next batch is collated while the model trains on this one)."""
    return [
        "--image_folder", str(image_folder), "--output_dir", str(output_dir),
        "--max_steps", str(steps), "--learning_rate", str(learning_rate),
        "--per_device_train_batch_size", str(settings.batch_size), "--gradient_accumulation_steps", "1",
        "--logging_steps", str(max(1, steps // 30)), "--save_strategy", "no", "--report_to", "none",
        "--activation_checkpointing", "false", "--dataloader_num_workers", "1", "--seed", str(seed),
    ]  # fmt: skip


def run_stages(
    settings: DemoSettings, data: DemoData, llm_dir: Path, vision_dir: Path, output_dir: Path, seed: int = 0
) -> dict[str, Path]:
    """Pretrain then finetune through `tinyllava-train`; returns stage name -> checkpoint dir.

    As in the paper, the (pretrained) vision tower stays frozen in both stages. Unlike the paper's, the demo's LLM
    starts from random weights, so it trains in stage 1 too, and both stages use learning rates suited to a tiny model.
    """
    pretrain_dir, finetune_dir = output_dir / "pretrain", output_dir / "finetune"
    pretrain_argv = [
        "pretrain", "--llm", str(llm_dir), "--vision_tower", str(vision_dir),
        # The layer the tower's pretraining shaped (components.py).
        "--vision_feature_layer", str(settings.model.vision_feature_layer),
        "--tune_llm", "full", "--data_path", str(data.pretrain_json),
        *stage_argv(settings, data.image_folder, pretrain_dir, settings.pretrain_steps, settings.pretrain_lr, seed),
    ]  # fmt: skip
    finetune_argv = [
        "finetune", "--model_name_or_path", str(pretrain_dir), "--data_path", str(data.finetune_json),
        *stage_argv(settings, data.image_folder, finetune_dir, settings.finetune_steps, settings.finetune_lr, seed),
    ]  # fmt: skip
    for name, argv in (("pretrain", pretrain_argv), ("finetune", finetune_argv)):
        print(f"\n=== Stage {name}: tinyllava-train {' '.join(argv)}\n", flush=True)
        train_main(argv)
    return {"pretrain": pretrain_dir, "finetune": finetune_dir}


def pipeline_answer(checkpoint: Path, image_path: Path, question: str) -> str:
    """One answer from the saved checkpoint through transformers' `image-text-to-text` pipeline."""
    from PIL import Image
    from transformers import pipeline

    generator = pipeline("image-text-to-text", model=str(checkpoint), trust_remote_code=True)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.open(image_path)}, {"type": "text", "text": question}],
        }
    ]
    output = generator(text=messages, max_new_tokens=6, return_full_text=False, generate_kwargs={"do_sample": False})
    return output[0]["generated_text"].strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tinyllava-demo",
        description="Offline end-to-end demo: synthetic data, tiny model, pretrain + finetune, evaluation, pipeline.",
    )
    parser.add_argument("--output_dir", "--output-dir", default="demo_output", type=Path, help="where everything goes")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run: tiny data, 3 steps per stage, no accuracy bar"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and training")
    parser.add_argument(
        "--min_margin", "--min-margin", type=float, default=None,
        help=f"points (0-1) by which the real image must beat the blank image in every category; default "
        f"{FULL.min_margin} (--quick: not enforced)",
    )  # fmt: skip
    return parser.parse_args(argv)


def run_demo(settings: DemoSettings, output_dir: Path, seed: int = 0) -> int:
    """Runs the demo with `settings` into `output_dir`; returns 0, or exits non-zero (naming the categories) when
    the real images do not beat the blank image by `settings.min_margin` in every category."""
    output_dir.mkdir(parents=True, exist_ok=True)
    timings, start = {}, time.perf_counter()

    data = write_demo_data(
        output_dir / "data", settings.num_pretrain, settings.num_finetune, settings.num_eval,
        settings.model.image_size, seed=seed,
    )  # fmt: skip
    llm_dir, vision_dir = build_components(
        output_dir / "components", settings.model, seed=seed, vision_pretraining_steps=settings.vision_pretraining_steps
    )
    timings["data + components"] = time.perf_counter() - start

    phase_start = time.perf_counter()
    stages = run_stages(settings, data, llm_dir, vision_dir, output_dir, seed=seed)
    checkpoint = stages["finetune"]
    loss_plot = plot_stage_losses(stages, output_dir / "loss_curves.png")
    timings["training"] = time.perf_counter() - phase_start

    phase_start = time.perf_counter()
    real, blank = evaluate_checkpoint(
        checkpoint, data.eval_json, data.image_folder, data.blank_image, output_dir / "eval"
    )
    summary_path = publish_results(checkpoint, real, blank, settings.num_eval, output_dir)
    example = json.loads(data.eval_json.read_text())[0]
    answer = pipeline_answer(checkpoint, data.image_folder / example["image"], example["question"])
    timings["evaluation"] = time.perf_counter() - phase_start
    timings["total"] = time.perf_counter() - start

    locations = {
        "synthetic data (LLaVA JSON)": data.pretrain_json.parent,
        "images": data.image_folder,
        "tokenizer + tiny LLM": llm_dir,
        "tiny vision tower": vision_dir,
        "pretrain checkpoint": stages["pretrain"],
        "Hub-ready checkpoint": checkpoint,
        "model card": checkpoint / "README.md",
        "loss curves (both stages)": loss_plot,
        "evaluation summary": summary_path,
    }
    print_report(real, blank, settings.min_margin, settings.num_eval, example, answer, locations, timings)
    check_margins(summary_path, settings.min_margin)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `tinyllava-demo`."""
    args = parse_args(argv)
    # The same format as `tinyllava-train`'s stages, set up before the demo's own steps log anything.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = QUICK if args.quick else FULL
    if args.min_margin is not None:
        settings = replace(settings, min_margin=args.min_margin)
    return run_demo(settings, args.output_dir.resolve(), seed=args.seed)
