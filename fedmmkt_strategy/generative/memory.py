"""Memory-aware batch sizes for the server's generative models on a GPU.

A batch size that fits Stable Diffusion at 512 px on an 80 GB card runs out of memory on a
24 GB one, and one sized for the small card wastes the big one. So on CUDA the server measures
what one sample costs (peak memory of a batch-of-one probe) and takes the largest batch, up to
the configured one, that fits in the free memory with headroom. On CPU nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Share of the free memory a batch may plan to use; the rest absorbs fragmentation and workspaces.
HEADROOM = 0.8


def fit_batch_size(requested: int, per_sample_bytes: int, free_bytes: int, headroom: float = HEADROOM) -> int:
    """The largest batch <= `requested` whose estimated memory fits in ``headroom * free_bytes`` (at least 1)."""
    if per_sample_bytes <= 0:
        return requested
    return max(1, min(requested, int(headroom * free_bytes // per_sample_bytes)))


def probe_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak CUDA memory `fn` allocates above what was already allocated (bytes)."""
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - baseline)


def cuda_batch_size(requested: int, device: torch.device, probe: Callable[[], object]) -> int:
    """`requested` on CPU; on CUDA, the largest batch that fits, from a batch-of-one `probe`."""
    if device.type != "cuda" or requested <= 1:
        return requested
    per_sample = probe_peak_bytes(probe, device)
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch_size(requested, per_sample, free)
