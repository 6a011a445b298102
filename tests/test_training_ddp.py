"""Multi-process training: the shipped accelerate configs, and a 2-process DDP run (CPU, gloo) through
`accelerate launch -m tinyllava_hf.training` that must match a single-process run with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import make_image
from safetensors.torch import load_file

from tinyllava_hf.training.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "accelerate_configs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory):
    """A LLaVA JSON file of two samples whose answers have different lengths, so the loss average over a batch
    split across processes is only right if the trainer weights each process by its supervised tokens."""
    root = tmp_path_factory.mktemp("ddp_data")
    conversations = [("What is in the image?", "red square"), ("Describe it.", "a small blue circle on the left")]
    records = []
    for index, (question, answer) in enumerate(conversations):
        make_image(seed=index).save(root / f"{index}.png")
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"s{index}", "image": f"{index}.png", "conversations": turns})
    (root / "data.json").write_text(json.dumps(records))
    return root


def finetune_argv(components_dir: Path, data_root: Path, output_dir: Path, batch_size: int) -> list[str]:
    """Three steps of the finetune recipe on a new tiny model, every module trained, constant LR."""
    return [
        "finetune", "--llm", str(components_dir / "llama"), "--vision_tower", str(components_dir / "siglip"),
        "--tune_vision_tower", "full",
        "--data_path", str(data_root / "data.json"), "--image_folder", str(data_root),
        "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch_size),
        "--gradient_accumulation_steps", "1", "--max_steps", "3", "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--activation_checkpointing", "false", "--dataloader_num_workers", "0", "--seed", "0",
        # Without a GPU, transformers runs DDP only when told to use the CPU; otherwise each process trains alone.
        "--use_cpu", "true",
    ]  # fmt: skip


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.parametrize(
    "name, distributed_type",
    [
        ("ddp", DistributedType.MULTI_GPU),
        ("zero2", DistributedType.DEEPSPEED),
        ("zero3", DistributedType.DEEPSPEED),
        ("fsdp", DistributedType.FSDP),
    ],
)
def test_accelerate_configs_load_and_leave_precision_to_the_recipe(name, distributed_type):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    # 'no' lets the recipe's --bf16/--fp16 decide; anything else would silently override it.
    assert config.mixed_precision == "no"
    if distributed_type == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # a complete checkpoint per stage


def test_ddp_two_cpu_processes_match_one_process_with_the_same_global_batch(components_dir, two_samples, tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    train_main(finetune_argv(components_dir, two_samples, single_dir, batch_size=2))

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        "-m", "tinyllava_hf.training", *finetune_argv(components_dir, two_samples, ddp_dir, batch_size=1),
    ]  # fmt: skip
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ddp_stage = json.loads((ddp_dir / "tinyllava_run.json").read_text())["stages"][-1]
    assert ddp_stage["hyperparameters"]["per_device_train_batch_size"] == 1
    assert ddp_stage["hyperparameters"]["global_batch_size"] == 2  # so two processes ran

    single_losses, ddp_losses = logged_losses(single_dir), logged_losses(ddp_dir)
    assert len(single_losses) == len(ddp_losses) == 3
    assert single_losses[-1] < single_losses[0]  # it trained
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)

    single_weights = load_file(single_dir / "model.safetensors")
    ddp_weights = load_file(ddp_dir / "model.safetensors")
    assert single_weights.keys() == ddp_weights.keys()
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
