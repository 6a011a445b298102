"""Answer spans of a conversation under ANY chat template, for templates without `{% generation %}` markers.

The built-in templates mark what is supervised with `{% generation %}` blocks, and transformers returns that mask
(`return_assistant_tokens_mask=True`). An LLM's own template (ChatML, Llama-3, Phi-3, Gemma, Zephyr, ...) has no
such markers, so each assistant turn is located by rendering the conversation before and after it:

    before = render(messages[:k], add_generation_prompt=True)    # ends with the assistant header
    through = render(messages[:k + 1])                           # ends with the turn's closing text

`through[len(before):]` is turn k as the template renders it. The supervised part is that text from its start
through the first special token after the answer (the end-of-turn token: `<|im_end|>`, `<|eot_id|>`, `<|end|>`,
`<end_of_turn>`, `</s>`); the whitespace a template puts after it (the newline between turns) and anything later
(Phi-3's closing `eos_token`) is not supervised. That is what the built-in templates supervise (reference §3.3:
each answer plus its end-of-turn string, nothing after it).

A template that cannot be split this way is an error naming the template, never a silently empty or
whole-sequence mask: one that ignores `add_generation_prompt`, rewrites earlier turns (a prefix render is not a
prefix of the full render), does not render an answer verbatim, or closes no turn with a special token.
"""

import re
from bisect import bisect_right

from jinja2 import TemplateError

# `{% generation %}` / `{%- generation -%}`: the built-in templates' answer markers (transformers' extension).
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_markers(template: str) -> bool:
    """Whether a Jinja chat template marks its answers with `{% generation %}` blocks."""
    return bool(_GENERATION_TAG.search(template))


def describe_template(template: str) -> str:
    """A short name for a template in error messages: its first non-empty line, cut to 80 characters."""
    first = next((line.strip() for line in template.splitlines() if line.strip()), "")
    return repr(first[:80] + ("..." if len(first) > 80 else ""))


def special_token_strings(tokenizer) -> list[str]:
    """The tokenizer's special tokens (named and added special tokens), longest first so that matches are maximal."""
    specials = set(tokenizer.all_special_tokens)
    specials.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return sorted((token for token in specials if token), key=len, reverse=True)


def flatten_content(parts: list[dict], image_token: str) -> str:
    """A message's parts as the string a text LLM's template expects: "<image>\\n" per image in front of the text.

    The same rule as `tinyllava_hf.chat_templates.IMAGE_PARTS_PREAMBLE` (which `--chat_template llm` puts before the
    LLM's own template, so that inference renders images identically): text parts joined with newlines, stripped
    when the turn has images, as the original TinyLLaVA places a turn's images (reference §2).
    """
    num_images = sum(part["type"] == "image" for part in parts)
    text = "\n".join(part["text"] for part in parts if part["type"] == "text")
    return f"{image_token}\n" * num_images + text.strip() if num_images else text


def answer_text(message: dict) -> str:
    """The text of an assistant message (string content or its text parts), as the template receives it."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def answer_spans(render, messages: list[dict], template: str, specials: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering of `messages` and the character span `[start, end)` supervised in each assistant turn.

    Turn k starts where `render(messages[:k], add_generation_prompt=True)` ends; its supervised part runs through the
    first special token after the answer. Only that part must be rendered identically in the whole conversation:
    templates may close a conversation differently from a turn (Phi-3 appends `eos_token` after the last turn).

    Args:
        render: `render(messages, add_generation_prompt) -> str`, the template applied to a conversation.
        messages: the conversation, in the form the template receives it.
        template: the Jinja text (only to name it in errors).
        specials: the tokenizer's special-token strings (`special_token_strings`).

    Raises:
        ValueError: naming the template, when it cannot be split into turns (see the module doc).
    """
    name = describe_template(template)

    def unsplittable(k: int, why: str) -> ValueError:
        return ValueError(
            f"Chat template {name} cannot be split into turns: assistant turn {k} {why}, so its answer tokens cannot "
            "be located. Pass a template with {% generation %} blocks around each answer instead."
        )

    try:
        full = render(messages, False)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = render(messages[:k], True), render(messages[: k + 1], False)
            if before == render(messages[:k], False):
                raise unsplittable(k=k, why="has no header: the template ignores add_generation_prompt")
            if not through.startswith(before) or not full.startswith(before):
                raise unsplittable(k=k, why="rewrites the conversation before it (a prefix render is no prefix)")
            turn = through[len(before) :]
            answer = answer_text(message).strip()
            answer_end = turn.find(answer) + len(answer)
            if answer_end < len(answer):
                raise unsplittable(k=k, why=f"does not render its answer {answer!r} verbatim ({turn!r})")
            # The first special token after the answer (the longest one where two start at the same character).
            found = [(turn.find(token, answer_end), -len(token)) for token in specials]
            found = [(start, -negative_length) for start, negative_length in found if start >= 0]
            if not found:
                raise ValueError(
                    f"Chat template {name} puts no special token after assistant turn {k} ({turn!r}), so the model "
                    "could not learn to end its answer; use a template that closes each turn with an end-of-turn "
                    "token (or mark the supervised text with {% generation %})."
                )
            start, length = min(found, key=lambda match: (match[0], -match[1]))
            closing = start + length
            if not full.startswith(through[: len(before) + closing]):
                raise unsplittable(k=k, why="is rendered differently once later turns follow it")
            spans.append((len(before), len(before) + closing))
    except TemplateError as error:
        raise ValueError(f"Chat template {name} cannot render this conversation: {error}") from error
    return full, spans


def token_mask(
    offsets: list[tuple[int, int]], spans: list[tuple[int, int]], replacements: list[dict] | None = None
) -> list[bool]:
    """Which tokens overlap a character span of the rendered text.

    Args:
        offsets: `(start, end)` characters of each token, in the text after image expansion.
        spans: character spans in the rendered text, before image expansion.
        replacements: the processor's `text_replacement_offsets` (`{"span", "new_span"}` per expanded `<image>`),
            which shift every later character; None when nothing was expanded.

    Returns:
        One bool per token. Zero-width tokens never match.
    """
    replacements = replacements or []
    placeholder_ends = [r["span"][1] for r in replacements]
    chars_gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    mask = [False] * len(offsets)
    for span in spans:
        start, end = (char + chars_gained[bisect_right(placeholder_ends, char)] for char in span)
        for position, (token_start, token_end) in enumerate(offsets):
            if token_start < end and token_end > start:
                mask[position] = True
    return mask


__all__ = [
    "answer_spans",
    "describe_template",
    "flatten_content",
    "has_generation_markers",
    "special_token_strings",
    "token_mask",
]
