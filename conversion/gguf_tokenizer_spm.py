"""SentencePiece-style tokenizers (Llama 2, TinyLlama, Gemma) as llama.cpp's `llama` (SPM) vocabulary.

Transformers stores these as a `tokenizer.json` BPE model with `byte_fallback`: spaces become `▁` (a Metaspace
pre-tokenizer, or the normalizers Prepend("▁") + Replace(" ", "▁")), pieces merge by rank, and characters outside
the vocabulary become `<0xNN>` byte tokens. llama.cpp's SPM tokenizer works differently, from the token list alone:
it replaces every space of a text with `▁` (after adding one in front if `add_space_prefix`), then repeatedly merges
the adjacent pair whose concatenation is a token of highest score (leftmost first), and spells leftovers in bytes.
The two agree when
- every pair of tokens that concatenates to a token is a merge (llama.cpp would merge it; `tokenizers` would not),
- the merges producing one token are consecutive, so that one score per token orders them as the ranks do,
- spaces are handled alike: a `▁` in front of every text and of every text after a special token (`add_space_prefix`,
  the legacy Prepend normalizer) or never (Gemma), and no split at `▁` that a token spanning a `▁` would cross.
  A Metaspace pre-tokenizer that prepends (transformers 5's Llama tokenizer) adds no `▁` to a text that starts with
  a space ("first": nor after special tokens): exported as `add_space_prefix`, and reported as lossy.
This is checked here from `tokenizer.json`, so no `sentencepiece` model file or package is needed; anything else is
refused with the reason. Merges producing the same token are ranked by `tokenizers` but tie in llama.cpp (leftmost
wins), which matters only if two of them overlap in one text, as for SentencePiece itself.
"""

import re
from dataclasses import dataclass

import gguf

from .errors import ConversionError

SPACE = "▁"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
_REPLACE_SPACE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
_PREPEND_SPACE = {"type": "Prepend", "prepend": SPACE}


@dataclass
class SpmVocabulary:
    """What `tokenizer.ggml.*` holds for llama.cpp's SPM tokenizer, one entry per embedding row."""

    tokens: list[str]
    scores: list[float]
    types: list[gguf.TokenType]
    add_space_prefix: bool


def is_sentencepiece_style(spec: dict) -> bool:
    """Whether a `tokenizer.json` is a byte-fallback BPE (how transformers stores SentencePiece BPE tokenizers)."""
    return spec["model"].get("type") == "BPE" and bool(spec["model"].get("byte_fallback"))


def _steps(spec: dict | None, list_key: str) -> list[dict]:
    if spec is None:
        return []
    return list(spec[list_key]) if spec.get("type") == "Sequence" else [spec]


def _add_space_prefix(spec: dict, tokens: set[str]) -> bool:
    """llama.cpp's `add_space_prefix` for the tokenizer's normalizer and pre-tokenizer.

    Raises:
        ConversionError: for space handling llama.cpp cannot reproduce.
    """
    normalizers = _steps(spec.get("normalizer"), "normalizers")
    pre = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    if _REPLACE_SPACE in normalizers:
        # No space is left after Replace(" ", "▁"), so a split at " " (Gemma's pre-tokenizer) changes nothing.
        pre = [s for s in pre if not (s.get("type") == "Split" and s.get("pattern") == {"String": " "})]
    if not pre and normalizers in ([_PREPEND_SPACE, _REPLACE_SPACE], [_REPLACE_SPACE, _PREPEND_SPACE]):
        return True  # the legacy Llama 2 setup: each text between special tokens gets a "▁" in front
    if not pre and normalizers == [_REPLACE_SPACE]:
        return False  # Gemma
    if not normalizers and len(pre) == 1 and pre[0].get("type") == "Metaspace" and pre[0].get("replacement") == SPACE:
        scheme = pre[0].get("prepend_scheme", "always" if pre[0].get("add_prefix_space", True) else "never")
        # "always" and "first" are exported as llama.cpp's prefix: close, not equal (see `metaspace_reason`).
        spanning = sorted(t for t in tokens if SPACE in t[1:] and not _BYTE_TOKEN.fullmatch(t))
        if pre[0].get("split", True) and spanning:
            raise ConversionError(
                f"tokenizer pre_tokenizer Metaspace(split=True) never forms tokens with an inner '▁', which llama.cpp "
                f"forms: {len(spanning)} such tokens, e.g. {spanning[:3]}."
            )
        return scheme != "never"
    raise ConversionError(
        f"tokenizer normalizer {normalizers} with pre_tokenizer {spec.get('pre_tokenizer')} has no llama.cpp "
        "equivalent known to this exporter (supported: Metaspace, or the normalizers Prepend('▁') + "
        "Replace(' ', '▁') or Replace(' ', '▁') alone)."
    )


def metaspace_reason(spec: dict) -> str | None:
    """Why llama.cpp splits some texts differently from a Metaspace pre-tokenizer that prepends a '▁'."""
    pre = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    scheme = next((s.get("prepend_scheme", "always") for s in pre if s.get("type") == "Metaspace"), "never")
    if scheme == "never":
        return None
    return (
        f"tokenizer Metaspace(prepend_scheme={scheme!r}) (transformers' Llama tokenizer; 'first' is its default "
        "when tokenizer_config.json has no `legacy: true`): it puts no '▁' in front of a text that starts with a "
        + ("space" if scheme == "always" else "space, nor after a special token in the text")
        + "; llama.cpp does, like SentencePiece and the original TinyLLaVA's legacy tokenizer. Such texts split "
        "differently (text after an image is a string of its own in libmtmd)"
    )


def _check_model(model: dict, vocab: dict[str, int]) -> None:
    """Refuses BPE options llama.cpp's SPM tokenizer has no equivalent for, and missing byte tokens."""
    options = {
        "dropout": model.get("dropout"),
        "continuing_subword_prefix": model.get("continuing_subword_prefix") or None,
        "end_of_word_suffix": model.get("end_of_word_suffix") or None,
        "ignore_merges": model.get("ignore_merges") or None,
    }
    set_options = {k: v for k, v in options.items() if v is not None}
    if set_options:
        raise ConversionError(f"tokenizer BPE options {set_options} have no llama.cpp equivalent.")
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise ConversionError(
            f"tokenizer lacks {len(missing)} of the 256 byte-fallback tokens (e.g. {missing[0]}); llama.cpp spells "
            "unknown characters in bytes and needs them all."
        )


def _merge_scores(merges: list, vocab: dict[str, int]) -> dict[str, float]:
    """A score per merged token that makes llama.cpp merge in rank order: minus the rank of its first merge.

    Raises:
        ConversionError: when llama.cpp's merge-any-pair-of-tokens rule would merge differently.
    """
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    scores: dict[str, float] = {}
    previous = None
    for rank, (left, right) in enumerate(pairs):
        merged = left + right
        if merged != previous and merged in scores:
            raise ConversionError(
                f"tokenizer merges producing {merged!r} are not consecutive (rank {rank}): llama.cpp scores each "
                "token once, so it would order them differently."
            )
        scores.setdefault(merged, -float(rank))
        previous = merged
    known = set(pairs)
    unmerged = [
        (token[:i], token[i:])
        for token in vocab
        for i in range(1, len(token))
        if token[:i] in vocab and token[i:] in vocab and (token[:i], token[i:]) not in known
    ]
    if unmerged:
        raise ConversionError(
            f"tokenizer has {len(unmerged)} pairs of tokens that form a token but are no merge, e.g. {unmerged[:3]}: "
            "llama.cpp's SentencePiece tokenizer merges any such pair, transformers only listed merges (this is a "
            "BPE trained by `tokenizers`, not converted from SentencePiece)."
        )
    return scores


def spm_vocabulary(spec: dict, vocab: dict[str, int], vocab_size: int, unk_token_id: int | None) -> SpmVocabulary:
    """The SPM vocabulary of a byte-fallback BPE `tokenizer.json`, padded to the model's `vocab_size` rows.

    Args:
        spec: the parsed `tokenizer.json` (`tokenizer.backend_tokenizer.to_str()`).
        vocab: token -> id, added tokens included (`tokenizer.get_vocab()`).
        vocab_size: rows of the model's token embedding (may exceed the tokenizer's size; extra rows are unused).
        unk_token_id: the unknown token, typed UNKNOWN as llama.cpp's own converter does.

    Raises:
        ConversionError: for a tokenizer llama.cpp's SPM tokenizer would split differently.
    """
    model = spec["model"]
    _check_model(model, vocab)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    stripped = [t["content"] for t in added.values() if t.get("lstrip") or t.get("rstrip") or t.get("single_word")]
    if stripped:
        raise ConversionError(f"added tokens {stripped[:3]} strip spaces or match single words; llama.cpp cannot.")
    add_space_prefix = _add_space_prefix(spec, set(vocab))
    scores = _merge_scores(model.get("merges", []), vocab)
    by_id = {index: token for token, index in vocab.items()}
    tokens, token_scores, types = [], [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index == unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif index in added:
            types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
        elif _BYTE_TOKEN.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        if token is not None:
            tokens.append(token)
        token_scores.append(scores.get(token, 0.0))
    return SpmVocabulary(tokens, token_scores, types, add_space_prefix)
