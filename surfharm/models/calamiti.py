"""Networks of CALAMITI / HACA3 (:mod:`surfharm.harmonize.volumetric.calamiti`): an anatomy encoder, a
contrast encoder and a decoder that rebuilds an image from the two codes.

* :class:`AnatomyEncoder` (beta): a U-Net (:class:`~surfharm.models.image2d.UNet2d`, instance
  normalisation, base 8 as published) from one contrast's slice to ``n_classes`` logits per pixel; the
  anatomy code is a one-hot map over the classes (:func:`gumbel_one_hot` in training, :func:`one_hot`
  at inference).
* :class:`ContrastEncoder` (theta): a small strided CNN without normalisation (normalisation would
  remove the very intensity level and contrast the code has to carry) pooled over the brain mask to the
  mean and log-variance of a ``theta_dim``-d Gaussian (a VAE code, 2-d as published).
* :class:`Decoder`: a U-Net (base 16 as published) on ``[beta, theta tiled over the slice]`` to one
  image channel; with ``contrast_label`` the one-hot index of the contrast to draw is tiled beside
  theta (``[beta, one-hot(contrast), theta]``). No normalisation: an instance normalisation would
  subtract the spatially constant contribution of the tiled codes, i.e. erase them. It also holds
  ``site_theta``, the ``(n_sites, n_contrasts, theta_dim)`` mean contrast code of each training site and
  contrast (a buffer, filled after training), so that the model file and the checkpoints carry it with
  the weights.

Every module takes channels-first batches ``(B, C, H, W)`` float32; H and W are multiples of
``2 ** depth``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surfharm.models.image2d import UNet2d


def one_hot(probs: torch.Tensor) -> torch.Tensor:
    """The one-hot map of the most probable class: ``(B, K, H, W)`` -> ``(B, K, H, W)`` of 0 and 1."""
    return F.one_hot(probs.argmax(dim=1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)


def gumbel_one_hot(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0,
                   noise: float = 1.0) -> torch.Tensor:
    """Straight-through Gumbel-softmax sample: one-hot forward, the soft sample's gradient backward.

    Parameters
    ----------
    logits : (B, K, H, W) class logits.
    uniform : (B, K, H, W) uniform draws in (0, 1) (given, so that training is a function of the seed).
    temperature : softmax temperature of the soft sample.
    noise : scale of the Gumbel noise (1: a Gumbel-softmax sample; 0: the plain straight-through argmax).
    """
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7))) * noise
    soft = torch.softmax((logits + gumbel) / temperature, dim=1)
    return one_hot(soft) - soft.detach() + soft


class AnatomyEncoder(nn.Module):
    """beta encoder: ``(B, in, H, W) -> (B, n_classes, H, W)`` logits (a U-Net, instance normalisation)."""

    def __init__(self, in_channels: int, n_classes: int = 5, depth: int = 3, base_channels: int = 8):
        super().__init__()
        self.net = UNet2d(in_channels, n_classes, depth=depth, base_channels=base_channels, norm="instance")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastEncoder(nn.Module):
    """theta encoder: ``(B, in, H, W)``, mask ``(B, H, W)`` -> mean and log-variance, each ``(B, theta_dim)``.

    Three strided 3x3 convolutions (channels ``base``, ``2 base``, ``4 base``; LeakyReLU, no
    normalisation), a mean over the pixels that the (pooled) brain mask covers, and a linear head.
    """

    def __init__(self, in_channels: int, theta_dim: int = 2, base_channels: int = 8):
        super().__init__()
        layers, ch = [], in_channels
        for i in range(3):
            out = base_channels * 2 ** i
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(out, out, 3, padding=1), nn.LeakyReLU(0.2)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, 2 * int(theta_dim))
        self.theta_dim = int(theta_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        # The brain's share of each feature pixel: the code describes the brain, not the slice's extent.
        weight = F.adaptive_avg_pool2d(mask[:, None].to(feats.dtype), feats.shape[-2:])
        pooled = (feats * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-6)
        mu, logvar = self.head(pooled).split(self.theta_dim, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)


class Decoder(nn.Module):
    """``beta (B, n_classes, H, W)``, ``theta (B, theta_dim)`` -> image ``(B, 1, H, W)``; holds ``site_theta``.

    Parameters
    ----------
    n_classes, theta_dim : sizes of the two codes.
    n_sites, n_contrasts : shape of the ``site_theta`` buffer (mean code per training site and contrast).
    depth, base_channels : of the U-Net (no normalisation; see the module docstring).
    """

    def __init__(self, n_classes: int = 5, theta_dim: int = 2, n_sites: int = 1, n_contrasts: int = 1,
                 depth: int = 3, base_channels: int = 16, contrast_label: bool = False):
        super().__init__()
        self.n_contrasts = int(n_contrasts)
        self.contrast_label = bool(contrast_label)
        labels = self.n_contrasts if self.contrast_label else 0
        self.net = UNet2d(n_classes + labels + theta_dim, 1, depth=depth, base_channels=base_channels, norm="none")
        self.register_buffer("site_theta", torch.zeros(int(n_sites), int(n_contrasts), int(theta_dim)))

    def forward(self, beta: torch.Tensor, theta: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
        """``contrast``: ``(B,)`` int64 index of the contrast to draw (needed, and used, only with a contrast label)."""
        code = theta.to(beta.dtype)
        if self.contrast_label:
            if contrast is None:
                raise ValueError("this decoder draws a given contrast: pass the contrast index of every slice")
            code = torch.cat([F.one_hot(contrast, self.n_contrasts).to(beta.dtype), code], dim=1)
        tiled = code[:, :, None, None].expand(-1, -1, *beta.shape[-2:])
        return self.net(torch.cat([beta, tiled], dim=1))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the code and averaged over the batch: a scalar."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


__all__ = ["AnatomyEncoder", "ContrastEncoder", "Decoder", "gumbel_one_hot", "kl_divergence", "one_hot"]
