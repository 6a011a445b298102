"""Helpers for the multi-process training tests: a free port, the launch environment, and what a run logged."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "accelerate_configs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: Path, script_args: list[str], num_processes: int = 2, env: dict | None = None, timeout=600):
    """`accelerate launch --config_file CONFIG` on CPU processes (gloo), from the repository root.

    Returns:
        The `subprocess.CompletedProcess`.
    """
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": "cpu",  # DeepSpeed would probe for CUDA first
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *script_args,
    ]  # fmt: skip
    return subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def logged(output_dir: Path, key: str) -> list[float]:
    """The values of `key` (`loss`, `grad_norm`) that the trainer logged, step by step."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry[key] for entry in history if "loss" in entry]


def write_two_samples(root: Path) -> Path:
    """A LLaVA JSON file of two samples whose answers have different lengths, so the loss average over a batch
    split across processes is only right if the trainer weights each process by its supervised tokens.

    Returns:
        `root`, holding `data.json` and the images.
    """
    from conftest import make_image

    conversations = [("What is in the image?", "red square"), ("Describe it.", "a small blue circle on the left")]
    records = []
    for index, (question, answer) in enumerate(conversations):
        make_image(seed=index).save(root / f"{index}.png")
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"s{index}", "image": f"{index}.png", "conversations": turns})
    (root / "data.json").write_text(json.dumps(records))
    return root


def finetune_argv(data_root: Path, output_dir: Path, batch_size: int, *model: str) -> list[str]:
    """Three steps of the finetune recipe on `model` (`--llm ... --vision_tower ...` or `--model_name_or_path ...`
    plus tuning flags), constant LR, no checkpointing, no workers."""
    return [
        "finetune", *model,
        "--data_path", str(data_root / "data.json"), "--image_folder", str(data_root),
        "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch_size),
        "--gradient_accumulation_steps", "1", "--max_steps", "3", "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--activation_checkpointing", "false", "--dataloader_num_workers", "0", "--seed", "0",
    ]  # fmt: skip
