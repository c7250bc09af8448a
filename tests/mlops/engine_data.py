"""Small synthetic tabular data sets for the engine tests (fixed seeds)."""

from __future__ import annotations

import torch


def linear_task(*, n: int, d: int = 10, seed: int = 0, n_classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable-ish data: labels from a random linear map plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W = torch.randn(d, n_classes, generator=g)
    y = (X @ W + 0.3 * torch.randn(n, n_classes, generator=g)).argmax(1)
    return X, y


def noisy_task(*, n: int, d: int = 20, label_noise: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary task with a fraction of labels flipped: memorising it is what leaks membership."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = (X @ w > 0).long()
    flip = torch.rand(n, generator=g) < label_noise
    y[flip] = 1 - y[flip]
    return X, y
