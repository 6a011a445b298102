"""TinyLLaVA-HF's tools, installed under one namespace so they never shadow a user's own packages.

The repository keeps one folder per job (`training/`, `conversion/`, `evaluation/`, `model_cards/`); the wheel
installs them as `tinyllava_hf.training`, `tinyllava_hf.conversion`, ... Only `modeling_tinyllava` is top-level,
because every checkpoint's `auto_map` names it.
"""
