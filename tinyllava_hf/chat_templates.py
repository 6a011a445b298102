"""The one place where chat-template names are resolved, for training, conversion, the processor and model cards.

The built-in templates are the original TinyLLaVA conversation styles, kept as readable files in
`modeling_tinyllava/chat_templates/*.jinja` (package data). They are read only when a NEW processor is built: a saved
processor carries its template in the checkpoint's `chat_template.jinja`, so loading a checkpoint never needs them.

A chat template may be given as
- a built-in name (`CHAT_TEMPLATES`),
- `"llm"`: the LLM tokenizer's own chat template (made to render image parts, `with_image_parts`),
- `"original"`: the original TinyLLaVA's template for the LLM family (`DEFAULT_TEMPLATE_FOR_MODEL_TYPE`), which the
  paper's recipes and converted original checkpoints use,
- a path to a `.jinja` file,
- a Jinja string,
- None, for a NEW model: `"llm"` when the LLM's tokenizer has a chat template, else `"original"`. Measured on
  SmolLM2-135M-Instruct (issue 16, `benchmarks/real_llm.py`): held-out accuracy 0.205 with the original's `llama`
  template against 0.415 with the LLM's own, because an instruct LLM already knows its own turn format.
"""

import os
from importlib.util import find_spec
from pathlib import Path

BUILTIN_TEMPLATE_NAMES = ("phi", "qwen2_base", "qwen2_instruct", "llama", "gemma", "pretrain")
LLM_TEMPLATE = "llm"
ORIGINAL_TEMPLATE = "original"

# The system prompt shared by every conversation template of the original (the templates spell it out; the demo and
# the tests use it to build matching text).
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The original's template for each LLM family (its README's conv_version mapping).
DEFAULT_TEMPLATE_FOR_MODEL_TYPE = {
    "phi": "phi",
    "stablelm": "phi",
    "llama": "llama",
    "gemma": "gemma",
    "qwen2": "qwen2_base",
}


# Located without importing `modeling_tinyllava` (which imports torch and transformers): the model-card tools need
# only the template texts.
TEMPLATE_DIR = Path(find_spec("modeling_tinyllava").submodule_search_locations[0]) / "chat_templates"
CHAT_TEMPLATES: dict[str, str] = {
    name: (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8") for name in BUILTIN_TEMPLATE_NAMES
}


# Text LLMs' templates expect string contents (`'<|im_start|>' + message['content']` fails on a list, `{{ content }}`
# prints a list's repr). Put before such a template, this turns every list content into that string, with each image
# part as "<image>\n" in front of the turn's text, exactly where the built-in templates put images (the original
# TinyLLaVA moves a turn's images to its front and strips its text). The processor then expands each "<image>".
# `training.answer_mask.flatten_content` is the same rule in Python; a test checks that both agree.
IMAGE_PARTS_PREAMBLE = (
    "{#- TinyLLaVA: list contents become the strings this template expects; image parts become '<image>\\n' in "
    "front of the text. -#}\n"
    "{%- set tinyllava = namespace(messages=[]) -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['content'] is string -%}\n"
    "{%- set tinyllava.messages = tinyllava.messages + [message] -%}\n"
    "{%- else -%}\n"
    "{%- set num_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}\n"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('\\n') -%}\n"
    "{%- if num_images > 0 -%}{%- set text = '<image>\\n' * num_images + text | trim -%}{%- endif -%}\n"
    "{%- set tinyllava.messages = tinyllava.messages + [dict(message, content=text)] -%}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- set messages = tinyllava.messages -%}\n"
)


def with_image_parts(template: str) -> str:
    """An LLM's own template, made to accept TinyLLaVA's list contents (`IMAGE_PARTS_PREAMBLE`); idempotent."""
    return template if template.startswith(IMAGE_PARTS_PREAMBLE) else IMAGE_PARTS_PREAMBLE + template


def _choices() -> str:
    return (
        f"one of {', '.join(BUILTIN_TEMPLATE_NAMES)}, {LLM_TEMPLATE!r} (the LLM tokenizer's own), "
        f"{ORIGINAL_TEMPLATE!r} (the original TinyLLaVA's for the LLM family), a .jinja file"
    )


def default_chat_template_name(text_model_type: str, tokenizer) -> str:
    """The original's template for an LLM family; Qwen2 tokenizers ending turns with `<|im_end|>` are instruct models.

    Raises:
        ValueError: naming the family when the original has no template for it.
    """
    if text_model_type == "qwen2" and tokenizer.eos_token == "<|im_end|>":
        return "qwen2_instruct"
    if text_model_type not in DEFAULT_TEMPLATE_FOR_MODEL_TYPE:
        raise ValueError(
            f"No default chat template for LLM family {text_model_type!r}; choose a chat template: {_choices()} "
            "or a Jinja string."
        )
    return DEFAULT_TEMPLATE_FOR_MODEL_TYPE[text_model_type]


def resolve_chat_template(
    chat_template: str | os.PathLike | None, tokenizer=None, text_model_type: str | None = None
) -> str | None:
    """The Jinja text of a chat template given by name, `"llm"`, `"original"`, `.jinja` path or Jinja string.

    Args:
        chat_template: what the user passed (`--chat_template`, `--chat-template`, `chat_template=`); None picks a
            NEW model's default (see the module doc).
        tokenizer: the LLM's tokenizer; needed for `"llm"`, `"original"` and the default.
        text_model_type: the LLM family (`config.text_config.model_type`), needed for `"original"` and the default;
            with None and no `chat_template`, the result is None (the caller keeps its processor's own template).

    Raises:
        ValueError: for an unknown name (listing the choices), `"llm"` with a tokenizer that has no chat template, or
            `"original"` for a family the original has no template for.
    """
    if chat_template is None:
        if text_model_type is None:
            return None
        has_own = bool(getattr(tokenizer, "chat_template", None))
        chat_template = LLM_TEMPLATE if has_own else ORIGINAL_TEMPLATE
    if chat_template == ORIGINAL_TEMPLATE:
        if text_model_type is None:
            raise ValueError(
                f"chat template {ORIGINAL_TEMPLATE!r} depends on the LLM family, which is unknown here (a saved "
                "checkpoint keeps its template: omit the chat template, or name a built-in template)."
            )
        return CHAT_TEMPLATES[default_chat_template_name(text_model_type, tokenizer)]
    if isinstance(chat_template, os.PathLike):
        return Path(chat_template).read_text(encoding="utf-8")
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if chat_template == LLM_TEMPLATE:
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            source = getattr(tokenizer, "name_or_path", None) or "the tokenizer"
            raise ValueError(
                f"chat template {LLM_TEMPLATE!r} uses the LLM tokenizer's own template, but {source} has none; "
                f"choose {_choices()} or a Jinja string."
            )
        return with_image_parts(own)
    if "{" in chat_template:
        return chat_template
    if os.path.isfile(chat_template):
        return Path(chat_template).read_text(encoding="utf-8")
    if chat_template.endswith(".jinja"):
        raise ValueError(f"Chat template file {chat_template!r} does not exist.")
    raise ValueError(f"Unknown chat template {chat_template!r}; expected {_choices()} or a Jinja string.")


# A conversation that exercises every branch of the built-in templates: system prompt, images, several turns, an
# open assistant turn. Two templates that render it identically are the same template for every practical purpose.
_PROBE_CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is this? "}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]},
]


def _rendering(template: str) -> str | None:
    """The probe conversation rendered with `template`, or None when the template cannot render it."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            [_PROBE_CONVERSATION], chat_template=template, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
        )
    except (TemplateError, TypeError, ValueError):  # a template that cannot render the probe is not one of ours
        return None
    return rendered[0]


def chat_template_name(template: str, llm_type: str) -> str:
    """The built-in name of a template, or `"custom"`.

    Templates are compared by what they render, not by their text, so a checkpoint saved with an older spelling of a
    built-in template (before the templates became commented `.jinja` files) is still recognised. Some built-in
    templates render the same text (the original's phi and qwen2_base); the LLM family's name wins.
    """
    rendered = _rendering(template)
    names = [name for name in CHAT_TEMPLATES if rendered is not None and _rendering(CHAT_TEMPLATES[name]) == rendered]
    return next((name for name in names if name.startswith(llm_type)), names[0] if names else "custom")


__all__ = [
    "BUILTIN_TEMPLATE_NAMES",
    "CHAT_TEMPLATES",
    "DEFAULT_TEMPLATE_FOR_MODEL_TYPE",
    "IMAGE_PARTS_PREAMBLE",
    "LLM_TEMPLATE",
    "ORIGINAL_TEMPLATE",
    "SYSTEM_PROMPT",
    "chat_template_name",
    "default_chat_template_name",
    "resolve_chat_template",
    "with_image_parts",
]
