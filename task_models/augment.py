"""Image augmentation shared by the judge and the image clients: blur, pixel noise and flips.

Generated images are smoother than real ones (they pass through a VAE); a classifier trained on
sharp, noisy real images only keys on high-frequency detail and under-rates or misreads them
(notes: 60 % vs 97 % on the same reconstructions). The same augmentation makes the judge fair to
generated images and lets image clients learn from the server's synthetic images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur (sigma 0.3-1.3, 70 % of images), Gaussian noise (std up to 0.1) and horizontal flips."""
    n = len(x)
    sigma = torch.empty(n).uniform_(0.3, 1.3, generator=generator)
    blurred = gaussian_blur(x, sigma)
    keep_sharp = (torch.rand(n, generator=generator) < 0.3).view(n, 1, 1, 1)
    x = torch.where(keep_sharp, x, blurred)
    x = x + torch.randn(x.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator) * 0.1
    flip = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable blur with one sigma per image, as a grouped convolution (reflect padding)."""
    n, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)
