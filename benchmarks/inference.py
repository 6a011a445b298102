"""Inference speed of the same weights in TinyLLaVA, in transformers' Llava, and in the bare LM (the lower bound).

    python -m benchmarks.inference            # the issue's 70M config, fp32, 2 threads
    python -m benchmarks.inference --quick    # fewer repetitions (a smoke run)

Three implementations run the same 70M weights on the same inputs:
- `tinyllava`: `TinyLlavaForConditionalGeneration`;
- `llava`: `LlavaForConditionalGeneration` holding the weights exported by `tinyllava-convert to-llava`;
- `bare`: the lower bound, written as plain module calls on the same modules: vision tower -> connector ->
  `masked_scatter` into the token embeddings -> the bare LM on `inputs_embeds` -> `lm_head`.

Prefill is one forward over the prompt computing the last position's logits only, as `generate` does. Generation is
greedy with exactly 64 new tokens on left-padded prompts. Every measurement interleaves the implementations call by
call (15 / 7 prefill calls at batch 1 / 8, 7 / 5 generations) and is taken twice in one run (rounds 1 and 2), so each
ratio appears twice. A ratio is the median over repetitions of the two implementations' times in the same
repetition, which cancels drifts in machine speed that a ratio of two medians would keep.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .data import make_conversation, make_image
from .measure import (
    NUM_THREADS,
    format_table,
    interleaved_times,
    machine_load,
    matmul_ceiling_gflops,
    paired_ratio,
    set_threads,
    write_results,
)
from .models import (
    IMAGE_SIZE,
    build_model,
    build_processor,
    build_tokenizer,
    config_70m,
    count_parameters,
    export_to_llava,
)

NEW_TOKENS = 64
RATIOS = (("tinyllava", "llava"), ("tinyllava", "bare"), ("llava", "bare"))


def make_inputs(processor, batch_size: int) -> dict:
    """Left-padded prompts (one image + one question each, generation prompt appended) of different lengths."""
    messages = []
    for index in range(batch_size):
        question, _ = make_conversation(index)
        messages.append(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": make_image(index, IMAGE_SIZE)},
                        {"type": "text", "text": question},
                    ],
                }
            ]
        )
    return processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )


class BareLM:
    """The lower bound: the same modules called directly, with no multimodal wrapper logic around them."""

    def __init__(self, model):
        self.vision_tower = model.model.vision_tower
        self.connector = model.model.connector
        self.feature_layer = model.config.vision_feature_layer
        self.image_token_id = model.config.image_token_id
        self.embed_tokens = model.get_input_embeddings()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        # A causal-LM wrapper around the very same LM and head modules, for `generate(inputs_embeds=...)`.
        with torch.device("meta"):
            self.causal_lm = AutoModelForCausalLM.from_config(model.config.text_config)
        self.causal_lm.model, self.causal_lm.lm_head = self.language_model, self.lm_head
        self.causal_lm.generation_config = model.generation_config
        self.causal_lm.eval()

    def inputs_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, seq_len, hidden)`: token embeddings with the connector's image features in the image rows."""
        hidden_states = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        features = self.connector(hidden_states)
        mask = (input_ids == self.image_token_id).unsqueeze(-1).expand(-1, -1, features.shape[-1])
        return self.embed_tokens(input_ids).masked_scatter(mask, features)

    def prefill(self, input_ids, pixel_values, attention_mask) -> torch.Tensor:
        """Last-position logits `(batch, 1, vocab)`."""
        embeds = self.inputs_embeds(input_ids, pixel_values)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True)
        return self.lm_head(hidden.last_hidden_state[:, -1:])

    def generate(self, input_ids, pixel_values, attention_mask, **generate_kwargs) -> torch.Tensor:
        """The new tokens only, `(batch, new_tokens)`."""
        embeds = self.inputs_embeds(input_ids, pixel_values)
        return self.causal_lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def build_implementations(workdir: Path, new_tokens: int):
    tokenizer = build_tokenizer()
    model = build_model(config_70m(tokenizer))
    processor = build_processor(tokenizer)
    llava = export_to_llava(model, processor, workdir)
    generate_kwargs = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
    }
    bare = BareLM(model)

    def prefill(implementation):
        return lambda inputs: implementation(**inputs, logits_to_keep=1, use_cache=True).logits

    def generate(implementation):
        return lambda inputs: implementation.generate(**inputs, **generate_kwargs)[:, inputs["input_ids"].shape[1] :]

    implementations = {
        "tinyllava": {"prefill": prefill(model), "generate": generate(model)},
        "llava": {"prefill": prefill(llava), "generate": generate(llava)},
        "bare": {
            "prefill": lambda inputs: bare.prefill(**inputs),
            "generate": lambda inputs: bare.generate(**inputs, **generate_kwargs),
        },
    }
    info = {"parameters": count_parameters(model), "llava_export": "tinyllava-convert to-llava"}
    return implementations, processor, info


def agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of generated token positions where two implementations chose the same token."""
    return (reference == other).float().mean().item()


def run(repeats: dict, rounds: int, new_tokens: int, threads: int) -> dict:
    set_threads(threads)
    ceiling = matmul_ceiling_gflops()
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        implementations, processor, info = build_implementations(Path(workdir), new_tokens)
        info.update({"new_tokens": new_tokens, "threads": threads})
        inputs = {batch: make_inputs(processor, batch) for batch in (1, 8)}
        names = list(implementations)

        # Correctness first: logits and generated tokens of every implementation against ours.
        checks = {}
        for batch, batch_inputs in inputs.items():
            logits = {name: impl["prefill"](batch_inputs) for name, impl in implementations.items()}
            tokens = {name: impl["generate"](batch_inputs) for name, impl in implementations.items()}
            for name in names[1:]:
                checks[f"batch{batch}_{name}"] = {
                    "prefill_max_abs_logit_diff": (logits[name] - logits["tinyllava"]).abs().max().item(),
                    "token_agreement": agreement(tokens["tinyllava"], tokens[name]),
                    "generated_tokens": tokens[name].numel(),
                }

        timings = []
        for round_index in range(1, rounds + 1):
            for batch, batch_inputs in inputs.items():
                for kind in ("prefill", "generate"):
                    functions = {
                        name: (lambda f=impl[kind], x=batch_inputs: f(x)) for name, impl in implementations.items()
                    }
                    times = interleaved_times(functions, repeats[kind][batch])
                    timings.append(
                        {
                            "round": round_index,
                            "kind": kind,
                            "batch": batch,
                            "prompt_len": batch_inputs["input_ids"].shape[1],
                            "seconds": {name: statistics.median(values) for name, values in times.items()},
                            "ratios": {f"{a}/{b}": paired_ratio(times, a, b) for a, b in RATIOS},
                            "times": times,
                            "load": machine_load(),
                        }
                    )
    return {"info": info, "matmul_ceiling_gflops": ceiling, "checks": checks, "timings": timings}


def summarize(result: dict) -> list[dict]:
    """One row per (round, kind, batch): absolute numbers and the target ratios."""
    rows = []
    for timing in result["timings"]:
        seconds, batch = timing["seconds"], timing["batch"]
        row = {
            "round": timing["round"],
            "measure": timing["kind"],
            "batch": batch,
            "load_1m": timing["load"]["loadavg_1m"],
        }
        for name, value in seconds.items():
            row[name] = value * 1000 if timing["kind"] == "prefill" else batch * result["info"]["new_tokens"] / value
        ratios = timing["ratios"]
        row["ours/llava"], row["ours/bare"] = ratios["tinyllava/llava"], ratios["tinyllava/bare"]
        row["llava/bare"] = ratios["llava/bare"]
        row["target met"] = row["ours/llava"] <= 1.03 and (timing["kind"] != "prefill" or row["ours/bare"] <= 1.05)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run; numbers are noisier)")
    parser.add_argument("--rounds", type=int, default=2, help="how many times each ratio is measured")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="generated tokens per prompt")
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch intra-op threads")
    args = parser.parse_args(argv)
    repeats = (
        {"prefill": {1: 3, 8: 1}, "generate": {1: 1, 8: 1}}
        if args.quick
        else {"prefill": {1: 15, 8: 7}, "generate": {1: 7, 8: 5}}
    )
    result = run(repeats, args.rounds, args.new_tokens, args.threads)
    rows = summarize(result)
    result["summary"] = rows
    path = write_results("inference", result)
    print(
        f"70M TinyLLaVA ({result['info']['parameters'] / 1e6:.1f}M params), Llava weights via "
        f"{result['info']['llava_export']}; fp32 matmul ceiling {result['matmul_ceiling_gflops']:.0f} GFLOP/s"
    )
    print(
        f"prefill: ms per call (last-position logits); generate: tokens/s for {args.new_tokens} new tokens, "
        f"left-padded; {args.threads} threads. Ratios are time ratios (lower is faster)."
    )
    print(
        format_table(
            rows,
            [
                "round",
                "measure",
                "batch",
                "tinyllava",
                "llava",
                "bare",
                "ours/llava",
                "ours/bare",
                "llava/bare",
                "target met",
                "load_1m",
            ],
        )
    )
    print(
        format_table(
            [{"pair": pair, **check} for pair, check in result["checks"].items()],
            ["pair", "prefill_max_abs_logit_diff", "token_agreement", "generated_tokens"],
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
