"""Loads a checkpoint directory the way a Hub user would, with this repository out of reach, and generates a token.

Run as a script in a fresh interpreter (`python load_check.py DIR [--trust-remote-code] --hide REPO_ROOT`): it removes
the repository's own packages from reach (whatever installed them: the source tree on `sys.path` or an editable
install's finder), so `modeling_tinyllava` can only come from the remote code files inside DIR. Prints one line
`loaded <ModelClass> + <ProcessorClass>` on success.
"""

import argparse
import importlib.abc
import importlib.util
import sys
from pathlib import Path

# The import names this repository provides, installed or not (the tool folders only under `tinyllava_hf`).
REPOSITORY_PACKAGES = ("modeling_tinyllava", "tinyllava_hf")


class _HiddenPackages(importlib.abc.MetaPathFinder):
    """Refuses to import the named top-level packages, whichever path or finder would provide them."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by the load check)", name=fullname)


def hide_repository(repo_root: Path) -> None:
    """Makes the packages of `repo_root` unimportable in this process.

    Only the repository's own packages are hidden: a virtual environment inside the checkout (`.venv/`, the default
    of uv and many editors) keeps its site-packages importable.
    """
    root = repo_root.resolve()
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != root]
    sys.meta_path.insert(0, _HiddenPackages(set(REPOSITORY_PACKAGES)))


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
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (64, 64), "red")},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device, dtype=model.dtype)
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    print(f"loaded {type(model).__name__} + {type(processor).__name__}")


if __name__ == "__main__":
    main()
