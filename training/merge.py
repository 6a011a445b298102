"""`tinyllava-merge ADAPTER_DIR OUT_DIR`: a LoRA adapter merged into its base model, saved as a complete checkpoint.

The base is the adapter's `base_model_name_or_path` (training writes the absolute path of a local base, so this
works offline) unless `--base` is given. The merged weights are W + (alpha / r) * B @ A, computed in float32.
"""

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Files of the adapter dir that describe the run rather than the adapter; copied next to the merged model.
_CARRIED_FILES = ("tinyllava_run.json", "trainer_state.json", "loss_curve.png")


def adapter_base(adapter_dir: str | Path) -> str:
    """`base_model_name_or_path` of a saved adapter."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a LoRA adapter dir: no adapter_config.json.")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_path} has no base_model_name_or_path; pass the base model with --base.")
    return base


def load_adapter_model(adapter_dir: str | Path, base: str | None = None, dtype: torch.dtype = torch.float32):
    """The base TinyLLaVA model with the adapter of `adapter_dir` attached (a `peft.PeftModel`)."""
    from peft import PeftModel

    from modeling_tinyllava import TinyLlavaForConditionalGeneration

    base_model = TinyLlavaForConditionalGeneration.from_pretrained(base or adapter_base(adapter_dir), dtype=dtype)
    return PeftModel.from_pretrained(base_model, str(adapter_dir))


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None) -> Path:
    """Merges the adapter into its base and writes model, processor and run files to `output_dir`.

    Returns:
        `output_dir`.
    """
    from modeling_tinyllava import TinyLlavaProcessor

    base = base or adapter_base(adapter_dir)
    merged = load_adapter_model(adapter_dir, base).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    has_processor = (Path(adapter_dir) / "processor_config.json").is_file()
    TinyLlavaProcessor.from_pretrained(str(adapter_dir) if has_processor else base).save_pretrained(output_dir)
    for name in _CARRIED_FILES:
        if (Path(adapter_dir) / name).is_file() and Path(adapter_dir).resolve() != output_dir.resolve():
            shutil.copy(Path(adapter_dir) / name, output_dir / name)
    logger.info("Merged %s into %s -> %s", adapter_dir, base, output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tinyllava-merge", description=__doc__.split("\n")[0])
    parser.add_argument("adapter_dir", help="dir with adapter_config.json + adapter_model.safetensors")
    parser.add_argument("output_dir", help="where the merged checkpoint goes")
    parser.add_argument("--base", help="base model dir or Hub id (default: the adapter's base_model_name_or_path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(merge_adapter(args.adapter_dir, args.output_dir, args.base))


if __name__ == "__main__":
    main()
