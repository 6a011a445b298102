"""What `accelerate launch` runs in the FSDP2 / ZeRO-3 tests: `tinyllava-train` with two test-only additions.

1. `--force_fsdp_on_cpu` (first argument): accelerate 1.15 selects FSDP only for accelerator devices. Its
   `AcceleratorState` looks at `ACCELERATE_USE_FSDP` only when the distributed type is MULTI_GPU / MULTI_NPU / ...,
   never MULTI_CPU, so on a CPU-only machine an FSDP config with `--use_cpu` silently becomes DDP, and no public
   setting changes that. On GPUs the shipped `fsdp.yaml` selects FSDP by itself. Here the state is switched to FSDP
   right after accelerate built it, with the plugin accelerate itself made from the launch environment; everything
   after that (`fully_shard`, the sharded optimizer, the full-state-dict save) is accelerate's and torch's own code.
2. A callback that writes, per rank, how the model's parameters are held once a step has run
   (`$TINYLLAVA_STRATEGY_RECORD/rank{N}.json`): DTensor shards under FSDP2, partitions under ZeRO-3. It is what
   lets a test tell a sharded run from one that quietly replicated the model.
"""

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


def force_fsdp_on_cpu() -> None:
    """Makes `AcceleratorState` take the FSDP plugin that accelerate built from the launch env on CPU processes."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


class StrategyRecord(TrainerCallback):
    """Writes how the parameters are held after this process's first optimizer step."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.written = False

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.written:  # the first step of this process (step 3 of a run resumed from step 2)
            return
        self.written = True
        from torch.distributed.tensor import DTensor

        model = getattr(model, "module", model)  # the DeepSpeed engine holds the model as `module`
        # Per rank: how many parameters are DTensors sharded across the ranks (FSDP2), how many elements ZeRO-3 has
        # released from the module (only the rank's partition stays, in `ds_tensor`), and the elements this rank
        # holds of all of them.
        record = {"parameters": 0, "fsdp_sharded": 0, "zero3_released_numel": 0, "local_numel": 0, "full_numel": 0}
        for parameter in model.parameters():
            record["parameters"] += 1
            if isinstance(parameter, DTensor):
                local, full = parameter.to_local().numel(), parameter.numel()
                record["fsdp_sharded"] += any(placement.is_shard() for placement in parameter.placements)
            elif hasattr(parameter, "ds_id"):
                local, full = parameter.ds_tensor.numel(), parameter.ds_numel
                if parameter.numel() == 0 and parameter.ds_status.name == "NOT_AVAILABLE":
                    record["zero3_released_numel"] += full
            else:
                local = full = parameter.numel()
            record["local_numel"] += local
            record["full_numel"] += full
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{args.process_index}.json").write_text(json.dumps(record))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--force_fsdp_on_cpu":
        force_fsdp_on_cpu()
        argv = argv[1:]
    import logging

    from tinyllava_hf.training.cli import parse_args
    from tinyllava_hf.training.train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, sft_config, recipe = parse_args(argv)
    callbacks = [StrategyRecord(Path(os.environ["TINYLLAVA_STRATEGY_RECORD"]))]
    train(model_args, data_args, sft_config, recipe=recipe, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
