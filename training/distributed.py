"""Distributed strategies: refuse a run that silently got another one, and the two places ZeRO-3 needs care.

`accelerate launch --config_file fsdp.yaml | zero2.yaml | zero3.yaml` asks for a strategy through environment
variables; accelerate may quietly set up something else (FSDP on CPU processes becomes DDP in accelerate 1.15,
DeepSpeed is ignored under `--use_cpu`). Training would then run, with replicated weights that may not fit, or with
a checkpoint saved differently, and nothing in the log would say so. `check_distributed_strategy` turns that into an
error at startup.
"""

import contextlib
import os

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


def requested_strategy() -> tuple[DistributedType | None, int | None]:
    """The strategy `accelerate launch` was asked for, from the environment it sets for the processes.

    Returns:
        `(DistributedType.FSDP, fsdp_version)`, `(DistributedType.DEEPSPEED, zero_stage or None when the stage is in
        a DeepSpeed JSON file)`, or `(None, None)` when neither was asked for.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return DistributedType.FSDP, int(os.environ.get("FSDP_VERSION", "1"))
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return DistributedType.DEEPSPEED, None if stage is None else int(stage)
    return None, None


def check_distributed_strategy(accelerator: Accelerator) -> None:
    """Raises when the run asked for FSDP or DeepSpeed, or for several processes, and accelerate set up otherwise.

    Args:
        accelerator: the trainer's accelerator, once created.

    Raises:
        RuntimeError: naming what was asked for and what was set up.
    """
    wanted, detail = requested_strategy()
    state = accelerator.state
    got = state.distributed_type
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    problem = None
    if launched > 1 and state.num_processes != launched:
        problem = f"{launched} processes were launched but accelerate set up {state.num_processes} ({got.value})"
    elif wanted is not None and got != wanted:
        problem = f"the accelerate config asks for {wanted.value} but accelerate set up {got.value}"
    elif wanted == DistributedType.FSDP and state.fsdp_plugin.fsdp_version != detail:
        problem = (
            f"the accelerate config asks for FSDP{detail} but accelerate set up FSDP{state.fsdp_plugin.fsdp_version}"
        )
    elif wanted == DistributedType.DEEPSPEED and detail is not None and state.deepspeed_plugin.zero_stage != detail:
        problem = (
            f"the accelerate config asks for ZeRO-{detail} but DeepSpeed runs ZeRO-{state.deepspeed_plugin.zero_stage}"
        )
    if problem is not None:
        raise RuntimeError(
            f"Distributed training is not what was asked for: {problem}. On CPU processes accelerate selects FSDP only "
            "on accelerator devices and ignores DeepSpeed under --use_cpu; see training/accelerate_configs/README.md."
        )


def is_zero3() -> bool:
    """Whether DeepSpeed ZeRO-3 is active (transformers then partitions every model it builds or loads)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def gathered_parameters(model: nn.Module):
    """A context in which a ZeRO-3 partitioned `model` holds its full weights (on every rank), e.g. to save it.

    Every rank must enter it: gathering is a collective. Without ZeRO-3 it does nothing.
    """
    if not is_zero3():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def end_zero3_model_building() -> None:
    """Lets this process load models whole again once training is over (the single-process LoRA merge).

    While the DeepSpeed config is registered, transformers builds every model under `deepspeed.zero.Init`, a
    collective, so a model loaded on rank 0 alone would wait forever for the other ranks.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def keep_used_weight_conversions(model: nn.Module) -> None:
    """Makes a model loaded under ZeRO-3 save its weights under the names it was loaded with.

    `from_pretrained` remembers the key renamings it applied, so that `save_pretrained` writes the checkpoint's own
    format back. Its ordinary path keeps only the renamings that matched a key; its ZeRO-3 path (transformers 5.24,
    `_load_state_dict_into_zero3_model`) keeps every candidate, so the save then "reverts" renamings that never
    happened and writes `model.language_model.model.*` / `model.vision_tower.vision_model.*` keys that no loader
    expects. Filtering on `was_used()` is exactly what the ordinary path does.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]
