"""One training stage: load or assemble the model, set its tuning modes, train with TRL, save a Hub-ready dir."""

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import TrainerCallback, set_seed
from trl import SFTConfig

from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor

from ..chat_templates import CHAT_TEMPLATES, LLM_TEMPLATE, resolve_chat_template
from .arguments import DataArguments, ModelArguments
from .collator import TinyLlavaCollator
from .data import load_training_dataset
from .distributed import (
    check_distributed_strategy,
    end_zero3_model_building,
    gathered_parameters,
    is_zero3,
    keep_used_weight_conversions,
)
from .malloc_tuning import tune_malloc
from .merge import merge_adapter
from .outputs import plot_loss_curve, write_model_card, write_run_record
from .packed_attention import enable_packed_attention
from .packing import PackedBatchSampler
from .trainer import TinyLlavaSFTTrainer
from .tuning import apply_lora, set_trainable

logger = logging.getLogger(__name__)

_HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "warmup_steps", "lr_scheduler_type", "weight_decay", "max_length", "seed", "bf16", "fp16",
    "activation_checkpointing",
)  # fmt: skip


def require_qlora_support() -> None:
    """QLoRA needs bitsandbytes 4-bit layers, which train only on a CUDA GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "--tune_llm qlora needs a CUDA GPU: bitsandbytes 4-bit layers do not train on CPU. Use --tune_llm lora "
            "(the finetune_lora recipe) on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError("--tune_llm qlora needs bitsandbytes: pip install 'tinyllava-hf[qlora]'.") from error


def quantization_config():
    """4-bit NF4 for the LLM; the vision tower, connector and lm_head stay in full precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["vision_tower", "connector", "lm_head"],
    )


def new_model_config_kwargs(model_args: ModelArguments) -> dict:
    """The `TinyLlavaConfig` fields of a new model, which the processor needs too (they set the image tokens)."""
    config_kwargs = {
        "vision_feature_layer": model_args.vision_feature_layer,
        "connector_type": model_args.connector_type,
    }
    if model_args.vision_feature_select_strategy is not None:
        config_kwargs["vision_feature_select_strategy"] = model_args.vision_feature_select_strategy
    return config_kwargs


def load_processor(model_args: ModelArguments, args: SFTConfig) -> TinyLlavaProcessor:
    """The processor of the model to train; loaded before the model, so that the data is checked first.

    It keeps the conversation template the model will answer with: `--chat_template` when it is not `pretrain`,
    else `--conversation_template` for a new model, else its own (a new model gets the LLM's own template when the
    LLM has one, else the original's for its family). Template names are resolved by
    `tinyllava_hf.chat_templates.resolve_chat_template` (`llm` = the LLM tokenizer's own template).

    Raises:
        ValueError: for `--conversation_template` with a `--chat_template` other than `pretrain`.
    """
    pretraining = model_args.chat_template == "pretrain"
    if model_args.conversation_template is not None and not pretraining:
        raise ValueError(
            "--conversation_template names the template a NEW model keeps while --chat_template pretrain renders "
            f"its captions; with --chat_template {model_args.chat_template}, that template is the one kept: "
            "remove --conversation_template."
        )
    saved_template = model_args.conversation_template if pretraining else model_args.chat_template
    if pretraining and model_args.model_name_or_path is not None and saved_template is not None:
        logger.warning(
            "--conversation_template %s is for a new model; %s keeps its own chat_template.jinja.",
            saved_template, model_args.model_name_or_path,
        )  # fmt: skip
        saved_template = None
    if model_args.model_name_or_path is not None:
        if model_args.chat_template == LLM_TEMPLATE:
            # A saved processor's tokenizer carries the processor's template, so the LLM's own is no longer known.
            raise ValueError(
                f"--chat_template {LLM_TEMPLATE} names the LLM tokenizer's own template, which a TinyLLaVA checkpoint "
                f"does not keep apart: omit --chat_template to keep {model_args.model_name_or_path}'s "
                "chat_template.jinja, or pass a template name or .jinja file."
            )
        processor = TinyLlavaProcessor.from_pretrained(model_args.model_name_or_path)
        if saved_template is not None:
            processor.chat_template = resolve_chat_template(saved_template, processor.tokenizer)
        return processor
    return TinyLlavaProcessor.from_pretrained_components(
        llm=model_args.llm,
        vision_tower=model_args.vision_tower,
        chat_template=saved_template,
        image_aspect_ratio=model_args.image_aspect_ratio,
        model_max_length=args.max_length,
        **new_model_config_kwargs(model_args),
    )


def load_model(model_args: ModelArguments, args: SFTConfig) -> TinyLlavaForConditionalGeneration:
    """The model to train: a checkpoint, or a new one assembled from --llm/--vision_tower."""
    init_kwargs = {"dtype": torch.float32, **(args.model_init_kwargs or {})}
    if model_args.model_name_or_path is not None:
        if model_args.tune_llm == "qlora":
            init_kwargs["quantization_config"] = quantization_config()
        model = TinyLlavaForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **init_kwargs)
        if is_zero3():
            keep_used_weight_conversions(model)
        return model
    if model_args.tune_llm == "qlora":
        raise ValueError(
            "QLoRA needs a saved base to quantize: run a stage first and pass its dir as --model_name_or_path."
        )
    return TinyLlavaForConditionalGeneration.from_pretrained_components(
        llm=model_args.llm,
        vision_tower=model_args.vision_tower,
        dtype=init_kwargs["dtype"],
        **new_model_config_kwargs(model_args),
    ).train()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job scheduler's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cap_dataloader_workers(args: SFTConfig) -> None:
    """At most as many dataloader workers per process as it has CPUs (shared among the node's processes), kept
    alive across epochs.

    The recipes ask for 8 workers, sized for a GPU node; on a small machine more workers than CPUs only contend with
    the training process, and re-starting them at every epoch costs each one a fresh dataset and tokenizer copy.
    """
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = available_cpus()
    limit = cpus // local_processes
    if args.dataloader_num_workers > limit:
        logger.info(
            "Using %d dataloader workers instead of %d: %d CPUs for %d training process(es) on this machine.",
            limit, args.dataloader_num_workers, cpus, local_processes,
        )  # fmt: skip
        args.dataloader_num_workers = limit
    if args.dataloader_num_workers > 0:
        args.dataloader_persistent_workers = True


def prepare_args(args: SFTConfig) -> SFTConfig:
    """Settings the custom collator needs, whatever the recipe says.

    `--packing` is read by `train` before this and turned off here: TRL refuses to pack vision data, so our sampler
    and collator pack instead (`training.packing`).
    """
    args.remove_unused_columns = False  # the collator reads `messages` / `images`
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    if args.packing and args.max_length is None:
        raise ValueError("--packing true needs --max_length: the tokens of a packed row.")
    args.packing = False
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinned host memory only speeds up copies to a GPU
    if args.resume_from_checkpoint in ("true", "True", "last"):
        args.resume_from_checkpoint = True  # Trainer: the last checkpoint-N in output_dir
    cap_dataloader_workers(args)
    return args


def stage_record(
    model_args, data_args, args, trainer, recipe: str | None, skipped_or_truncated: dict, packing: bool = False
) -> dict:
    """This stage's entry of `tinyllava_run.json`; `skipped_or_truncated` counts samples by kind (`TrainingData`)."""
    hyperparameters = {name: getattr(args, name) for name in _HYPERPARAMETERS}
    hyperparameters["packing"] = packing  # with packing, per_device_train_batch_size counts rows
    hyperparameters["global_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    hyperparameters.update(
        {key: value for key, value in asdict(model_args).items() if key.startswith("tune_") or key.endswith("_lr")}
    )
    hyperparameters["chat_template"] = model_args.chat_template
    hyperparameters["conversation_template"] = model_args.conversation_template
    if model_args.uses_lora:
        hyperparameters.update({k: getattr(model_args, k) for k in ("lora_r", "lora_alpha", "lora_dropout")})
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "recipe": recipe,
        "llm": model_args.llm,
        "vision_tower": model_args.vision_tower,
        "base_checkpoint": model_args.model_name_or_path,
        "datasets": list(data_args.data_path),
        "hyperparameters": hyperparameters,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "lora": model_args.uses_lora,
        "distributed": describe_strategy(trainer.accelerator),
        "skipped_or_truncated_samples": skipped_or_truncated,
    }


def describe_strategy(accelerator) -> str:
    """`DDP x 8 processes`, `FSDP2 x 2 processes`, `DeepSpeed ZeRO-3 x 4 processes` or `single process`."""
    state = accelerator.state
    if state.num_processes == 1 and state.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return "single process"
    name = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed ZeRO-"}.get(
        state.distributed_type, "DDP"
    )
    if state.distributed_type == DistributedType.FSDP:
        name += str(state.fsdp_plugin.fsdp_version)
    elif state.distributed_type == DistributedType.DEEPSPEED:
        name += str(state.deepspeed_plugin.zero_stage)
    return f"{name} x {state.num_processes} processes"


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: SFTConfig,
    recipe: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Runs one stage and writes its complete checkpoint to `args.output_dir`.

    A LoRA stage writes the adapter to `<output_dir>/adapter` (its base is `--model_name_or_path`, or, for a new
    model, the untrained assembled model saved to `<output_dir>/base_model`) and the merged model to `output_dir`.

    Returns:
        The output directory.
    """
    tune_malloc()
    if model_args.tune_llm == "qlora":
        require_qlora_support()
    packing = args.packing
    args = prepare_args(args)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    processor = load_processor(model_args, args)
    collator = TinyLlavaCollator(
        processor,
        # Every template but `pretrain` (captions, this run only) is the processor's own by now.
        chat_template=CHAT_TEMPLATES["pretrain"] if model_args.chat_template == "pretrain" else None,
        max_length=args.max_length,
        packing=packing,
    )
    data = load_training_dataset(data_args, collator, args.dataset_num_proc)  # before the model is loaded
    batch_sampler = None
    if packing:
        batch_sampler = PackedBatchSampler(
            [min(count, args.max_length) for count in data.num_tokens],
            args.max_length,
            rows_per_batch=args.per_device_train_batch_size,
            seed=args.seed,
        )
    model = load_model(model_args, args)
    if packing and not enable_packed_attention(model):
        collator.flatten_packed_rows = "flash" in (model.config.get_text_config()._attn_implementation or "")

    base_checkpoint = model_args.model_name_or_path
    if model_args.uses_lora:
        if base_checkpoint is None:
            base_checkpoint = str(output_dir / "base_model")
            with gathered_parameters(model):  # ZeRO-3 partitioned the model as it was built
                if args.process_index == 0:
                    model.save_pretrained(base_checkpoint)
                    processor.save_pretrained(base_checkpoint)
        model = apply_lora(model, model_args)
        # Absolute, so the adapter loads onto its base offline from any working directory.
        is_local = os.path.isdir(base_checkpoint)
        model.peft_config["default"].base_model_name_or_path = (
            str(Path(base_checkpoint).resolve()) if is_local else base_checkpoint
        )
    trainable = set_trainable(model, model_args)
    logger.info("Trainable parameters per module: %s", trainable)
    if args.activation_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad

    trainer = TinyLlavaSFTTrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        train_batch_sampler=batch_sampler,
        module_learning_rates={
            "llm": model_args.llm_lr,
            "vision_tower": model_args.vision_tower_lr,
            "connector": model_args.connector_lr,
        },
    )
    check_distributed_strategy(trainer.accelerator)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if collator.counts:
        logger.warning("Truncations while training (a sample counts once per epoch): %s", dict(collator.counts))

    save_dir = output_dir / "adapter" if model_args.uses_lora else output_dir
    trainer.save_model(str(save_dir))
    trainer.save_state()
    if is_zero3():
        end_zero3_model_building()  # the merge below loads models in this process alone
    if trainer.is_world_process_zero():
        if model_args.uses_lora:
            merge_adapter(save_dir, output_dir, base_checkpoint)
        write_run_record(
            output_dir,
            stage_record(model_args, data_args, args, trainer, recipe, data.record(), packing),
            model_args.model_name_or_path,
        )
        plot_loss_curve(trainer.state.log_history, output_dir)
        write_model_card(output_dir)
        logger.info("Saved the %s checkpoint to %s", "merged" if model_args.uses_lora else "trained", output_dir)
    return output_dir
