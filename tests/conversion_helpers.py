"""Builders of tiny checkpoints in the original TinyLLaVA layouts (reference §6), made from conftest's components."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer


def component_parts(components_dir: Path, family: str, vision: str, connector_seed: int = 0):
    """(LLM state dict, LLM config, vision state dict, vision config, mlp2x_gelu connector state dict)."""
    llm = AutoModelForCausalLM.from_pretrained(components_dir / family, dtype=torch.float32)
    tower = AutoModel.from_pretrained(components_dir / vision, dtype=torch.float32)
    generator = torch.Generator().manual_seed(connector_seed)
    v, h = tower.config.hidden_size, llm.config.hidden_size
    connector = {
        "0.weight": torch.randn(h, v, generator=generator) / v**0.5,
        "0.bias": 0.1 * torch.randn(h, generator=generator),
        "2.weight": torch.randn(h, h, generator=generator) / h**0.5,
        "2.bias": 0.1 * torch.randn(h, generator=generator),
    }
    llm_state = dict(llm.state_dict())
    if llm.config.tie_word_embeddings:
        llm_state.pop("lm_head.weight")  # the original's saves drop the tied head
    if family == "phi":  # a trained Phi head has a non-zero bias
        llm_state["lm_head.bias"] = 0.1 * torch.randn(llm_state["lm_head.bias"].shape, generator=generator)
    return llm_state, llm.config, dict(tower.state_dict()), tower.config, connector


def factory_config(llm_config, vision_config, family: str, vision: str, **overrides) -> dict:
    config = {
        "model_type": "tinyllava",
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "llm_model_name_or_path": f"local/{family}",
        "vision_model_name_or_path": f"local/{vision}",
        "connector_type": "mlp2x_gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "image_aspect_ratio": "square",
        "tokenizer_model_max_length": 128,
        "tokenizer_padding_side": "right",
        "image_token_index": -200,
        "text_config": llm_config.to_dict(),
        "vision_config": {
            **vision_config.to_dict(),
            "model_name_or_path": f"local/{vision}",
            "model_name_or_path2": "",
        },
    }
    return {**config, **overrides}


def save_state_dict(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".bin":
        torch.save(state, path)
    else:
        save_file(state, path, metadata={"format": "pt"})


def write_factory_checkpoint(
    components_dir: Path,
    out: Path,
    family="llama",
    vision="siglip",
    weights="model.safetensors",
    split=False,
    **config_overrides,
) -> dict[str, torch.Tensor]:
    """A TinyLLaVA Factory checkpoint dir (full save, or with `split` the pretrain layout). Returns its state dict."""
    llm_state, llm_config, vision_state, vision_config, connector = component_parts(components_dir, family, vision)
    vision_level = "" if vision == "dinov2" else "vision_model."
    # part name -> (key prefix inside the part's own split-layout file, the part's prefix in a full save, tensors)
    parts = {
        "language_model": ("", "language_model.", llm_state),
        "vision_tower": (vision_level, "vision_tower._vision_tower.", vision_state),
        "connector": ("_connector.", "connector.", connector),
    }
    state = {full + inner + k: v for inner, full, part in parts.values() for k, v in part.items()}
    if split:
        for name, (inner, _, part) in parts.items():
            save_state_dict({inner + k: v for k, v in part.items()}, out / name / "pytorch_model.bin")
    else:
        save_state_dict(state, out / weights)
    config = factory_config(llm_config, vision_config, family, vision, **config_overrides)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(components_dir / family).save_pretrained(out)
    return state


def write_legacy_checkpoint(components_dir: Path, out: Path, family="phi") -> dict[str, torch.Tensor]:
    """A TinyLLaVABench checkpoint: flat LLM config + mm_* fields; SigLIP with its last layer and head deleted."""
    llm_state, llm_config, vision_state, vision_config, connector = component_parts(components_dir, family, "siglip")
    last = vision_config.num_hidden_layers - 1
    vision_state = {k: v for k, v in vision_state.items() if not k.startswith(("head.", f"encoder.layers.{last}."))}
    llm_state.pop("lm_head.bias", None)  # the legacy Phi head had no bias
    state = dict(llm_state)  # the LLM's own keys (model.*, lm_head.*) at the top level
    state |= {"model.vision_tower.vision_tower.vision_model." + k: v for k, v in vision_state.items()}
    state |= {"model.mm_projector." + k: v for k, v in connector.items()}
    save_state_dict(state, out / "model.safetensors")
    architecture = {"phi": "TinyLlavaPhiForCausalLM", "llama": "TinyLlavaLlamaForCausalLM"}[family]
    config = {
        **llm_config.to_dict(),
        "architectures": [architecture],
        "model_type": f"tiny_llava_{family}",
        "mm_vision_tower": "bczhou/TinyLLaVA-1.5B-SigLIP",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "tokenizer_model_max_length": 128,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    vision_config.save_pretrained(out / "vision_tower_config")
    AutoTokenizer.from_pretrained(components_dir / family).save_pretrained(out)
    return state
