"""Where the server's generative models run and in which precision.

``server-device = "auto"`` picks CUDA when present; ``t2i-dtype = "auto"`` picks bfloat16 on
CUDA (Stable Diffusion's usual half precision that, unlike float16, does not overflow in the
VAE) and float32 on CPU, where half precision is slow and the tiny toy models gain nothing.
"""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cuda"`` without a GPU is an error naming the key."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("server-device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA, float32 elsewhere; otherwise the named dtype."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]
