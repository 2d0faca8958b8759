"""The reference classifier ("judge") that rates the T2I model's images (ALGORITHM.md, GenAcc).

It is trained once on the REFERENCE split only, which the federation never sees. Generated
images are softer than real ones, so a judge trained on crisp images under-rates them badly
(60 % vs 97 % on the same VAE reconstructions, pitfall 4 of the notes); it therefore learns
under random Gaussian blur, pixel noise and flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmmkt_strategy.reporting.progress import track
from task_models.augment import augment


class JudgeCNN(nn.Module):
    """Three conv blocks (width, 2x, 4x) and a linear head; about 95 k parameters at width 32."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.num_classes, self.width = num_classes, width
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: what domain FID compares."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_judge_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] to float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.asarray(images, np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_judge(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 30,
    lr: float = 2e-3,
    batch_size: int = 64,
    width: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> JudgeCNN:
    """Train a judge on real images (the REFERENCE split) with blur/noise/flip augmentation.

    One-cycle lr schedule, AdamW. Returns the judge in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = JudgeCNN(num_classes, width)
    x_all, y_all = to_judge_input(images), torch.as_tensor(labels, dtype=torch.long)
    steps_per_epoch = max(1, len(x_all) // batch_size)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    judge.train()
    for _ in track(range(epochs), "judge", "epoch", enabled=progress):
        order = torch.randperm(len(x_all), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(judge(augment(x_all[idx], generator)), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


@torch.no_grad()
def judge_logits(judge: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class logits [N, C] for uint8 images."""
    judge.eval()
    out = [judge(to_judge_input(images[s : s + batch_size])) for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, judge.num_classes), np.float32)


def judge_predict(judge: nn.Module, images: np.ndarray) -> np.ndarray:
    """Predicted labels [N] (int64) for uint8 images."""
    return judge_logits(judge, images).argmax(1).astype(np.int64)


@torch.no_grad()
def judge_features(judge: JudgeCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Penultimate features [N, d] (float64) for uint8 images, for domain FID."""
    judge.eval()
    out = [judge.features(to_judge_input(images[s : s + batch_size])) for s in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


def save_judge(judge: JudgeCNN, path: str | Path) -> None:
    """Save weights plus the two constructor arguments, so `load_judge` needs nothing else."""
    torch.save({"num_classes": judge.num_classes, "width": judge.width, "state": judge.state_dict()}, path)


def load_judge(path: str | Path) -> JudgeCNN:
    """Load a judge written by `save_judge`, in eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    judge = JudgeCNN(blob["num_classes"], blob["width"])
    judge.load_state_dict(blob["state"])
    return judge.eval()
