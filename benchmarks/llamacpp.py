"""llama.cpp (the `to-gguf` export, f32 / f16 / q8_0) against our model in torch, on the issue's 70M config.

    python -m benchmarks.llamacpp            # needs pip install -e ".[gguf]"
    python -m benchmarks.llamacpp --quick    # fewer repetitions

Both sides run the same weights at 2 threads on the same prompt (one 224 px image + a question, 256 image tokens):
- `image encode`: vision tower + connector (torch `get_image_features`; libmtmd `mtmd_encode_chunk` on the raw
  image, its own preprocessing included);
- `LM prefill`: the language model over the whole prompt's token ids (the image rows as ordinary ids: the cost is
  the same), last position's logits only;
- `decode`: 64 greedy single-token steps with the KV cache, reported as tokens/s.
Calls are interleaved implementation by implementation and ratios are the median of same-repetition ratios
(`measure.paired_ratio`), so load drift on the shared machine cancels. Peak RSS is measured in a fresh subprocess per
implementation that loads it and runs one prefill and decode.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .data import make_conversation, make_image
from .llamacpp_side import LlamaCppSide
from .measure import (
    NUM_THREADS,
    format_table,
    interleaved_times,
    machine_load,
    paired_ratio,
    set_threads,
    write_results,
)
from .models import IMAGE_SIZE, build_model, build_processor, build_tokenizer, config_70m, save_checkpoint

OUTTYPES = ("f32", "f16", "q8_0")
NEW_TOKENS = 64


def export(workdir: Path) -> tuple[Path, dict[str, Path], Path]:
    """Saves the 70M model and exports it once per outtype; returns (checkpoint, outtype -> LM gguf, mmproj)."""
    from tinyllava_hf.conversion.gguf_export import to_gguf

    tokenizer = build_tokenizer()
    checkpoint = save_checkpoint(build_model(config_70m(tokenizer)), build_processor(tokenizer), workdir / "ckpt")
    files = {}
    for outtype in OUTTYPES:
        to_gguf(checkpoint, workdir / outtype, outtype, name="bench")
        files[outtype] = workdir / outtype / f"bench-{outtype}.gguf"
    return checkpoint, files, workdir / "f16" / "mmproj-bench-f16.gguf"


class TorchSide:
    """Our model in torch: image features, LM prefill and cached greedy decoding."""

    def __init__(self, checkpoint: Path):
        from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor

        self.model = TinyLlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.processor = TinyLlavaProcessor.from_pretrained(checkpoint)

    def encode(self, image) -> None:
        self.model.model.get_image_features(self.processor.image_processor(image, return_tensors="pt")["pixel_values"])

    def prefill(self, ids: list[int]):
        output = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        return output.logits[0, -1], output.cache

    def decode(self, ids: list[int], steps: int) -> list[int]:
        logits, cache = self.prefill(ids)
        tokens = []
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            output = self.model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            logits, cache = output.logits[0, -1], output.cache
        return tokens


def prompt(processor) -> tuple[list[int], object]:
    question, _ = make_conversation(0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = make_image(0, IMAGE_SIZE)
    return processor(text=text, images=image)["input_ids"][0], image


def run(repeats: int, rounds: int) -> dict:
    set_threads(NUM_THREADS)
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        checkpoint, files, mmproj = export(Path(workdir))
        implementations = {"torch": TorchSide(checkpoint)}
        implementations.update({f"llama.cpp {t}": LlamaCppSide(files[t], mmproj) for t in OUTTYPES})
        ids, image = prompt(implementations["torch"].processor)
        reference = implementations["torch"].decode(ids, NEW_TOKENS)
        agreement = {
            name: sum(a == b for a, b in zip(reference, side.decode(ids, NEW_TOKENS))) / NEW_TOKENS
            for name, side in implementations.items()
            if name != "torch"
        }
        timings = []
        for round_index in range(1, rounds + 1):
            for kind in ("encode", "prefill", "prefill+decode"):
                functions = {
                    "encode": {n: (lambda s=s: s.encode(image)) for n, s in implementations.items()},
                    "prefill": {n: (lambda s=s: s.prefill(ids)) for n, s in implementations.items()},
                    "prefill+decode": {n: (lambda s=s: s.decode(ids, NEW_TOKENS)) for n, s in implementations.items()},
                }[kind]
                times = interleaved_times(functions, repeats)
                timings.append(
                    {
                        "round": round_index,
                        "kind": kind,
                        "seconds": {name: statistics.median(values) for name, values in times.items()},
                        "ratios": {
                            f"torch/{name}": paired_ratio(times, "torch", name) for name in functions if name != "torch"
                        },
                        "times": times,
                        "load": machine_load(),
                    }
                )
        image_path = Path(workdir) / "image.png"
        image.save(image_path)
        peak_rss = {name: memory(name, checkpoint, files, mmproj, ids, image_path) for name in implementations}
        files_mb = {t: files[t].stat().st_size / 2**20 for t in OUTTYPES} | {"mmproj": mmproj.stat().st_size / 2**20}
    info = {"prompt_tokens": len(ids), "new_tokens": NEW_TOKENS, "threads": NUM_THREADS, "files_mb": files_mb}
    return {"info": info, "greedy_token_agreement_with_torch": agreement, "timings": timings, "peak_rss": peak_rss}


def memory(name: str, checkpoint: Path, files: dict[str, Path], mmproj: Path, ids: list[int], image_path: Path) -> dict:
    """Peak RSS (MB) of a fresh process that loads one implementation and runs one encode, prefill and 8 decode steps.

    The llama.cpp process imports neither torch nor transformers (`llamacpp_side` runs alone), as a deployment would.
    """
    if name == "torch":
        code = (
            "import json, sys, torch; from PIL import Image; from benchmarks.llamacpp import TorchSide; "
            "from benchmarks.llamacpp_side import peak_rss_mb; torch.set_num_threads(2); base = peak_rss_mb(); "
            f"side = TorchSide({str(checkpoint)!r}); "
            f"torch.inference_mode().__enter__(); side.encode(Image.open({str(image_path)!r})); side.decode({ids!r}, 8); "
            "print(json.dumps({'after_imports_mb': base, 'peak_mb': peak_rss_mb()}))"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "benchmarks.llamacpp_side", str(files[name.split()[-1]]), str(mmproj)]
        command += [str(image_path), json.dumps(ids)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    return json.loads(output.stdout.strip().splitlines()[-1])


def summarize(result: dict) -> list[dict]:
    """Rows of milliseconds and torch/llama.cpp time ratios, plus decode tokens/s (prefill+decode minus prefill)."""
    rows = []
    for timing in result["timings"]:
        row = {"round": timing["round"], "kind": timing["kind"]}
        for name, seconds in timing["seconds"].items():
            row[f"{name} ms"] = seconds * 1000
        row.update(timing["ratios"])
        rows.append(row)
    for round_index in sorted({t["round"] for t in result["timings"]}):
        by_kind = {t["kind"]: t["seconds"] for t in result["timings"] if t["round"] == round_index}
        speed = {
            name: NEW_TOKENS / (by_kind["prefill+decode"][name] - by_kind["prefill"][name])
            for name in by_kind["prefill"]
        }
        row = {"round": round_index, "kind": "decode tok/s"}
        row.update({f"{name} ms": value for name, value in speed.items()})  # tokens/s in the ms columns' places
        row.update({f"torch/{name}": speed[name] / speed["torch"] for name in speed if name != "torch"})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llamacpp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, 1 round")
    args = parser.parse_args(argv)
    result = run(repeats=2 if args.quick else 7, rounds=1 if args.quick else 2)
    rows = summarize(result)
    result["summary"] = rows
    print(format_table(rows, list(rows[0])))
    print("(decode rows: tokens/s in the implementation columns; the ratio columns are llama.cpp's speed-up)")
    print("greedy token agreement with torch:", result["greedy_token_agreement_with_torch"])
    print("peak RSS (MB, fresh process per implementation):", json.dumps(result["peak_rss"]))
    print("file sizes (MB):", json.dumps(result["info"]["files_mb"]))
    print("wrote", write_results("llamacpp", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
