"""`TinyLlavaSFTTrainer`: TRL's `SFTTrainer` with four additions and nothing else.

1. Per-module learning rates, as optimizer parameter groups (`create_optimizer`).
2. A training LM head that only scores supervised positions ([`training.supervised_head`]); TRL's `compute_loss`,
   metrics, gradient accumulation and DDP scaling are kept as they are.
3. Under FSDP2, checkpoints carry TinyLLaVA's remote code, not torch's (`_save`).
4. An optional batch sampler for the training data (`get_train_dataloader`): packing's `PackedBatchSampler`.
"""

from functools import partial

from accelerate.utils import is_peft_model
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_utils import seed_worker
from trl import SFTTrainer

from .supervised_head import install_supervised_lm_head
from .tuning import optimizer_param_groups


class TinyLlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` for TinyLLaVA.

    Args:
        module_learning_rates: `{"llm" | "vision_tower" | "connector": lr}`; modules left out (or None) use
            `args.learning_rate`.
        train_batch_sampler: yields the training batches' sample indices instead of the Trainer's sampler and
            `per_device_train_batch_size`. Under DDP, accelerate gives each process every N-th batch.
        *args, **kwargs: as for `trl.SFTTrainer`.
    """

    def __init__(
        self,
        *args,
        module_learning_rates: dict[str, float | None] | None = None,
        train_batch_sampler: Sampler[list[int]] | None = None,
        **kwargs,
    ):
        self.module_learning_rates = {k: v for k, v in (module_learning_rates or {}).items() if v is not None}
        self.train_batch_sampler = train_batch_sampler
        super().__init__(*args, **kwargs)
        # SFTTrainer has just patched its fused LM head onto the (unwrapped) model; replace it.
        install_supervised_lm_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.module_learning_rates:
            opt_model = self.model if model is None else model
            groups = optimizer_param_groups(
                opt_model,
                self.args.weight_decay,
                set(self.get_decay_parameter_names(opt_model)),
                self.module_learning_rates,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # FSDP2's fully_shard swaps the model's class for a subclass defined in torch. save_pretrained copies the
        # source file of the model's class (and its relative imports) as the checkpoint's remote code, so it would
        # write torch's _fsdp_*.py files instead of modeling_tinyllava.py. The full state dict is already gathered
        # here, so the save itself needs nothing of FSDP: it runs under the original class.
        sharded_class = type(self.model)
        if not isinstance(self.model, FSDPModule):
            return super()._save(output_dir, state_dict)
        self.model.__class__ = next(c for c in sharded_class.__mro__[1:] if not issubclass(c, FSDPModule))
        try:
            return super()._save(output_dir, state_dict)
        finally:
            self.model.__class__ = sharded_class

    def get_train_dataloader(self) -> DataLoader:
        if self.train_batch_sampler is None:
            return super().get_train_dataloader()
        args = self.args
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=self.train_batch_sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        # accelerate shards the batches across processes and sets each epoch on the sampler (`set_epoch`).
        return self.accelerator.prepare(dataloader)
