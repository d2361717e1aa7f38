"""Losses of S2SGAN (Zhao et al., MICCAI 2019), masked to cortex.

Every map loss is computed per scan over the vertices of its mask and then averaged over the
batch, so that a batch of B scans gives the same gradient as the mean of B single-scan batches
(what DistributedDataParallel computes across processes).

Default weights (:class:`LossWeights`) are the authors': cycle L1 10, identity L1 0.5, correlation
0.5 per direction, discriminator loss scaled by 0.5 x 0.2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator terms and the scale of the discriminator loss."""

    adversarial: float = 1.0
    cycle: float = 10.0
    identity: float = 0.5
    correlation: float = 0.5
    discriminator: float = 0.1  # 0.5 (average of real and fake terms) x 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def lsgan_loss(score: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean of (score - 1)^2 for real, score^2 for fake; a scalar."""
    target = 1.0 if real else 0.0
    return (score.float() - target).square().flatten(1).mean(dim=1).mean()


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the masked vertices of each scan, averaged over scans.

    a, b: (B, C, V); mask: (B, V) bool. Returns a scalar.
    """
    weight = mask[:, None, :].to(torch.float32)
    total = ((a.float() - b.float()).abs() * weight).sum(dim=(1, 2))
    return (total / (weight.sum(dim=(1, 2)) * a.shape[1]).clamp_min(1)).mean()


def masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation between the first channels of ``a`` and ``b`` over each scan's mask.

    a, b: (B, C, V); mask: (B, V) bool. Returns (B,).
    """
    weight = mask.to(torch.float32)
    count = weight.sum(dim=1).clamp_min(1)
    x, y = a[:, 0].float(), b[:, 0].float()
    x = (x - (x * weight).sum(1, keepdim=True) / count[:, None]) * weight
    y = (y - (y * weight).sum(1, keepdim=True) / count[:, None]) * weight
    return (x * y).sum(1) / ((x.square().sum(1) * y.square().sum(1)).sqrt() + eps)


def correlation_loss(inputs: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Minus the mean Pearson r between input and generated maps: keeps each subject's pattern."""
    return -masked_pearson(inputs, generated, mask).mean()
