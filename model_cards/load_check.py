"""Loads a checkpoint directory the way a Hub user would, with this repository out of reach, and generates a token.

Run as a script in a fresh interpreter (`python load_check.py DIR [--trust-remote-code] --hide REPO_ROOT`): it removes
REPO_ROOT from `sys.path` and drops editable-install finders, so `modeling_tinyllava` can only come from the remote
code files inside DIR. Prints one line `loaded <ModelClass> + <ProcessorClass>` on success.
"""

import argparse
import importlib.util
import sys
from pathlib import Path


def hide_repository(repo_root: Path) -> None:
    """Makes the packages of `repo_root` unimportable in this process."""
    root = repo_root.resolve()
    sys.path[:] = [p for p in sys.path if p and not Path(p).resolve().is_relative_to(root)]
    # `pip install -e` installs a meta-path finder that maps package names to the source tree.
    sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
    if importlib.util.find_spec("modeling_tinyllava") is not None:
        raise RuntimeError("modeling_tinyllava is still importable; the check would not test the remote code.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--hide", required=True, help="repository root to make unimportable")
    args = parser.parse_args()
    hide_repository(Path(args.hide))

    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = {"trust_remote_code": args.trust_remote_code}
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint_dir, dtype="auto", **kwargs)
    processor = AutoProcessor.from_pretrained(args.checkpoint_dir, **kwargs)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64), "red")},
                                             {"type": "text", "text": "What is this?"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device, dtype=model.dtype)
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    print(f"loaded {type(model).__name__} + {type(processor).__name__}")


if __name__ == "__main__":
    main()
