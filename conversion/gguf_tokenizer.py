"""The tokenizer half of a GGUF export: `tokenizer.ggml.*` metadata from a Hugging Face fast tokenizer.

llama.cpp re-implements tokenizers from a token list plus a pre-tokenizer name. Byte-level BPE tokenizers (GPT-2,
Phi-2, Qwen2, Llama 3 and the tests' and demo's tokenizers) are exported with their merges; the pre-tokenizer name is
read from the tokenizer's own split rule, so that llama.cpp splits text exactly as `tokenizers` does.
SentencePiece-style tokenizers (Llama 2, TinyLlama, Gemma) become llama.cpp's `llama` vocabulary
(`gguf_tokenizer_spm.py`). Anything else is refused with the reason, rather than exported with a tokenizer that would
silently split text differently.
"""

import json

import gguf

from .errors import ConversionError
from .gguf_tokenizer_spm import is_sentencepiece_style, metaspace_reason, spm_vocabulary

# The regexes of byte-level BPE tokenizers that split with an explicit `Split` pre-tokenizer, by llama.cpp's name.
_SPLIT_REGEXES = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's pre-tokenizer for a `tokenizer.json` `pre_tokenizer` entry.

    Raises:
        ConversionError: for a split rule llama.cpp has no equivalent for.
    """
    if spec and spec.get("type") == "ByteLevel" and spec.get("use_regex", True) and not spec.get("add_prefix_space"):
        return "gpt-2"  # GPT-2's regex, built into ByteLevel
    if spec and spec.get("type") == "Sequence":
        steps = spec["pretokenizers"]
        split = [s for s in steps if s.get("type") == "Split"]
        byte_level = [s for s in steps if s.get("type") == "ByteLevel" and not s.get("use_regex", True)]
        if len(split) == 1 and len(byte_level) == 1 and len(steps) == 2:
            pattern = split[0].get("pattern", {}).get("Regex")
            for name, regex in _SPLIT_REGEXES.items():
                if pattern == regex:
                    return name
    raise ConversionError(
        f"tokenizer pre_tokenizer {json.dumps(spec)[:200]} has no llama.cpp equivalent known to this exporter "
        f"(supported: byte-level BPE with the GPT-2, Qwen2 or Llama 3 split rule)."
    )


def tokenizer_lossy_reasons(tokenizer) -> list[str]:
    """What llama.cpp's tokenizer would split differently from `tokenizer` although it can be exported."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    reason = metaspace_reason(spec) if is_sentencepiece_style(spec) else None
    return [reason] if reason else []


def write_tokenizer(writer, tokenizer, vocab_size: int, eos_token_id: int) -> None:
    """Adds `tokenizer.ggml.*` for `tokenizer`, padded to the model's `vocab_size` rows.

    Args:
        writer: the `gguf.GGUFWriter` of the language model file.
        tokenizer: a `PreTrainedTokenizerFast`: byte-level BPE, or SentencePiece-style (byte-fallback BPE).
        vocab_size: rows of the model's token embedding (may exceed the tokenizer's size; extra rows are unused).
        eos_token_id: the token that ends generation (the model's `generation_config.eos_token_id`).

    Raises:
        ConversionError: for a tokenizer llama.cpp would not reproduce exactly.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ConversionError(f"the tokenizer has {len(vocab)} tokens but the model embeds only {vocab_size}.")
    if is_sentencepiece_style(spec):
        spm = spm_vocabulary(spec, vocab, vocab_size, tokenizer.unk_token_id)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(spm.tokens)
        writer.add_token_scores(spm.scores)
        writer.add_token_types(spm.types)
        writer.add_add_space_prefix(spm.add_space_prefix)
    else:
        _write_byte_level_bpe(writer, spec, vocab, vocab_size)
    _write_special_tokens(writer, tokenizer, eos_token_id)


def _write_byte_level_bpe(writer, spec: dict, vocab: dict[str, int], vocab_size: int) -> None:
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConversionError(
            f"tokenizer model {model.get('type')!r} with decoder {(spec.get('decoder') or {}).get('type')!r}: only "
            "byte-level BPE and SentencePiece-style (byte-fallback BPE) tokenizers are exported to GGUF."
        )
    if spec.get("normalizer") is not None and spec["normalizer"].get("type") != "NFC":
        raise ConversionError(f"tokenizer normalizer {spec['normalizer'].get('type')!r} has no llama.cpp equivalent.")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id = {index: token for token, index in vocab.items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index]["content"])
            types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


def _write_special_tokens(writer, tokenizer, eos_token_id: int) -> None:
    probe = tokenizer("a").input_ids
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    writer.add_eos_token_id(eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
