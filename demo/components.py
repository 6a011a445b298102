"""Builds the demo's pretrained components: a tokenizer trained on the demo's words, a tiny LLM from a config (random
weights, trained by both TinyLLaVA stages) and a tiny vision tower pretrained on the synthetic world.

They are saved as ordinary Hub-style directories, so the demo assembles its TinyLLaVA through exactly the path a user
takes with real checkpoints (`--llm DIR --vision_tower DIR`, i.e. `from_pretrained_components`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tinyllava_hf.chat_templates import SYSTEM_PROMPT

from .synthetic import vocabulary_corpus
from .tokenizer import build_tokenizer
from .vision_pretraining import pretrain_vision_tower

# Words the `llama` chat template writes around every turn.
TEMPLATE_WORDS = [SYSTEM_PROMPT, "USER: ASSISTANT:"]


@dataclass(frozen=True)
class ModelSize:
    """Shape of the tiny components. Defaults learn the synthetic task in a few hundred steps on two CPU cores."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 2
    vision_feature_layer: int = -1  # the hidden state the connector reads, and the one the tower is pretrained on


def build_components(
    root: Path, size: ModelSize, seed: int = 0, vision_pretraining_steps: int = 0
) -> tuple[Path, Path]:
    """Writes a randomly initialised Llama-style LLM (with its tokenizer) and a SigLIP vision tower (with its image
    processor) under `root`; the tower is first pretrained on the synthetic world for `vision_pretraining_steps`
    steps (see [`vision_pretraining`]), as TinyLLaVA starts from a pretrained tower.

    Returns:
        `(llm_dir, vision_dir)`, to pass as `--llm` and `--vision_tower`.
    """
    torch.manual_seed(seed)
    llm_dir, vision_dir = root / "llm", root / "vision_tower"
    tokenizer = build_tokenizer(vocabulary_corpus() + TEMPLATE_WORDS)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=2 * size.text_hidden,
        num_hidden_layers=size.text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.unk_token_id,
    )
    LlamaForCausalLM(text_config).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)

    vision_config = SiglipVisionConfig(
        image_size=size.image_size,
        patch_size=size.patch_size,
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=4,
        vision_use_head=False,  # SigLIP's pooling head: TinyLLaVA reads the patch features, never the pooled one
    )
    tower = SiglipVisionModel(vision_config)
    processor = SiglipImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    if vision_pretraining_steps:
        pretrain_vision_tower(
            tower,
            processor,
            size.image_size,
            vision_pretraining_steps,
            feature_layer=size.vision_feature_layer,
            seed=seed,
        )
    tower.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)
    return llm_dir, vision_dir
