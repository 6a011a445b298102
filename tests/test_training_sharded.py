"""FSDP2 and DeepSpeed ZeRO-3 on 2 CPU processes (gloo), through the shipped accelerate configs, against one process
with the same global batch: the logged losses and grad norms and the saved weights must match, the parameters must
really have been sharded (a run that quietly fell back to DDP fails), and each run must save a normal, complete
checkpoint that loads in one process.

Two launches per sharding strategy cover the three ways a stage starts:
- a LoRA stage on a NEW model assembled from an LLM and a vision tower (the adapter's base is saved from the
  sharded model, then merged in one process);
- a full finetune of every module, continuing from a saved checkpoint.
ZeRO-3 also resumes that run from its step-2 Trainer checkpoint (`--resume_from_checkpoint`) and must end where the
uninterrupted run ended.
ZeRO-2 (weights replicated, so nothing to check of them) runs the first, its use in the paper's recipes.
"""

import json
from pathlib import Path

import pytest
import torch
from distributed_helpers import CONFIGS, REPO, finetune_argv, launch, logged, write_two_samples
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from modeling_tinyllava import TinyLlavaForConditionalGeneration
from tinyllava_hf.training.cli import main as train_main

ENTRY = REPO / "tests" / "distributed_entry.py"
STRATEGIES = {
    # accelerate 1.15 selects FSDP only on accelerator devices: on CPU processes the shipped fsdp.yaml would run DDP
    # (and tinyllava-train refuses that). distributed_entry.py switches accelerate's state to FSDP, see its docstring.
    "fsdp": (CONFIGS / "fsdp.yaml", ["--force_fsdp_on_cpu"], "FSDP2 x 2 processes"),
    "zero3": (CONFIGS / "zero3.yaml", [], "DeepSpeed ZeRO-3 x 2 processes"),
    "zero2": (CONFIGS / "zero2.yaml", [], "DeepSpeed ZeRO-2 x 2 processes"),
}
LORA = ["--tune_llm", "lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]  # no dropout: no RNG


def lora_new_model(components_dir: Path) -> list[str]:
    return ["--llm", str(components_dir / "llama"), "--vision_tower", str(components_dir / "siglip"), *LORA]


def full_from_checkpoint(data: Path, output_dir: Path, batch_size: int, checkpoint: Path, *extra: str) -> list[str]:
    """Every module trained, from `checkpoint`; Trainer checkpoints at steps 2 and 3 (for the resume case)."""
    model = ["--model_name_or_path", str(checkpoint), "--tune_vision_tower", "full"]
    saving = ["--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3"]
    return [*finetune_argv(data, output_dir, batch_size, *model), *saving, *extra]


@pytest.fixture(scope="module")
def single_process(components_dir, tmp_path_factory):
    """The two stages in one process with batch 2: (data root, LoRA-on-new-model dir, full-from-checkpoint dir)."""
    root = tmp_path_factory.mktemp("sharded")
    data = write_two_samples(root)
    lora_dir, full_dir = root / "single_lora", root / "single_full"
    train_main(finetune_argv(data, lora_dir, 2, *lora_new_model(components_dir)))
    train_main(full_from_checkpoint(data, full_dir, 2, lora_dir))
    return data, lora_dir, full_dir


def run_sharded(strategy: str, argv: list[str], output_dir: Path) -> list[dict]:
    """Launches `argv` on 2 processes under `strategy`; returns each rank's record of how it held the parameters."""
    config, entry_flags, _ = STRATEGIES[strategy]
    record_dir = output_dir.with_name(output_dir.name + "_strategy")
    # FSDP wraps the classes of the model's own `_no_split_modules` (none given here), as a user's run does.
    result = launch(config, [str(ENTRY), *entry_flags, *argv], env={"TINYLLAVA_STRATEGY_RECORD": str(record_dir)})
    assert result.returncode == 0, result.stderr[-6000:]
    return [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def assert_sharded(strategy: str, ranks: list[dict]) -> None:
    """Each rank held about half of every parameter: DTensor shards (FSDP2) or ZeRO-3 partitions, never replicas."""
    full = ranks[0]["full_numel"]
    if strategy == "zero2":  # weights replicated by design; the run record shows ZeRO-2 ran
        assert all(rank["local_numel"] == full and rank["fsdp_sharded"] == 0 for rank in ranks)
        return
    assert sum(rank["local_numel"] for rank in ranks) == full
    for rank in ranks:
        if strategy == "fsdp":
            assert rank["fsdp_sharded"] == rank["parameters"]
        else:
            # Tensors under stage3_param_persistence_threshold (10 x hidden size: the norms and biases) stay gathered.
            assert rank["zero3_released_numel"] > 0.9 * full


def assert_same_training(single_dir: Path, sharded_dir: Path, strategy: str) -> None:
    for key in ("loss", "grad_norm"):
        single, sharded = logged(single_dir, key), logged(sharded_dir, key)
        assert len(single) == 3
        assert sharded == pytest.approx(single, rel=1e-4), key
    stage = json.loads((sharded_dir / "tinyllava_run.json").read_text())["stages"][-1]
    assert stage["distributed"] == STRATEGIES[strategy][2]
    assert stage["hyperparameters"]["global_batch_size"] == 2


def assert_same_files(single_dir: Path, sharded_dir: Path) -> None:
    """The same checkpoint layout, remote code included (FSDP2 once wrote torch's `_fsdp_*.py` files instead)."""
    assert sorted(path.name for path in sharded_dir.iterdir()) == sorted(path.name for path in single_dir.iterdir())


def assert_same_weights(single_file: Path, sharded_file: Path) -> None:
    single, sharded = load_file(single_file), load_file(sharded_file)
    assert single.keys() == sharded.keys()
    for key, value in single.items():
        torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_sharded_cpu_processes_match_one_process(strategy, components_dir, single_process, tmp_path):
    data, single_lora, single_full = single_process

    lora_dir = tmp_path / "lora"
    ranks = run_sharded(strategy, finetune_argv(data, lora_dir, 1, *lora_new_model(components_dir)), lora_dir)
    assert_sharded(strategy, ranks)
    assert_same_training(single_lora, lora_dir, strategy)
    assert_same_weights(
        single_lora / "adapter" / "adapter_model.safetensors", lora_dir / "adapter" / "adapter_model.safetensors"
    )
    assert_same_weights(single_lora / "base_model" / "model.safetensors", lora_dir / "base_model" / "model.safetensors")
    assert_same_weights(single_lora / "model.safetensors", lora_dir / "model.safetensors")
    assert_same_files(single_lora, lora_dir)
    if strategy == "zero2":
        return

    full_dir = tmp_path / "full"
    ranks = run_sharded(strategy, full_from_checkpoint(data, full_dir, 1, single_lora), full_dir)
    assert_sharded(strategy, ranks)
    assert_same_training(single_full, full_dir, strategy)
    assert_same_weights(single_full / "model.safetensors", full_dir / "model.safetensors")
    assert_same_files(single_full, full_dir)

    # A normal, complete checkpoint: the Auto class loads it in this one process, every weight present.
    model, info = AutoModelForImageTextToText.from_pretrained(full_dir, output_loading_info=True)
    assert isinstance(model, TinyLlavaForConditionalGeneration)
    assert not any(info.values()), info

    if strategy == "zero3":  # resume the same run from its step-2 checkpoint (ZeRO-3 partitioned optimizer states)
        resumed_dir = tmp_path / "resumed"
        resume = ["--resume_from_checkpoint", str(full_dir / "checkpoint-2")]
        argv = full_from_checkpoint(data, resumed_dir, 1, single_lora, *resume)
        assert_sharded(strategy, run_sharded(strategy, argv, resumed_dir))
        # Steps 1-2 are the checkpoint's log; step 3 must continue exactly (weights, optimizer, scheduler, RNG).
        assert logged(resumed_dir, "loss") == pytest.approx(logged(full_dir, "loss"), rel=1e-5)
        assert_same_weights(full_dir / "model.safetensors", resumed_dir / "model.safetensors")


def test_fsdp_config_on_cpu_processes_is_refused_not_run_as_ddp(single_process, tmp_path):
    """accelerate sets up DDP for fsdp.yaml on CPU processes; tinyllava-train must stop before training."""
    data, checkpoint, _ = single_process
    argv = finetune_argv(data, tmp_path / "out", 1, "--model_name_or_path", str(checkpoint))
    result = launch(CONFIGS / "fsdp.yaml", ["-m", "tinyllava_hf.training", *argv])
    assert result.returncode != 0
    assert "the accelerate config asks for FSDP but accelerate set up MULTI_CPU" in result.stderr
    assert not (tmp_path / "out" / "trainer_state.json").exists()
