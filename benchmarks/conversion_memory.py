"""Peak RSS of `tinyllava-convert factory` on a synthetic ~1 GB checkpoint (target: at most 1.3x its size).

The checkpoint is a Llama-style LLM (about 270M fp32 parameters) with a small SigLIP tower and an mlp2x_gelu
connector, in the TinyLLaVA Factory layout, with random weights written tensor by tensor. Each conversion runs in
its own process; its peak RSS is read from `getrusage(RUSAGE_CHILDREN)`.

    python benchmarks/conversion_memory.py [--output conversion_memory.json] [--workdir DIR] [--rounds 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, SiglipVisionConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration
from tinyllava_hf.conversion.tensor_io import OutputTensor, write_sharded_safetensors
from tinyllava_hf.demo.tokenizer import build_tokenizer

TARGET_RATIO = 1.3


def write_synthetic_checkpoint(directory: Path, shard_size: int) -> int:
    """Writes a random Factory checkpoint of about 1.1 GB; returns its size in bytes."""
    text = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )
    vision = SiglipVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=64,
        patch_size=16,
    )
    config = TinyLlavaConfig(text_config=text, vision_config=vision, vision_feature_select_strategy="default")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in TinyLlavaForConditionalGeneration(config).state_dict().items()}
    to_factory = [
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower._vision_tower.vision_model."),
        ("model.connector.", "connector._connector."),
    ]

    def factory_key(key):
        return next(new + key[len(old) :] for old, new in to_factory if key.startswith(old))

    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    tensors = [
        OutputTensor(factory_key(k), s, torch.float32, lambda s=s: 0.02 * torch.randn(s, generator=generator))
        for k, s in shapes.items()
    ]
    write_sharded_safetensors(directory, tensors, shard_size)
    original = {
        "model_type": "tinyllava",
        "connector_type": "mlp2x_gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "image_aspect_ratio": "square",
        "tokenizer_model_max_length": 2048,
        "text_config": text.to_dict(),
        "vision_config": vision.to_dict(),
    }
    (directory / "config.json").write_text(json.dumps(original))
    corpus = ["A chat between a curious user and an assistant."]
    build_tokenizer(corpus, vocab_size=300, model_max_length=2048).save_pretrained(directory)
    return sum(t.nbytes for t in tensors)


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of a child process; each run is measured in a fresh helper process."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe, *command],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return int(out.stdout.split()[-1]) * 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="conversion_memory.json", help="where to write the results JSON")
    parser.add_argument("--workdir", help="directory for the synthetic checkpoint (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=2, help="how many times each run is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        size = write_synthetic_checkpoint(work / "src", shard_size=600 * 10**6)
        convert = [sys.executable, "-m", "tinyllava_hf.conversion", "factory", str(work / "src")]
        runs = {
            "python + imports only": lambda out: [sys.executable, "-c", "import conversion.cli"],
            "convert (fp32, --no-verify)": lambda out: [*convert, out, "--no-verify"],
            "convert (bf16, --no-verify)": lambda out: [*convert, out, "--no-verify", "--dtype", "bfloat16"],
            "convert (fp32, with verification)": lambda out: [*convert, out],
            "convert (bf16, with verification)": lambda out: [*convert, out, "--dtype", "bfloat16"],
        }
        rows = []
        for round_index in range(1, args.rounds + 1):
            for index, (name, command) in enumerate(runs.items()):
                rss, seconds = peak_rss_of(command(str(work / f"out-{round_index}-{index}")))
                rows.append(
                    {
                        "round": round_index,
                        "run": name,
                        "peak_rss_bytes": rss,
                        "ratio_to_checkpoint": rss / size,
                        "seconds": seconds,
                    }
                )
    print(f"synthetic checkpoint: {size / 1e9:.3f} GB (fp32, 2 shards); target peak RSS <= {TARGET_RATIO}x")
    print(f"{'round':>5} {'run':<36} {'peak RSS (GB)':>14} {'x checkpoint':>13} {'seconds':>8}")
    for row in rows:
        print(
            f"{row['round']:>5} {row['run']:<36} {row['peak_rss_bytes'] / 1e9:>14.3f} "
            f"{row['ratio_to_checkpoint']:>13.2f} {row['seconds']:>8.1f}"
        )
    result = {"checkpoint_bytes": size, "target_ratio": TARGET_RATIO, "runs": rows}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
