"""The one tiny tokenizer builder of the repository: the demo, the tests and the benchmarks all train theirs here."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def build_tokenizer(
    corpus: list[str],
    special_tokens: list[str] | tuple[str, ...] = SPECIAL_TOKENS,
    vocab_size: int = 1000,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` until (nearly) every word is one token.

    Byte-level BPE decodes back to the exact text, spaces included, which a word-level vocabulary would not.
    `</s>` ends every assistant turn of the `llama` template; `<unk>` becomes the pad token (reference §1.4).

    Args:
        corpus: the training sentences.
        special_tokens: added first, so they get ids 0, 1, 2, ...; must include `<unk>`, `<s>` and `</s>`.
        vocab_size: upper bound of the vocabulary; a small corpus stops merging earlier.
        model_max_length: the tokenizer's maximum sequence length.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
    )
