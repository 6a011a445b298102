"""`tinyllava-train` (also `python -m tinyllava_hf.training`).

    tinyllava-train RECIPE [--flag value ...]      train one stage; RECIPE is a YAML path or a name in
                                                    training/recipes (pretrain, finetune, share, finetune_lora,
                                                    finetune_qlora); every flag overrides the recipe
    tinyllava-train demo [...]                     the offline end-to-end demo (= tinyllava-demo)
    tinyllava-train convert-data SRC.json OUT_DIR  LLaVA JSON/JSONL -> a `datasets` dir

Flags are the fields of `training.arguments.ModelArguments` / `DataArguments` and every `trl.SFTConfig` /
`transformers.TrainingArguments` field (`--max_steps`, `--learning_rate`, `--resume_from_checkpoint`, ...).
"""

import logging
import os
import sys
from pathlib import Path

RECIPES_DIR = Path(__file__).parent / "recipes"
RECIPE_NAMES = ("pretrain", "finetune", "share", "finetune_lora", "finetune_qlora")


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe YAML path, or the bundled recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(f"Recipe {name_or_path!r} is neither a file nor one of {', '.join(RECIPE_NAMES)}.")


def parse_args(argv: list[str]):
    """`[RECIPE] --flags...` -> (ModelArguments, DataArguments, SFTConfig, recipe name or None).

    The recipe's values become defaults and command-line flags override them. An unknown recipe key or flag is an
    error that names it.
    """
    from transformers.utils import is_torch_bf16_gpu_available
    from trl import SFTConfig, TrlParser

    from .arguments import DataArguments, ModelArguments

    recipe = None
    if argv and not argv[0].startswith("-"):
        recipe = resolve_recipe(argv[0])
        argv = ["--config", str(recipe), *argv[1:]]
    if not is_torch_bf16_gpu_available() and not any(arg.startswith("--bf16") for arg in argv):
        # The recipes ask for bf16 mixed precision, which TrainingArguments refuses without a GPU that has it.
        logging.getLogger(__name__).info("No bf16-capable GPU: training in float32 (--bf16 true to override).")
        argv = [*argv, "--bf16", "false"]
    argv = [*argv, *_cpu_process_group_flags(argv)]
    parser = TrlParser((ModelArguments, DataArguments, SFTConfig), prog="tinyllava-train")
    *parsed, unknown_in_recipe, unknown_flags = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if unknown_in_recipe:
        keys = [item[2:] for item in unknown_in_recipe[::2]]
        raise ValueError(f"Unknown key(s) in recipe {recipe}: {', '.join(keys)}. See `tinyllava-train --help`.")
    if unknown_flags:
        raise ValueError(f"Unknown argument(s): {' '.join(unknown_flags)}. See `tinyllava-train --help`.")
    model_args, data_args, sft_config = parsed
    return model_args, data_args, sft_config, recipe.stem if recipe else None


def _cpu_process_group_flags(argv: list[str]) -> list[str]:
    """The flags that make several processes launched on a machine without a GPU train together.

    Without them each process trains alone on the whole dataset: accelerate sets up no process group on CPU unless
    told to. DDP and FSDP need `--use_cpu true` (gloo). DeepSpeed must not get it (accelerate then ignores the
    DeepSpeed config); it runs on its CPU accelerator and needs `--ddp_backend gloo`, without which accelerate counts
    one process while DeepSpeed counts them all.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return []
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        flag, value = "--ddp_backend", "gloo"
    else:
        flag, value = "--use_cpu", "true"
    return [] if any(arg.startswith(flag) for arg in argv) else [flag, value]


def run(argv: list[str]) -> Path:
    """Trains the stage `argv` describes (`[RECIPE] --flags...`) and returns its output directory."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, sft_config, recipe = parse_args(argv)
    from .train import train

    return train(model_args, data_args, sft_config, recipe=recipe)


def main(argv: list[str] | None = None) -> int | None:
    """Console entry point; returns the exit status of `demo`, None (success) otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        # The demo is a client of this CLI; imported only here, so training never depends on it.
        from tinyllava_hf.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "convert-data":
        from .convert_data import main as convert_main

        return convert_main(argv[1:])
    if not argv:
        print(__doc__)
        return None
    run(argv)
    return None


if __name__ == "__main__":
    main()
