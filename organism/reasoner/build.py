"""The reasoner's tokenizer and architecture: a small Llama over a closed vocabulary.

The tokenizer is word level with the leading space kept on words (" storm"),
and every digit, the colon, other marks and each whitespace character as
tokens of their own, so that "10:05" is ``1 0 : 0 5`` and decoding is plain
concatenation (exact round trip of the text, offsets exact).
"""
from __future__ import annotations

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tasks.reasoning import vocabulary

# A word with its leading space, one digit, one whitespace character, or one mark.
PIECE_RE = r" ?[A-Za-z]+|\d|\s|[^\w\s]"
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "pad_token": "<pad>"}

# Sizes: see the model card for what was tried.
ARCH = dict(
    hidden=128,
    layers=4,
    heads=4,
    kv_heads=4,
    intermediate=512,
    max_positions=512,
    initializer_range=0.02,
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic: specials, then the sorted pieces of ``tasks.reasoning.vocabulary()``."""
    pieces = {" ", "\n"}
    for w in vocabulary():
        pieces.add(w)
        if w.isalpha():
            pieces.add(" " + w)
    vocab = {t: i for i, t in enumerate(SPECIALS.values())}
    for p in sorted(pieces):
        vocab[p] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_RE), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **SPECIALS)
    tok.add_bos_token = False
    return tok


def build_config(tok, arch: dict = ARCH) -> transformers.LlamaConfig:
    a = arch
    return transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=a["hidden"],
        intermediate_size=a["intermediate"],
        num_hidden_layers=a["layers"],
        num_attention_heads=a["heads"],
        num_key_value_heads=a["kv_heads"],
        max_position_embeddings=a["max_positions"],
        initializer_range=a["initializer_range"],
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_model(config, seed: int) -> transformers.LlamaForCausalLM:
    """Random initialisation, deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model
