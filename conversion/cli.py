"""`tinyllava-convert`: original TinyLLaVA checkpoints in; transformers-native LLaVA in and out."""

import argparse
import logging
import sys

from .errors import ConversionError
from .llava import from_llava, to_llava
from .onnx_convert import QUANTIZATIONS, to_onnx
from .original import DEFAULT_ATOL, DEFAULT_MAX_SHARD_SIZE, convert_original
from .tensor_io import DTYPES

logger = logging.getLogger("conversion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllava-convert",
        description="Convert TinyLLaVA checkpoints. Every conversion ends with a numeric check and writes "
        "conversion.json and a model card into DST.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dtype_help = f"output dtype: auto (keep the source's), {', '.join(DTYPES)}"

    def add_common(sub):
        sub.add_argument("src", help="source checkpoint directory")
        sub.add_argument("dst", help="output directory (created; must be empty)")
        sub.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=dtype_help)
        sub.add_argument(
            "--source-repo",
            help="Hub repo id SRC was downloaded from (e.g. "
            "tinyllava/TinyLLaVA-Phi-2-SigLIP-3.1B): recorded in conversion.json so that the model "
            "card's base_model links to it",
        )

    for name, help_text in (
        ("factory", "a TinyLLaVA Factory checkpoint (full save or the split pretrain layout)"),
        ("legacy", "a legacy TinyLLaVABench / LLaVA-style checkpoint (bczhou/TinyLLaVA-*)"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_common(sub)
        sub.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest output file, e.g. 2GB")
        sub.add_argument("--tokenizer", help="tokenizer directory, when SRC has none")
        sub.add_argument(
            "--chat-template",
            help="chat template: phi, llama, gemma, qwen2_base, qwen2_instruct, llm (the tokenizer's own), "
            "a .jinja file or a Jinja string; default: the original's for the LLM family",
        )
        sub.add_argument("--no-verify", action="store_true", help="skip the strict reload and the logit comparison")
        sub.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest accepted logit difference")
        if name == "legacy":
            sub.add_argument(
                "--vision-config", help="SigLIP vision config.json, when mm_vision_tower is not a known legacy tower"
            )
    sub = commands.add_parser("to-llava", help="TinyLLaVA-HF -> transformers LlavaForConditionalGeneration")
    add_common(sub)
    sub.add_argument(
        "--allow-lossy",
        action="store_true",
        help="convert models LLaVA cannot represent exactly, and report the logit difference",
    )
    sub = commands.add_parser("to-gguf", help="TinyLLaVA-HF -> llama.cpp / Ollama GGUF (language model + mmproj)")
    sub.add_argument("src", help="source checkpoint directory")
    sub.add_argument("dst", help="output directory (created; must be empty)")
    sub.add_argument(
        "--outtype", default="f16", choices=("f32", "f16", "q8_0"), help="language model weights (mmproj: f16)"
    )
    sub.add_argument("--name", help="file name stem (default: SRC's directory name)")
    sub.add_argument("--source-repo", help="Hub repo id SRC was downloaded from, recorded in conversion.json")
    sub.add_argument(
        "--allow-lossy", action="store_true", help="export what llama.cpp computes differently, and report the effect"
    )
    sub = commands.add_parser("from-llava", help="transformers LlavaForConditionalGeneration -> TinyLLaVA-HF")
    add_common(sub)
    add_onnx_parser(commands)
    return parser


def add_onnx_parser(commands) -> None:
    sub = commands.add_parser(
        "to-onnx", help="TinyLLaVA-HF -> ONNX graphs (vision encoder, embeddings, decoder with cache) for ONNX Runtime"
    )
    sub.add_argument("src", help="source checkpoint directory (TinyLLaVA-HF)")
    sub.add_argument("dst", help="output directory (created; must be empty)")
    sub.add_argument("--quantize", choices=QUANTIZATIONS, help="also write dynamically quantized *_int8.onnx files")
    sub.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help="largest accepted ONNX Runtime vs torch difference"
    )
    sub.add_argument("--source-repo", help="Hub repo id SRC was downloaded from, recorded in conversion.json")


def run(args: argparse.Namespace):
    if args.command in ("factory", "legacy"):
        return convert_original(
            args.command,
            args.src,
            args.dst,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            tokenizer_dir=args.tokenizer,
            vision_config=getattr(args, "vision_config", None),
            chat_template=args.chat_template,
            verify=not args.no_verify,
            atol=args.atol,
            source_repo=args.source_repo,
        )
    if args.command == "to-gguf":
        try:
            from .gguf_export import to_gguf  # needs the optional `gguf` package
        except ModuleNotFoundError as error:
            raise ConversionError(f"to-gguf needs {error.name!r}: pip install 'tinyllava-hf[gguf]'") from None
        return to_gguf(
            args.src, args.dst, args.outtype, allow_lossy=args.allow_lossy, name=args.name, source_repo=args.source_repo
        )
    if args.command == "to-onnx":
        return to_onnx(args.src, args.dst, quantize=args.quantize, atol=args.atol, source_repo=args.source_repo)
    if args.command == "to-llava":
        return to_llava(
            args.src, args.dst, allow_lossy=args.allow_lossy, dtype=args.dtype, source_repo=args.source_repo
        )
    return from_llava(args.src, args.dst, dtype=args.dtype, source_repo=args.source_repo)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except ConversionError as error:
        print(f"tinyllava-convert {args.command}: error: {error}", file=sys.stderr)
        return 1
    for note in result.notes:
        logger.info("note: %s", note)
    if result.ignored_keys:
        logger.info("ignored %d source keys: %s", len(result.ignored_keys), ", ".join(result.ignored_keys))
    diff = "not measured" if result.max_abs_logit_diff is None else f"{result.max_abs_logit_diff:.3g}"
    print(f"Wrote {result.output_dir} (max abs logit difference: {diff}{', LOSSY' if result.lossy else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
