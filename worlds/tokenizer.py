"""A WordLevel tokenizer over the toy domain's closed vocabulary; needs no hub.

The same tokenizer serves the text clients and the server's tiny T2I text encoder and
captioner. `build_tokenizer` wraps it in a `PreTrainedTokenizerFast`, so code written for hub
tokenizers (padding, `save_pretrained`, `from_pretrained`) works on it unchanged. Text clients
encode with `encode_texts` instead: the same `tokenizers` backend, configured the way
`PreTrainedTokenizerFast.__call__` configures it, so the ids are the same without importing
`transformers` (an edge SuperNode need not install it; tests/test_edge_client.py checks both agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from worlds import domain

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """Token -> id; ids are stable because the domain's vocabulary is sorted."""
    vocab = {PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
    for word in domain.vocabulary():
        vocab.setdefault(word, len(vocab))
    return vocab


def vocab_size() -> int:
    """Ids of the toy tokenizer (= ``len(build_tokenizer())``; its special tokens are in the vocabulary)."""
    return len(vocabulary())


def _backend() -> Tokenizer:
    """The `tokenizers` pipeline: lower-case, split on whitespace and punctuation, wrap in bos/eos."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # text nodes only

    tok = Tokenizer(models.WordLevel(vocab=dict(vocabulary()), unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return tok


@lru_cache(maxsize=4)
def build_tokenizer(max_length: int = 32) -> PreTrainedTokenizerFast:
    """The domain tokenizer as a `transformers` tokenizer (the server's text encoder and captioner)."""
    from transformers import PreTrainedTokenizerFast  # the server side; text clients use encode_texts

    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        model_max_length=max_length,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
    )


@lru_cache(maxsize=4)
def _padded_backend(max_length: int) -> Tokenizer:
    """The backend as ``build_tokenizer()(texts, padding="max_length", truncation=True,
    max_length=max_length)`` sets it up: special tokens registered as added tokens (matched before
    splitting, never lower-cased), truncation to `max_length` ids counting bos/eos, right padding with 0."""
    from tokenizers import AddedToken

    tok = _backend()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, UNK, BOS, EOS)])
    tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    tok.enable_padding(direction="right", pad_id=PAD_ID, pad_type_id=0, pad_token=PAD, length=max_length)
    return tok


def encode_texts(texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Token ids int64 [N, max_length] of `texts`, padded with `PAD_ID`, without `transformers`."""
    if not texts:
        return torch.zeros(0, max_length, dtype=torch.long)
    encodings = _padded_backend(max_length).encode_batch(list(texts))
    return torch.tensor([e.ids for e in encodings], dtype=torch.long)
