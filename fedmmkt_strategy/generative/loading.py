"""Loading server models by local folder or hub id, with an error that says what to do.

`from_pretrained` fails offline with library-specific messages ("not fully cached locally",
"neither a valid local path nor a valid repo id"). A user of `fedmmkt` needs one clear message
naming the model and the fixes, whatever the library, so both loaders go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

T = TypeVar("T")


class ModelUnavailableError(OSError):
    """A model is neither a local folder nor downloadable (offline, or unknown id)."""


def from_pretrained_or_explain(load: Callable[[str], T], path_or_id: str, kind: str) -> T:
    """Call ``load(path_or_id)``; if it is not a local folder and cannot be fetched, explain.

    Parameters
    ----------
    load
        A ``from_pretrained``-style callable taking the path or id.
    path_or_id
        A local folder (e.g. from ``fedmmkt pretrain``) or a Hugging Face hub id.
    kind
        What the model is, for the message (e.g. ``"text-to-image pipeline"``).

    Raises
    ------
    ModelUnavailableError
        When ``path_or_id`` is not an existing folder and the hub cannot provide it. A broken
        local folder re-raises the library's own error, which is then the informative one.
    """
    try:
        with no_loading_bars():
            return load(path_or_id)
    except (OSError, ValueError) as err:
        if Path(path_or_id).is_dir():
            raise
        raise ModelUnavailableError(
            f"Cannot load the {kind} {path_or_id!r}: it is not a local folder and could not be "
            f"fetched from the Hugging Face hub (offline, HF_HUB_OFFLINE=1, or an unknown id). "
            f"Either run once with internet access (or `hf download {path_or_id}`) so it is cached, "
            f"or pass a local folder, e.g. the ones `fedmmkt pretrain` writes for the toy world."
        ) from err


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """Without diffusers' and transformers' per-load progress bars ("Loading pipeline components",
    "Loading weights"): a tiny model loads in milliseconds, and a run's log should say what the run
    does. The libraries' own settings are restored afterwards."""
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()
