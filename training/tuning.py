"""Per-module tuning: which parameters train (frozen | full | partial | lora | qlora) and at which learning rate.

Parameters are assigned to a module by name, so the same rules work on a plain TinyLLaVA model and on its PEFT
wrapper (`base_model.model.model.connector.modules_to_save.default.0.weight`, ...).
"""

import logging
import re

import torch
from torch import nn

from .arguments import ModelArguments
from .lora_dropout import fuse_lora_dropout

logger = logging.getLogger(__name__)

MODULES = ("llm", "vision_tower", "connector")
# A name belongs to a module when one of these occurs as a dotted component; lm_head is tuned with the LLM.
_MODULE_PATTERNS = {
    "vision_tower": re.compile(r"(^|\.)vision_tower\."),
    "connector": re.compile(r"(^|\.)connector\."),
    "llm": re.compile(r"(^|\.)(language_model|lm_head)\."),
}
# Encoder layer index in CLIP/SigLIP (`encoder.layers.N.`) and DINOv2 (`encoder.layer.N.`) towers.
_VISION_LAYER = re.compile(r"\.encoder\.layers?\.(\d+)\.")


def module_of(name: str) -> str:
    """`llm`, `vision_tower` or `connector` for a parameter name of a TinyLLaVA model (PEFT-wrapped or not)."""
    for module, pattern in _MODULE_PATTERNS.items():
        if pattern.search(name):
            return module
    raise ValueError(f"Parameter {name!r} belongs to no TinyLLaVA module (llm, vision_tower, connector).")


def is_trainable(name: str, model_args: ModelArguments) -> bool:
    """Whether the parameter `name` trains under the tuning modes of `model_args`."""
    if ".original_module." in name:  # PEFT keeps the untouched copy of every modules_to_save module
        return False
    module = module_of(name)
    if module == "llm":
        return model_args.tune_llm == "full" or (model_args.uses_lora and "lora_" in name)
    if module == "connector":
        return model_args.tune_connector == "full"
    if model_args.tune_vision_tower == "partial":
        layer = _VISION_LAYER.search(name)
        return layer is not None and int(layer.group(1)) >= model_args.tune_vision_tower_from_layer
    return model_args.tune_vision_tower == "full"


def set_trainable(model: nn.Module, model_args: ModelArguments) -> dict[str, int]:
    """Sets `requires_grad` of every parameter from the tuning modes.

    Returns:
        The number of trainable parameters per module.
    """
    counts = dict.fromkeys(MODULES, 0)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_trainable(name, model_args))
        if parameter.requires_grad:
            # ZeRO-3 leaves an empty tensor in the module and records the real size in `ds_numel`.
            counts[module_of(name)] += getattr(parameter, "ds_numel", parameter.numel())
    if not any(counts.values()):
        raise ValueError(
            "Nothing to train: every module is frozen (see --tune_llm/--tune_vision_tower/--tune_connector)."
        )
    return counts


def lora_config(model_args: ModelArguments):
    """peft `LoraConfig` for the LLM's linear layers; trained vision/connector weights are saved with the adapter."""
    from peft import LoraConfig

    modules_to_save = [
        name
        for name, mode in (("connector", model_args.tune_connector), ("vision_tower", model_args.tune_vision_tower))
        if mode != "frozen"
    ]
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, model_args: ModelArguments) -> nn.Module:
    """Wraps `model` with LoRA adapters on the language model only; raises if the regex reaches other modules."""
    from peft import get_peft_model

    if model_args.tune_llm == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, lora_config(model_args))
    stray = sorted({module_of(name) for name, _ in peft_model.named_parameters() if "lora_" in name} - {"llm"})
    if stray:
        raise ValueError(
            f"--lora_target_modules {model_args.lora_target_modules!r} also matches layers of {stray}; LoRA is only "
            "for the language model. Anchor the regex on '.language_model.'."
        )
    if not any("lora_" in name for name, _ in peft_model.named_parameters()):
        raise ValueError(f"--lora_target_modules {model_args.lora_target_modules!r} matches no LLM layer.")
    logger.info(
        "LoRA dropout fused into lora_A for %d adapted layers (training/lora_dropout.py).",
        fuse_lora_dropout(peft_model),
    )
    return peft_model


def optimizer_param_groups(
    model: nn.Module, weight_decay: float, decay_names: set[str], learning_rates: dict[str, float]
) -> list[dict]:
    """Optimizer groups per (module, decay / no decay), with a module's own `lr` where `learning_rates` has one.

    Args:
        model: the model being trained.
        weight_decay: weight decay of the decayed groups.
        decay_names: names of the parameters that get weight decay (`Trainer.get_decay_parameter_names`).
        learning_rates: module name -> learning rate; modules absent use the optimizer's default.
    """
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((module_of(name), name in decay_names), []).append(parameter)
    return [
        {
            "params": parameters,
            "weight_decay": weight_decay if decay else 0.0,
            **({"lr": learning_rates[module]} if module in learning_rates else {}),
        }
        for (module, decay), parameters in groups.items()
    ]
