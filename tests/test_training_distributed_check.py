"""`tinyllava-train` refuses a run that asked for FSDP, DeepSpeed or several processes and got something else, and
adds the flags that make CPU processes train together (`--use_cpu` for DDP/FSDP, `--ddp_backend gloo` for DeepSpeed)."""

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from tinyllava_hf.training.cli import _cpu_process_group_flags
from tinyllava_hf.training.distributed import check_distributed_strategy

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
ZERO3_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def accelerator(distributed_type, num_processes=2, fsdp_version=2, zero_stage=3):
    state = SimpleNamespace(
        distributed_type=distributed_type,
        num_processes=num_processes,
        fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
        deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage),
    )
    return SimpleNamespace(state=state)


@pytest.fixture
def launch_env(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def set_env(values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.mark.parametrize(
    "env, got, message",
    [
        (FSDP_ENV, accelerator(DistributedType.MULTI_CPU), "asks for FSDP but accelerate set up MULTI_CPU"),
        (ZERO3_ENV, accelerator(DistributedType.MULTI_CPU), "asks for DEEPSPEED but accelerate set up MULTI_CPU"),
        (FSDP_ENV, accelerator(DistributedType.FSDP, fsdp_version=1), "asks for FSDP2 but accelerate set up FSDP1"),
        (ZERO3_ENV, accelerator(DistributedType.DEEPSPEED, zero_stage=2), "asks for ZeRO-3 but DeepSpeed runs ZeRO-2"),
        ({}, accelerator(DistributedType.NO, num_processes=1), "2 processes were launched but accelerate set up 1"),
    ],
)
def test_a_run_that_got_another_strategy_is_an_error(launch_env, env, got, message):
    launch_env(env)
    with pytest.raises(RuntimeError, match=message):
        check_distributed_strategy(got)


@pytest.mark.parametrize(
    "env, got",
    [
        (FSDP_ENV, accelerator(DistributedType.FSDP)),
        (ZERO3_ENV, accelerator(DistributedType.DEEPSPEED)),
        ({}, accelerator(DistributedType.MULTI_CPU)),
    ],
)
def test_a_run_that_got_what_it_asked_for_starts(launch_env, env, got):
    launch_env(env)
    check_distributed_strategy(got)


def test_cpu_processes_get_the_flags_of_their_strategy(launch_env, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert _cpu_process_group_flags(["finetune"]) == ["--use_cpu", "true"]
    assert _cpu_process_group_flags(["finetune", "--use_cpu", "false"]) == []  # the user's choice stands
    launch_env(ZERO3_ENV)
    assert _cpu_process_group_flags(["finetune"]) == ["--ddp_backend", "gloo"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _cpu_process_group_flags(["finetune"]) == []
