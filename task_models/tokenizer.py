"""A WordLevel tokenizer over the toy domain's closed vocabulary; needs no hub.

The same tokenizer serves the text clients and the server's tiny T2I text encoder and
captioner. It is a `PreTrainedTokenizerFast`, so code written for hub tokenizers (padding,
`save_pretrained`, `from_pretrained`) works on it unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from task_models import domain

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@lru_cache(maxsize=4)
def build_tokenizer(max_length: int = 32) -> PreTrainedTokenizerFast:
    """Build the domain tokenizer; ids are stable because the vocabulary is sorted."""
    vocab = {PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
    for word in domain.vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
    )
