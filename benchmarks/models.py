"""The benchmark models: the issue's 70M config, a ~0.5B Qwen2-like config, their tokenizer and processor, and the
same weights exported to transformers' `LlavaForConditionalGeneration`.

Everything is built from configs with a fixed seed; nothing is downloaded.
"""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import (
    LlamaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import CHAT_TEMPLATES
from tinyllava_hf.demo.tokenizer import build_tokenizer as build_bpe_tokenizer

from .data import CORPUS

IMAGE_SIZE = 224
PATCH_SIZE = 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 256: SigLIP has no CLS token and keeps every patch ("full")
CHAT_TEMPLATE = "llama"


def build_tokenizer(text_model_type: str = "llama") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the benchmark corpus, with `<image>` added by the original's rules."""
    tokenizer = build_bpe_tokenizer(
        CORPUS, special_tokens=["<unk>", "<s>", "</s>", "<|endoftext|>", "<pad>"], model_max_length=2048
    )
    return add_image_token(tokenizer, text_model_type)


def siglip_config() -> SiglipVisionConfig:
    """SigLIP-like vision tower: 224 px, patch 14, hidden 384, 6 layers."""
    return SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=6,
    )


def config_70m(tokenizer) -> TinyLlavaConfig:
    """The issue's 70M config: SigLIP-like 224/14 x384 x6 + Llama-like vocab 32000 x512 x8 (4 kv heads), mlp2x_gelu."""
    text_config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TinyLlavaConfig(
        text_config=text_config,
        vision_config=siglip_config(),
        connector_type="mlp2x_gelu",
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    )


def config_05b(tokenizer) -> TinyLlavaConfig:
    """~0.5B: a Qwen2-0.5B-like LM (hidden 896 x24, 14 heads / 2 kv heads, vocab 151936, tied) + the SigLIP above."""
    text_config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1e6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TinyLlavaConfig(
        text_config=text_config,
        vision_config=siglip_config(),
        connector_type="mlp2x_gelu",
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    )


def build_model(config: TinyLlavaConfig, seed: int = 0) -> TinyLlavaForConditionalGeneration:
    """A randomly initialised fp32 TinyLLaVA in eval mode (SDPA attention, the default)."""
    torch.manual_seed(seed)
    return TinyLlavaForConditionalGeneration(config).eval()


def build_processor(tokenizer) -> TinyLlavaProcessor:
    return TinyLlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATES[CHAT_TEMPLATE],
        num_image_tokens=NUM_IMAGE_TOKENS,
    )


def image_processor() -> SiglipImageProcessorPil:
    return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_llava_processor(tokenizer) -> LlavaProcessor:
    """transformers' LlavaProcessor giving the same input ids as `build_processor` (same template and expansion)."""
    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATES[CHAT_TEMPLATE],
    )


def save_checkpoint(model, processor, directory: Path) -> Path:
    """Writes a complete TinyLLaVA checkpoint directory (what `tinyllava-train --model_name_or_path` reads)."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def export_to_llava(model, processor, workdir: Path) -> LlavaForConditionalGeneration:
    """The same weights in transformers' Llava, exported by `tinyllava-convert to-llava` (written under `workdir`).

    Returns:
        The Llava model (fp32, eval).
    """
    source, target = save_checkpoint(model, processor, workdir / "tinyllava"), workdir / "llava"
    subprocess.run(
        [sys.executable, "-m", "tinyllava_hf.conversion", "to-llava", str(source), str(target)],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    llava = LlavaForConditionalGeneration.from_pretrained(target, dtype=torch.float32)
    return llava.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied lm_head is counted once)."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())
