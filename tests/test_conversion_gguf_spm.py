"""`to-gguf` with SentencePiece-style tokenizers (Llama 2 / TinyLlama, Gemma), checked by llama.cpp's own tokenizer
and generation. The tokenizers are made here as transformers converts SentencePiece BPE models: a vocabulary of
special tokens, the 256 `<0xNN>` byte tokens and pieces, with merges generated from the vocabulary."""

import json

import pytest
import torch
from conftest import CORPUS, TEXT_CONFIGS, assemble
from gguf_helpers import greedy, load
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, GemmaTokenizer, LlamaTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from tinyllava_hf.conversion.errors import ConversionError
from tinyllava_hf.conversion.gguf_export import to_gguf

EXTRA_CORPUS = ["In 2024 there were 365 days and 12 months.", "café crème naïve über", "東京 中文 日本語"]
# Leading and repeated spaces, newlines, digits, accents, CJK (partly in the vocabulary) and emoji (bytes only).
TEXTS = [
    "The square is red.",
    " leading space",
    "several   spaces  and a tab\there",
    "new\nline\n\n  indented",
    "digits 0123456789 and 2024",
    "accents: café, naïve, Ærøskøbing",
    "CJK: 中文 東京 한국어",
    "emoji 😀🎉 end",
    "",
    " ",
]
SPECIALS = {"llama": ["<unk>", "<s>", "</s>"], "gemma": ["<pad>", "<eos>", "<bos>", "<unk>"]}


def spm_vocab(specials: list[str], spm_merges: bool = True) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Special tokens, then bytes, then pieces learnt on the corpus, as in Llama 2's vocabulary.

    With `spm_merges` the merges are generated from the vocabulary as transformers does when it converts a
    SentencePiece model (every split of a piece into two pieces, by the piece's score); else they are the merges
    `tokenizers` learnt, which llama.cpp cannot reproduce.
    """
    trainer = Tokenizer(models.BPE(byte_fallback=True))
    trainer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer.train_from_iterator(CORPUS + EXTRA_CORPUS, trainers.BpeTrainer(vocab_size=320, show_progress=False))
    learnt = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    fixed = specials + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {piece: index for index, piece in enumerate(fixed + [piece for piece, _ in learnt])}
    if not spm_merges:
        return vocab, [tuple(m) for m in json.loads(trainer.to_str())["model"]["merges"]]
    scores = {piece: -float(index) for piece, index in vocab.items() if piece not in fixed}
    return vocab, generate_merges(vocab, scores, skip_tokens=fixed)


def legacy_llama_tokenizer(spm_merges: bool = True) -> PreTrainedTokenizerFast:
    """TinyLlama's `tokenizer.json`: Prepend("▁") + Replace(" ", "▁") normalizers, `<s>` added in front."""
    vocab, merges = spm_vocab(SPECIALS["llama"], spm_merges)
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=256
    )


TOKENIZERS = {
    "llama-legacy": ("llama", legacy_llama_tokenizer),
    "gemma": ("gemma", lambda: GemmaTokenizer(*spm_vocab(SPECIALS["gemma"]), model_max_length=256)),
    # transformers 5's own Llama tokenizer: Metaspace(prepend_scheme="first") (legacy=False).
    "llama": ("llama", lambda: LlamaTokenizer(*spm_vocab(SPECIALS["llama"]), model_max_length=256)),
}


def export_spm(components_dir, tmp_path, kind: str, allow_lossy: bool = False, tokenizer=None):
    """A tiny TinyLLaVA on a SentencePiece-style tokenizer, saved and exported; returns (model, processor, gguf)."""
    family, make_tokenizer = TOKENIZERS[kind]
    tokenizer = tokenizer or make_tokenizer()
    config = TEXT_CONFIGS[family](len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    llm_dir = tmp_path / f"llm-{kind}"
    AutoModelForCausalLM.from_config(config).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    components = tmp_path / "components"
    components.mkdir(exist_ok=True)
    (components / family).symlink_to(llm_dir)
    (components / "siglip").symlink_to(components_dir / "siglip")
    model, processor = assemble(components, family, "siglip", vision_feature_select_strategy="full")
    src = tmp_path / kind
    model.save_pretrained(src)
    processor.save_pretrained(src)
    result = to_gguf(src, tmp_path / f"{kind}-gguf", "f32", allow_lossy=allow_lossy)
    return model.eval(), processor, result.output_dir / f"{kind}-f32.gguf"


def chat_ids(processor, question: str) -> tuple[str, list[int]]:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return text, processor(text=text)["input_ids"][0]


@pytest.mark.parametrize("kind", ["llama-legacy", "gemma"])
def test_llamacpp_tokenizes_and_generates_like_transformers(components_dir, tmp_path, kind):
    model, processor, path = export_spm(components_dir, tmp_path, kind)
    tokenizer, llm = processor.tokenizer, load(path)
    # Special tokens inside the text: the text after them is split alike too.
    texts = TEXTS + [f"{tokenizer.bos_token}after a special{tokenizer.eos_token} token", f"a{tokenizer.eos_token}b"]
    for text in texts:
        for add_bos in (True, False):
            ours = tokenizer(text, add_special_tokens=add_bos).input_ids
            assert llm.tokenize(text.encode(), add_bos=add_bos, special=True) == ours, (text, add_bos)
    eos = model.generation_config.eos_token_id
    for question in ("What is shown in the image?", "How many circles are there? Is it red?", "Describe 中文 😀."):
        text, ids = chat_ids(processor, question)
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids  # BOS as the GGUF says
        with torch.no_grad():
            ours = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids) :].tolist()
        assert greedy(llm, ids, 32, eos) == ours, question


def test_metaspace_prefix_is_lossy_and_splits_alike_except_at_spaces_and_special_tokens(components_dir, tmp_path):
    """transformers 5's Llama tokenizer puts no '▁' in front of a text starting with a space nor after a special
    token; llama.cpp does."""
    with pytest.raises(ConversionError, match="prepend_scheme='first'"):
        export_spm(components_dir, tmp_path / "strict", "llama")
    assert not (tmp_path / "strict" / "llama-gguf").exists()
    _, processor, path = export_spm(components_dir, tmp_path / "lossy", "llama", allow_lossy=True)
    record = json.loads((path.parent / "conversion.json").read_text())
    assert record["lossy"] and any("prepend_scheme='first'" in note for note in record["notes"])
    tokenizer, llm = processor.tokenizer, load(path)
    for text in [t for t in TEXTS if not t.startswith(" ")]:
        for add_bos in (True, False):
            ours = tokenizer(text, add_special_tokens=add_bos).input_ids
            assert llm.tokenize(text.encode(), add_bos=add_bos, special=True) == ours, (text, add_bos)
    for text in (" leading space", f"a{tokenizer.eos_token}b"):  # the reported differences
        ours = tokenizer(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) != ours, text


def test_trained_bpe_merges_are_refused_even_when_lossy(components_dir, tmp_path):
    """A BPE learnt by `tokenizers` lacks merges for pairs that form a token; llama.cpp would merge them."""
    with pytest.raises(ConversionError, match="pairs of tokens that form a token but are no merge"):
        export_spm(components_dir, tmp_path, "llama-legacy", allow_lossy=True, tokenizer=legacy_llama_tokenizer(False))
    assert not (tmp_path / "llama-legacy-gguf").exists()
