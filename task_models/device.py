"""Where a client's task model trains, and in which precision.

``client-device = "auto"`` takes the GPU the node is given and falls back to the CPU, saying why
(in a Flower simulation a client sees a GPU only when `client-resources-num-gpus` in
simulation.toml is above 0: Ray hides the card from actors that reserved none). On CUDA the
forward passes run under bfloat16 autocast (`client-amp`): the matmuls and convolutions of
ResNet-18, ViT-S and BERT are where the time goes, bfloat16 keeps float32's range (no loss
scaling), and losses, softmaxes and the weights stay float32. On the CPU everything is float32.
"""

from __future__ import annotations

import contextlib
from logging import INFO

import torch
from flwr.common.logger import log

_SAID: set[str] = set()  # fallback reasons already logged in this process (once, not per message)


def gpu_visibility() -> str:
    """Why torch sees no GPU here, in the user's terms."""
    if not torch.backends.cuda.is_built():
        return "this torch is a CPU build (install a CUDA build of torch on the node)"
    return (
        "torch sees no CUDA device (in a simulation, set client-resources-num-gpus above 0 in "
        "simulation.toml; on a SuperNode, check CUDA_VISIBLE_DEVICES and the driver)"
    )


def resolve_client_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if visible, else cpu (logged once with the reason); ``"cuda"`` without
    a visible GPU is an error naming the key and what to change; ``"cpu"`` -> cpu."""
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    reason = gpu_visibility()
    if name == "cuda":
        raise RuntimeError(f"client-device = 'cuda' but {reason}; or use client-device = 'auto' or 'cpu'")
    if reason not in _SAID:
        _SAID.add(reason)
        log(INFO, "client-device = 'auto': training on the CPU because %s", reason)
    return torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when `amp`; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
