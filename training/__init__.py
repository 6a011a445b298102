"""Training for TinyLLaVA-HF: TRL's `SFTTrainer` with a multimodal collator, the paper's recipes, LoRA/QLoRA.

Entry points: `tinyllava-train` / `python -m tinyllava_hf.training` ([`training.cli.main`]) and `tinyllava-merge`
([`training.merge.main`]). The pieces are usable on their own:

- [`training.arguments`]: `ModelArguments`, `DataArguments` (parsed with `trl.TrlParser` together with `SFTConfig`);
- [`training.data`]: LLaVA JSON/JSONL and HF `datasets` loading, validation, LLaVA -> datasets conversion;
- [`training.collator`]: `TinyLlavaCollator` (chat template rendering, answer-only labels, image-safe truncation);
- [`training.tuning`]: per-module tuning modes (frozen | full | partial | lora | qlora) and learning rates;
- [`training.trainer`]: `TinyLlavaSFTTrainer`, a thin `SFTTrainer` subclass (per-module learning rates, a loss that
  only scores supervised positions);
- [`training.outputs`]: the Hub-ready output directory of each stage.
"""
