"""TinyLLaVA-HF's tools, installed under one namespace so they never shadow a user's own packages.

The repository keeps one folder per job (`training/`, `conversion/`, `evaluation/`, `model_cards/`); the wheel
installs them as `tinyllava_hf.training`, `tinyllava_hf.conversion`, ... Only `modeling_tinyllava` is top-level,
because every checkpoint's `auto_map` names it.

Two modules live here directly, because no checkpoint needs them at load time: `assembly` builds a NEW model and
processor from pretrained parts, and `chat_templates` resolves chat-template names for every tool.
"""
