"""ONNX Runtime (fp32 and int8 exports) against TinyLLaVA in torch, on the 70M config: prefill and decoding speed.

    python -m benchmarks.onnx_runtime            # the issue's 70M config, 2 threads in every runtime
    python -m benchmarks.onnx_runtime --quick    # fewer repetitions (a smoke run)

The 70M model is saved and exported with `tinyllava-convert to-onnx --quantize int8` (its parity check included).
Three implementations then answer the same prompt (one 224 px image + a question, batch 1):
- `torch`: `TinyLlavaForConditionalGeneration` with a `DynamicCache`, last-position logits, as `generate` runs it;
- `ort_fp32`, `ort_int8`: the export's graphs in ONNX Runtime, driven as `conversion/onnx_runtime_example.py` drives
  them. The decoder graph returns logits for every prompt position (transformers.js' contract), so its prefill
  computes the LM head over the whole prompt where torch computes it for the last position only.

Prefill is one call from pixels and token ids to the first logits (vision encoder, embeddings, decoder over an empty
cache). Decoding is 32 greedy steps over the cache (EOS ignored), reported as tokens/s. The implementations are
interleaved call by call and each ratio is the median of per-repetition ratios (see `measure.paired_ratio`); the whole
measurement runs twice (rounds). Peak RSS is measured per implementation in its own process (load, one prefill, the
decode steps), since a process's peak covers everything it ever held.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from .data import make_conversation, make_image
from .measure import (
    NUM_THREADS,
    format_table,
    interleaved_times,
    machine_load,
    paired_ratio,
    set_threads,
    write_results,
)
from .models import IMAGE_SIZE, build_model, build_processor, build_tokenizer, config_70m, count_parameters

DECODE_STEPS = 32
IMPLEMENTATIONS = ("torch", "ort_fp32", "ort_int8")


def make_inputs(processor) -> dict:
    question, _ = make_conversation(0)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": make_image(0, IMAGE_SIZE)}, {"type": "text", "text": question}],
        }
    ]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


class TorchRunner:
    """Ours in torch: the forward `generate` calls, prefill then one token at a time over a `DynamicCache`."""

    def __init__(self, model_dir: Path):
        from modeling_tinyllava import TinyLlavaForConditionalGeneration

        self.model = TinyLlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.inference_mode()
    def prefill(self, inputs: dict):
        cache = DynamicCache(config=self.model.config)
        logits = self.model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits
        return logits[:, -1].argmax(-1, keepdim=True), cache, inputs["input_ids"].shape[1]

    @torch.inference_mode()
    def decode(self, state, steps: int) -> list[int]:
        token, cache, prompt_length = state
        tokens = []
        for length in range(prompt_length + 1, prompt_length + steps + 1):
            mask = torch.ones(1, length, dtype=torch.long)
            logits = self.model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        cache.crop(-steps)  # back to the prefill state, so that every timed repetition decodes the same
        return tokens


class OrtRunner:
    """The ONNX export in ONNX Runtime, with NumPy around it (the example script's loop, timed in parts)."""

    def __init__(self, model_dir: Path, int8: bool, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        suffix = "_int8" if int8 else ""
        self.sessions = {
            name: ort.InferenceSession(str(model_dir / "onnx" / f"{name}{suffix}.onnx"), options)
            for name in ("vision_encoder", "embed_tokens", "decoder_model_merged")
        }
        self.image_token_id = json.loads((model_dir / "config.json").read_text())["image_token_id"]
        decoder_inputs = self.sessions["decoder_model_merged"].get_inputs()
        self.past = {i.name: (i.shape[1], i.shape[3]) for i in decoder_inputs if i.name.startswith("past_key_values.")}

    def prefill(self, inputs: dict):
        ids = inputs["input_ids"].numpy()
        embeds = self.sessions["embed_tokens"].run(None, {"input_ids": ids})[0]
        features = self.sessions["vision_encoder"].run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
        embeds[ids == self.image_token_id] = features.reshape(-1, embeds.shape[-1])
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": np.ones(ids.shape, np.int64),
            "position_ids": np.arange(ids.shape[1])[None],
            **{name: np.zeros((1, heads, 0, dim), np.float32) for name, (heads, dim) in self.past.items()},
        }
        logits, *present = self.sessions["decoder_model_merged"].run(None, feeds)
        return int(logits[0, -1].argmax()), dict(zip(self.past, present)), ids.shape[1]

    def decode(self, state, steps: int) -> list[int]:
        token, past, length = state
        tokens = []
        for _ in range(steps):
            embeds = self.sessions["embed_tokens"].run(None, {"input_ids": np.array([[token]])})[0]
            feeds = {
                "inputs_embeds": embeds,
                "attention_mask": np.ones((1, length + 1), np.int64),
                "position_ids": np.array([[length]]),
                **past,
            }
            logits, *present = self.sessions["decoder_model_merged"].run(None, feeds)
            past, length = dict(zip(self.past, present)), length + 1
            token = int(logits[0, -1].argmax())
            tokens.append(token)
        return tokens


def make_runner(name: str, model_dir: Path, threads: int):
    return (
        TorchRunner(model_dir / "torch")
        if name == "torch"
        else OrtRunner(model_dir / "onnx", name == "ort_int8", threads)
    )


def prepare(workdir: Path) -> dict:
    """Saves the 70M model and exports it (fp32 + int8) with the real CLI; returns what the workers need."""
    from tinyllava_hf.conversion.cli import main as convert_main

    from .models import save_checkpoint

    tokenizer = build_tokenizer()
    model = build_model(config_70m(tokenizer))
    processor = build_processor(tokenizer)
    save_checkpoint(model, processor, workdir / "torch")
    start = time.perf_counter()
    if convert_main(["to-onnx", str(workdir / "torch"), str(workdir / "onnx"), "--quantize", "int8"]) != 0:
        raise SystemExit("tinyllava-convert to-onnx failed")
    conversion = json.loads((workdir / "onnx" / "conversion.json").read_text())
    return {
        "parameters": count_parameters(model),
        "export_seconds": time.perf_counter() - start,
        "export_notes": conversion["notes"],
        "onnx_file_mb": {
            path.name: path.stat().st_size / 2**20 for path in sorted((workdir / "onnx" / "onnx").glob("*.onnx"))
        },
    }


def rss_worker(name: str, model_dir: Path, threads: int) -> None:
    """Loads one implementation, runs one prefill and the decode steps, prints its peak RSS (MB) as JSON."""
    set_threads(threads)
    runner = make_runner(name, model_dir, threads)
    inputs = make_inputs(build_processor(build_tokenizer()))
    runner.decode(runner.prefill(inputs), DECODE_STEPS)
    print(json.dumps({"peak_rss_mb": exec_peak_rss_mb()}))


def exec_peak_rss_mb() -> float:
    """Peak RSS since this program started (`VmHWM`), in MB. `getrusage`'s peak would also count the parent's
    memory, which a forked child inherits and Linux keeps across `exec`."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def measure_rss(name: str, model_dir: Path, threads: int) -> float:
    command = [sys.executable, "-m", "benchmarks.onnx_runtime", "--rss-worker", name, str(model_dir)]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def run(repeats: dict, rounds: int, threads: int, workdir: Path) -> dict:
    set_threads(threads)
    info = {**prepare(workdir), "threads": threads, "decode_steps": DECODE_STEPS}
    runners = {name: make_runner(name, workdir, threads) for name in IMPLEMENTATIONS}
    inputs = make_inputs(build_processor(build_tokenizer()))
    info["prompt_len"] = inputs["input_ids"].shape[1]
    # The greedy tokens of each runtime against torch's (int8 may drift; fp32 should not).
    states = {name: runner.prefill(inputs) for name, runner in runners.items()}
    tokens = {name: [int(np.asarray(states[name][0]).item()), *runners[name].decode(states[name], DECODE_STEPS)]
              for name in runners}  # fmt: skip
    checks = {name: float(np.mean(np.array(tokens[name]) == np.array(tokens["torch"]))) for name in runners}

    timings = []
    for round_index in range(1, rounds + 1):
        prefill = interleaved_times(
            {name: (lambda r=runner: r.prefill(inputs)) for name, runner in runners.items()}, repeats["prefill"]
        )
        decode = interleaved_times(
            {name: (lambda r=runner, s=states[name]: r.decode(s, DECODE_STEPS)) for name, runner in runners.items()},
            repeats["decode"],
        )
        for kind, times in (("prefill", prefill), ("decode", decode)):
            timings.append(
                {
                    "round": round_index,
                    "kind": kind,
                    "seconds": {name: statistics.median(values) for name, values in times.items()},
                    "ratios": {f"{name}/torch": paired_ratio(times, name, "torch") for name in IMPLEMENTATIONS[1:]},
                    "times": times,
                    "load": machine_load(),
                }
            )
    del runners
    rss = {name: measure_rss(name, workdir, threads) for name in IMPLEMENTATIONS}
    return {"info": info, "token_agreement_with_torch": checks, "timings": timings, "peak_rss_mb": rss}


def summarize(result: dict) -> list[dict]:
    """One row per (round, measure): prefill ms or decode tokens/s per runtime, and time ratios against torch."""
    rows = []
    for timing in result["timings"]:
        row = {"round": timing["round"], "measure": timing["kind"], "load_1m": timing["load"]["loadavg_1m"]}
        for name, seconds in timing["seconds"].items():
            row[name] = seconds * 1000 if timing["kind"] == "prefill" else DECODE_STEPS / seconds
        row.update(timing["ratios"])
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run; numbers are noisier)")
    parser.add_argument("--rounds", type=int, default=2, help="how many times each ratio is measured")
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="intra-op threads of torch and ORT")
    parser.add_argument("--rss-worker", nargs=2, metavar=("IMPLEMENTATION", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_worker:
        return rss_worker(args.rss_worker[0], Path(args.rss_worker[1]), args.threads)
    repeats = {"prefill": 3, "decode": 2} if args.quick else {"prefill": 11, "decode": 5}
    with tempfile.TemporaryDirectory() as workdir:
        result = run(repeats, args.rounds, args.threads, Path(workdir))
    result["summary"] = summarize(result)
    path = write_results("onnx_runtime", result)
    info = result["info"]
    print(
        f"70M TinyLLaVA ({info['parameters'] / 1e6:.1f}M params), prompt {info['prompt_len']} tokens, batch 1, "
        f"{info['threads']} threads; export + parity check + int8: {info['export_seconds']:.0f} s"
    )
    print("prefill: ms per call; decode: tokens/s over 32 cached steps. Ratios are time ratios (lower is faster).")
    columns = ["round", "measure", "torch", "ort_fp32", "ort_int8", "ort_fp32/torch", "ort_int8/torch", "load_1m"]
    print(format_table(result["summary"], columns))
    print(f"peak RSS (MB, own process each): {result['peak_rss_mb']}")
    print(f"greedy token agreement with torch: {result['token_agreement_with_torch']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
