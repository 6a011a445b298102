"""Multi-process training: the shipped accelerate configs, and a 2-process DDP run (CPU, gloo) through
`accelerate launch -m tinyllava_hf.training` that must match a single-process run with the same global batch."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from distributed_helpers import CONFIGS, REPO, finetune_argv, launch, logged, write_two_samples
from safetensors.torch import load_file

from tinyllava_hf.training.cli import main as train_main


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory):
    return write_two_samples(tmp_path_factory.mktemp("ddp_data"))


def new_model_argv(components_dir: Path, data_root: Path, output_dir: Path, batch_size: int) -> list[str]:
    """A new tiny model, every module trained."""
    model = ["--llm", str(components_dir / "llama"), "--vision_tower", str(components_dir / "siglip"),
             "--tune_vision_tower", "full"]  # fmt: skip
    # Without a GPU, transformers runs DDP only when told to use the CPU; otherwise each process trains alone.
    return [*finetune_argv(data_root, output_dir, batch_size, *model), "--use_cpu", "true"]


SHIPPED_CONFIGS = {
    "ddp": (DistributedType.MULTI_GPU, None),
    "fsdp": (DistributedType.FSDP, None),
    "fsdp_offload": (DistributedType.FSDP, None),
    "zero2": (DistributedType.DEEPSPEED, 2),
    "zero3": (DistributedType.DEEPSPEED, 3),
    "zero3_offload": (DistributedType.DEEPSPEED, 3),
}


def test_the_shipped_configs_are_these():
    assert {path.stem for path in CONFIGS.glob("*.yaml")} == set(SHIPPED_CONFIGS)


@pytest.mark.parametrize("name", list(SHIPPED_CONFIGS))
def test_accelerate_configs_load_and_leave_precision_to_the_recipe(name):
    distributed_type, zero_stage = SHIPPED_CONFIGS[name]
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    offload = name.endswith("_offload")
    if distributed_type == DistributedType.DEEPSPEED:
        # The DeepSpeed JSON takes precision, batch sizes and clipping from the recipe ("auto").
        path = REPO / config.deepspeed_config["deepspeed_config_file"]
        deepspeed = json.loads(path.read_text())
        assert deepspeed["bf16"]["enabled"] == deepspeed["fp16"]["enabled"] == "auto"
        assert deepspeed["gradient_accumulation_steps"] == deepspeed["gradient_clipping"] == "auto"
        zero = deepspeed["zero_optimization"]
        assert zero["stage"] == zero_stage
        assert ("offload_param" in zero) == offload
        if zero_stage == 3:  # a complete checkpoint per stage
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert config.deepspeed_config["zero3_init_flag"] == (zero_stage == 3)
    else:
        # 'no' lets the recipe's --bf16/--fp16 decide; anything else would silently override it.
        assert config.mixed_precision == "no"
    if distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # a complete checkpoint per stage
        assert config.fsdp_config["fsdp_offload_params"] == offload


# With packing, rows of 128 tokens hold one of the two samples (98 and 103 tokens) each: one batch of two rows (the
# shorter one padded) on one process, one row per process under DDP.
@pytest.mark.parametrize("packing", [[], ["--packing", "true", "--max_length", "128"]], ids=["padded", "packed"])
def test_ddp_two_cpu_processes_match_one_process_with_the_same_global_batch(
    components_dir, two_samples, tmp_path, packing
):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    train_main([*new_model_argv(components_dir, two_samples, single_dir, batch_size=2), *packing])
    argv = [*new_model_argv(components_dir, two_samples, ddp_dir, batch_size=1), *packing]
    result = launch(CONFIGS / "ddp.yaml", ["-m", "tinyllava_hf.training", *argv])
    assert result.returncode == 0, result.stderr[-4000:]
    ddp_stage = json.loads((ddp_dir / "tinyllava_run.json").read_text())["stages"][-1]
    assert ddp_stage["hyperparameters"]["per_device_train_batch_size"] == 1
    assert ddp_stage["hyperparameters"]["global_batch_size"] == 2  # so two processes ran
    assert ddp_stage["distributed"] == "DDP x 2 processes"
    assert ddp_stage["hyperparameters"]["packing"] == bool(packing)

    single_losses, ddp_losses = logged(single_dir, "loss"), logged(ddp_dir, "loss")
    assert len(single_losses) == len(ddp_losses) == 3
    assert single_losses[-1] < single_losses[0]  # it trained
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)

    single_weights = load_file(single_dir / "model.safetensors")
    ddp_weights = load_file(ddp_dir / "model.safetensors")
    assert single_weights.keys() == ddp_weights.keys()
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
