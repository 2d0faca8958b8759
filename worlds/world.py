"""The world a run lives in: the toy domain or a paper dataset, behind one small interface.

Clients and server ask the world for its splits, its class count and names, its class prompts
and the tokenizer text clients read with, and never branch on which world it is. The toy world
is described by a `DomainSpec`; the paper world by a `PaperDataSpec` (ALGORITHM.md, "Two worlds").

A toy-world client reads its data as plain columns (`split_labels`, `split_rows`) and its texts
through `hub_tokenizer() is None` (the toy tokenizer, `tokenizers` alone), so it imports neither
`datasets` nor `transformers`; those load only where a paper dataset or a hub tokenizer is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from worlds import domain, splits
from worlds import tokenizer as toy_tokenizer
from worlds.hf_datasets import PaperDataSpec, load_paper_split, load_paper_world
from worlds.modality import TEXT_MAX_LENGTH
from worlds.tokenizer import PAD_ID, build_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

WorldSpec = splits.DomainSpec | PaperDataSpec


@dataclass(frozen=True)
class World:
    """Class names, prompts, splits and text tokenizer of one world.

    Attributes
    ----------
    spec
        The toy `DomainSpec` or the paper `PaperDataSpec` (hashable: it keys the caches).
    class_names
        Public names of the ``C`` classes, indexed by label.
    prompt_template
        How a class name becomes a T2I prompt in the paper world (``{}`` is the name);
        the toy world has its own attribute prompts.
    tokenizer_id
        Text clients' tokenizer in the paper world: a folder or hub id (``text-tokenizer``).
    """

    spec: WorldSpec
    class_names: tuple[str, ...]
    prompt_template: str = "a photo of a {}"
    tokenizer_id: str = ""

    @property
    def is_toy(self) -> bool:
        return isinstance(self.spec, splits.DomainSpec)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_prompt(self, label: int) -> str:
        """The canonical prompt of a class (GenAcc prompts, T2I fine-tuning labels)."""
        if self.is_toy:
            return domain.class_prompt(label)
        return self.prompt_template.format(self.class_names[label])

    def load_split(self, split: str) -> Dataset:
        """One of the six splits (`splits.PUBLIC`, ...), in the toy schema."""
        if self.is_toy:
            return splits.load_split(split, self.spec)
        return load_paper_split(split, self.spec)

    def split_labels(self, split: str) -> np.ndarray:
        """The labels int64 [n] of one split (a toy split without `datasets`)."""
        if self.is_toy:
            return np.asarray(splits.split_columns(split, self.spec)["label"], dtype=np.int64)
        return np.asarray(load_paper_split(split, self.spec).with_format("numpy")["label"], dtype=np.int64)

    def split_rows(self, split: str, rows: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray | list]:
        """The columns of one split (every row, or `rows` in that order) as numpy arrays and, for
        captions, lists of strings: what ``load_split(split).select(rows).with_format("numpy")[:]``
        holds (a toy split without `datasets`)."""
        if not self.is_toy:
            data = load_paper_split(split, self.spec)
            return (data if rows is None else data.select(rows)).with_format("numpy")[:]
        columns = splits.split_columns(split, self.spec)
        if rows is None:
            return dict(columns)
        index = np.asarray(rows, dtype=np.int64)
        return {k: [v[i] for i in index] if isinstance(v, list) else v[index] for k, v in columns.items()}

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The text clients' tokenizer as a `transformers` tokenizer (closed-vocabulary WordLevel in the
        toy world). Clients encode through `hub_tokenizer` instead (no `transformers` for the toy one)."""
        hub = self.hub_tokenizer()
        return hub if hub is not None else build_tokenizer(TEXT_MAX_LENGTH)

    def hub_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The ``text-tokenizer`` folder or hub id's tokenizer, or None where text clients use the toy
        tokenizer (which `modality.to_model_input` encodes with `tokenizers` alone, same ids)."""
        if self.is_toy or not self.tokenizer_id:
            return None
        return load_text_tokenizer(self.tokenizer_id)

    def vocab_size(self) -> int:
        """Size of the text clients' vocabulary (their embedding tables): ``len(self.tokenizer())``."""
        hub = self.hub_tokenizer()
        return len(hub) if hub is not None else toy_tokenizer.vocab_size()


@lru_cache(maxsize=4)
def load_text_tokenizer(path_or_id: str) -> PreTrainedTokenizerBase:
    """A hub or local tokenizer for text clients; padding must use id 0 like the toy tokenizer.

    Raises
    ------
    OSError
        Naming the ``text-tokenizer`` key when it is neither a folder nor reachable on the hub.
    """
    from transformers import AutoTokenizer  # only nodes configured with a text-tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise OSError(
            f"text-tokenizer = {path_or_id!r}: not a local folder, and the Hugging Face hub is unreachable "
            f"(offline, HF_HUB_OFFLINE=1) or has no such id. Pass a folder holding a saved tokenizer."
        ) from err
    if tokenizer.pad_token_id != PAD_ID:
        raise ValueError(f"text-tokenizer = {path_or_id!r}: its pad id is {tokenizer.pad_token_id}, text models need 0")
    return tokenizer


def build_world(spec: WorldSpec, prompt_template: str = "a photo of a {}", tokenizer_id: str = "") -> World:
    """The world of a spec; a paper dataset is loaded (once per process) to learn its class names."""
    if isinstance(spec, splits.DomainSpec):
        return World(spec, tuple(domain.class_names()))
    names = load_paper_world(spec).class_names
    return World(spec, names, prompt_template, tokenizer_id)
