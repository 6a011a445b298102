"""`TinyLlavaSFTTrainer`: TRL's `SFTTrainer` with three additions and nothing else.

1. Per-module learning rates, as optimizer parameter groups (`create_optimizer`).
2. A training LM head that only scores supervised positions ([`training.supervised_head`]); TRL's `compute_loss`,
   metrics, gradient accumulation and DDP scaling are kept as they are.
3. Under FSDP2, checkpoints carry TinyLLaVA's remote code, not torch's (`_save`).
"""

from accelerate.utils import is_peft_model
from torch.distributed.fsdp import FSDPModule
from trl import SFTTrainer

from .supervised_head import install_supervised_lm_head
from .tuning import optimizer_param_groups


class TinyLlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` for TinyLLaVA.

    Args:
        module_learning_rates: `{"llm" | "vision_tower" | "connector": lr}`; modules left out (or None) use
            `args.learning_rate`.
        *args, **kwargs: as for `trl.SFTTrainer`.
    """

    def __init__(self, *args, module_learning_rates: dict[str, float | None] | None = None, **kwargs):
        self.module_learning_rates = {k: v for k, v in (module_learning_rates or {}).items() if v is not None}
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
