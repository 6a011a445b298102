"""Command-line / recipe arguments of `tinyllava-train`, parsed by `trl.TrlParser` together with `trl.SFTConfig`.

Every field here, and every `SFTConfig`/`TrainingArguments` field, can be set in a recipe YAML and overridden with a
`--flag` on the command line.
"""

from dataclasses import dataclass, field

LLM_MODES = ("frozen", "full", "lora", "qlora")
VISION_TOWER_MODES = ("frozen", "full", "partial")
CONNECTOR_MODES = ("frozen", "full")
BAD_SAMPLE_POLICIES = ("error", "skip")
# peft regex (re.fullmatch on module names): the linear layers of the language model only, never the vision tower,
# the connector or lm_head. Covers Llama/Qwen2/Gemma/StableLM (q,k,v,o,gate,up,down) and Phi (dense, fc1, fc2).
DEFAULT_LORA_TARGET_MODULES = (
    r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|dense|gate_proj|up_proj|down_proj|fc1|fc2)"
)


@dataclass
class ModelArguments:
    """Which model to train and how each of its modules is tuned."""

    llm: str | None = field(
        default=None, metadata={"help": "Causal LM (Hub id or dir) for a NEW model; needs --vision_tower."}
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "CLIP/SigLIP/DINOv2 model (Hub id or dir) for a NEW model; needs --llm."}
    )
    connector_type: str = field(
        default="mlp2x_gelu",
        metadata={"help": "Connector of a NEW model: mlp{N}x_gelu | linear | identity | resampler."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a TinyLLaVA checkpoint dir (e.g. the previous stage's output)."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Template that renders the training data: 'pretrain' (captions), phi | llama | gemma | "
            "qwen2_base | qwen2_instruct, 'llm' (the LLM tokenizer's own template), 'original' (the original "
            "TinyLLaVA's for the LLM family), a .jinja file or a Jinja string. Default: the processor's own template "
            "(a new model's: 'llm' when the LLM has a chat template, else 'original'). Every template except "
            "'pretrain' is also saved with the processor."
        },
    )
    conversation_template: str | None = field(
        default=None,
        metadata={
            "help": "With --chat_template pretrain on a NEW model: the conversation template its processor keeps "
            "(same choices as --chat_template). The pretrain recipe sets 'original', as the paper; pass 'llm' to "
            "keep the LLM's own. Default: 'llm' when the LLM has a chat template, else 'original'."
        },
    )
    image_aspect_ratio: str = field(default="square", metadata={"help": "NEW model: 'square' or 'pad'."})
    vision_feature_layer: int = field(
        default=-2, metadata={"help": "NEW model: vision hidden state fed to the connector."}
    )
    vision_feature_select_strategy: str | None = field(
        default=None, metadata={"help": "NEW model: 'default' (drop first token) or 'full'. Default: by tower."}
    )

    tune_llm: str = field(default="full", metadata={"help": f"Language model: {' | '.join(LLM_MODES)}."})
    tune_vision_tower: str = field(
        default="frozen", metadata={"help": f"Vision tower: {' | '.join(VISION_TOWER_MODES)}."}
    )
    tune_vision_tower_from_layer: int = field(
        default=0, metadata={"help": "With tune_vision_tower=partial: encoder layers from this index on are trained."}
    )
    tune_connector: str = field(default="full", metadata={"help": f"Connector: {' | '.join(CONNECTOR_MODES)}."})
    llm_lr: float | None = field(default=None, metadata={"help": "Learning rate of the LLM (default: learning_rate)."})
    vision_tower_lr: float | None = field(default=None, metadata={"help": "Learning rate of the vision tower."})
    connector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the connector."})

    lora_r: int = field(default=128, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGET_MODULES,
        metadata={"help": "Regex (re.fullmatch) of the LoRA target modules; must stay inside the language model."},
    )

    def __post_init__(self):
        for name, allowed in (
            ("tune_llm", LLM_MODES),
            ("tune_vision_tower", VISION_TOWER_MODES),
            ("tune_connector", CONNECTOR_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}.")
        if self.image_aspect_ratio not in ("square", "pad"):
            raise ValueError(f"--image_aspect_ratio must be 'square' or 'pad'; got {self.image_aspect_ratio!r}.")
        new_model = self.llm is not None or self.vision_tower is not None
        if new_model and self.model_name_or_path is not None:
            raise ValueError(
                "Pass either --model_name_or_path (continue) or --llm and --vision_tower (new model), not both."
            )
        if new_model and (self.llm is None or self.vision_tower is None):
            raise ValueError("A new model needs both --llm and --vision_tower.")
        if not new_model and self.model_name_or_path is None:
            raise ValueError("No model given: pass --model_name_or_path DIR, or --llm and --vision_tower.")

    @property
    def uses_lora(self) -> bool:
        return self.tune_llm in ("lora", "qlora")


@dataclass
class DataArguments:
    """Where the training data is and what to do with bad samples."""

    data_path: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LLaVA-format .json/.jsonl files, or HF datasets (a save_to_disk dir, or a .parquet/.arrow/"
            ".jsonl file) with `messages` + `images` columns. Several paths are concatenated."
        },
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder that relative image paths start from."})
    on_bad_sample: str = field(
        default="error",
        metadata={
            "help": "error: stop at the first bad sample (missing/corrupt image, <image> count mismatch, bad "
            "conversation, too long, no supervised token). skip: drop it, count it and log the counts."
        },
    )

    def __post_init__(self):
        if isinstance(self.data_path, str):
            self.data_path = [self.data_path]
        if not self.data_path:
            raise ValueError("No training data: pass --data_path FILE_OR_DIR [FILE_OR_DIR ...].")
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(
                f"--on_bad_sample must be one of {', '.join(BAD_SAMPLE_POLICIES)}; got {self.on_bad_sample!r}."
            )
