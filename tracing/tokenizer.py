"""Word-level tokenizers built locally, for tiny random models and the organism.

No hub is reachable here, so small models get a tokenizer made from a word
list: one token per word or punctuation mark, case kept (so the option
letter "A" and the article "a" stay distinct).
"""
from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORD_RE = r"\w+|[^\w\s]"
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "pad_token": "<pad>"}


def words(text: str) -> list[str]:
    """The pieces the word-level tokenizer makes of ``text``."""
    return re.findall(WORD_RE, text)


def word_tokenizer(texts_or_words, extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A fast tokenizer over every word in ``texts_or_words`` (strings are split with ``words``).

    Ids are assigned in a fixed order (specials, then sorted words) so the same
    word list always gives the same ids.
    """
    vocab_words: set[str] = set()
    for t in texts_or_words:
        vocab_words.update(words(t))
    specials = list(SPECIALS.values()) + [s for s in extra_special if s not in SPECIALS.values()]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in sorted(vocab_words - set(specials)):
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_RE), behavior="isolated")]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **SPECIALS, additional_special_tokens=list(extra_special))
    tok.add_bos_token = False
    return tok
