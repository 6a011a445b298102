"""`tinyllava-card DIR [--eval-results FILE ...]` and `tinyllava-push DIR REPO_ID [--private] [--dry-run OUT]`."""

import argparse
import logging
import sys

from .card import write_model_card
from .eval_results import merge_eval_results
from .publish import PublishError, push


def card_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tinyllava-card", description="Write DIR/README.md, a Hub model card made from what DIR holds."
    )
    parser.add_argument("checkpoint_dir", metavar="DIR", help="a saved TinyLLaVA or LLaVA model directory")
    parser.add_argument(
        "--eval-results",
        nargs="+",
        default=[],
        metavar="FILE",
        help="tinyllava-eval summary JSON files to merge into DIR/eval_results.json first",
    )
    parser.add_argument(
        "--repo-id", help="Hub repo id the usage snippets load (default: a placeholder that tinyllava-push fills in)"
    )
    parser.add_argument("--license", help="Hub license id (default: the existing card's, else apache-2.0)")
    parser.add_argument("--language", nargs="+", help="language codes (default: the existing card's, else en)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.eval_results:
            merge_eval_results(args.checkpoint_dir, args.eval_results)
        path = write_model_card(args.checkpoint_dir, repo_id=args.repo_id, license=args.license, language=args.language)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"tinyllava-card: error: {error}")
    print(path)


def push_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tinyllava-push",
        description="Validate DIR (files, card metadata, loading with remote code), then upload it to the Hub.",
    )
    parser.add_argument("checkpoint_dir", metavar="DIR")
    parser.add_argument("repo_id", metavar="REPO_ID", help="e.g. your-name/TinyLLaVA-Qwen2-0.5B-SigLIP")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--dry-run", metavar="OUT", help="copy exactly what would be uploaded into OUT; no token needed"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        push(args.checkpoint_dir, args.repo_id, private=args.private, dry_run=args.dry_run)
    except (PublishError, FileNotFoundError, ValueError) as error:
        sys.exit(f"tinyllava-push: error: {error}")
