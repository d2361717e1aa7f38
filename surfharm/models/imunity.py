"""The networks and the contrast augmentation of ImUnity (Cackowski et al., Med Image Anal 2023).

ImUnity is a VAE-GAN on 2-D slices that separates a slice's *anatomy* from its *contrast*:

- :class:`AnatomyEncoder`: the contracting path of a U-Net (instance normalisation) on slice S1:
  ``(B, C_in, H, W)`` -> the features of every stage (the last one is the bottleneck the site-confusion
  module looks at; the others are the decoder's skips).
- :class:`ContrastEncoder`: a convolutional encoder of a *different* slice S2 of the same scan to the
  mean and log-variance of a ``code_dim``-dimensional Gaussian contrast code (the VAE part). It also
  holds ``site_codes`` ``(n_sites, code_dim)``: the mean code of each training site's slices, set
  after training, which harmonization decodes with.
- :class:`ContrastDecoder`: the expanding path of the U-Net on the anatomy features; the contrast code
  is tiled and concatenated to the bottleneck and modulates every decoder stage (feature-wise affine:
  ``x * (1 + scale(z)) + shift(z)`` after instance normalisation), so contrast enters only through it.
- :class:`SiteClassifier`: the site-confusion head on the bottleneck (3x3 convolution, global average
  pool, linear to ``n_sites`` logits), trained through :func:`grad_reverse` so that the anatomy
  encoder learns features from which the site cannot be told.
- :class:`CovariateHead`: the optional biological-preservation head, a pooled head on the bottleneck
  (with batch normalisation of the pooled features) regressing the scan's standardised covariates (age,
  sex...) *without* gradient reversal, so the anatomy features keep what predicts them; it holds the
  training means and standard deviations the covariates were standardised with (``mean``, ``scale``).
- The adversarial critic is :class:`surfharm.models.image2d.PatchDiscriminator`.

:class:`ContrastAugment` draws the random contrast transformations of the self-supervision: per slice
and per contrast, a random monotone intensity curve (a gamma curve whose piecewise-linear increments
are jittered, so every curve is increasing and maps 0 to 0) and, shared by the contrasts of a slice, a
smooth multiplicative bias field. Parameters come from a numpy generator (seeded by the trainer per
step), so training is reproducible and the same on every device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from surfharm.models.image2d import Encoder2d, UpBlock, norm_layer, stage_channels

# -- contrast augmentation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastAugment:
    """Settings of the random contrast transformations (see the module docstring).

    Attributes
    ----------
    max_gamma : gamma exponents are drawn log-uniformly in ``[1 / max_gamma, max_gamma]``.
    knots : segments of the piecewise-linear curve on ``[0, x_max]`` (beyond it: the last slope).
    jitter : standard deviation of the log of the random factor on each segment's increment
        (0: a pure gamma curve).
    x_max : end of the knotted range, in the normalised unit (tissue lies in about [0, 1]).
    bias_amplitude : standard deviation of the log bias field (0: none); the field is
        ``exp(sum of cosines of order <= bias_order)`` over the slice, the same for every contrast.
    bias_order : highest cosine order of the bias field on each in-plane axis.
    """

    max_gamma: float = 2.0
    knots: int = 6
    jitter: float = 0.3
    x_max: float = 1.5
    bias_amplitude: float = 0.15
    bias_order: int = 2

    def __post_init__(self):
        if not (self.max_gamma >= 1 and np.isfinite(self.max_gamma)):
            raise ValueError(f"max_gamma must be a finite number >= 1, got {self.max_gamma!r}")
        if isinstance(self.knots, bool) or not isinstance(self.knots, (int, np.integer)) or self.knots < 1:
            raise ValueError(f"knots must be a positive int, got {self.knots!r}")
        for name in ("jitter", "bias_amplitude"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.x_max > 0:
            raise ValueError(f"x_max must be > 0, got {self.x_max!r}")

    def draw(self, rng: np.random.Generator, batch: int, n_contrasts: int) -> "ContrastTransform":
        """``batch`` random transformations of ``n_contrasts`` contrasts each."""
        k = int(self.knots)
        x = np.linspace(0.0, self.x_max, k + 1)
        gamma = np.exp(rng.uniform(-np.log(self.max_gamma), np.log(self.max_gamma), (batch, n_contrasts, 1)))
        base = np.diff(x ** gamma, axis=-1)                           # (B, C, k) increments of x ** gamma
        steps = base * np.exp(self.jitter * rng.standard_normal(base.shape))
        y = np.concatenate([np.zeros((batch, n_contrasts, 1)), np.cumsum(steps, axis=-1)], axis=-1)
        y /= _value_at_one(x, y)                                      # keep 1 -> 1: the normalised unit
        order = int(self.bias_order) + 1
        bias = self.bias_amplitude * rng.standard_normal((batch, order, order)) / order
        bias[:, 0, 0] = 0.0                                           # a field, not a gain
        return ContrastTransform(knots_x=x.astype(np.float32), knots_y=y.astype(np.float32),
                                 bias=bias.astype(np.float32))


def _value_at_one(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The curves ``y`` (B, C, k + 1) on knots ``x`` evaluated at 1.0: (B, C, 1)."""
    i = min(int(np.searchsorted(x, 1.0, side="right")) - 1, len(x) - 2)
    t = (1.0 - x[i]) / (x[i + 1] - x[i])
    return (y[..., i] + t * (y[..., i + 1] - y[..., i]))[..., None]


@dataclass
class ContrastTransform:
    """A batch of drawn contrast transformations (numpy parameters; :meth:`apply` runs in torch).

    knots_x : (k + 1,) knot positions;  knots_y : (B, C, k + 1) increasing curve values at the knots;
    bias : (B, order, order) cosine coefficients of the log bias field.
    """

    knots_x: np.ndarray
    knots_y: np.ndarray
    bias: np.ndarray

    def curve(self, images: torch.Tensor, contrast_of_channel) -> torch.Tensor:
        """The monotone curves alone: ``images`` (B, C_in, H, W) with channel ``i`` taken through the curve
        of contrast ``contrast_of_channel[i]``."""
        x = torch.as_tensor(self.knots_x, device=images.device, dtype=images.dtype)
        y = torch.as_tensor(self.knots_y, device=images.device, dtype=images.dtype)
        y = y[:, torch.as_tensor(np.asarray(contrast_of_channel), device=images.device)]   # (B, C_in, k + 1)
        slope = (y[..., 1:] - y[..., :-1]) / (x[1:] - x[:-1])                            # (B, C_in, k)
        dx = x[1] - x[0]
        seg = (images / dx).floor().clamp(0, len(x) - 2).long()                         # (B, C_in, H, W)
        flat = seg.flatten(2)
        y0 = torch.gather(y[..., :-1], 2, flat).view_as(images)
        s = torch.gather(slope, 2, flat).view_as(images)
        return y0 + s * (images - x[seg])

    def field(self, shape, device, dtype=torch.float32) -> torch.Tensor:
        """The multiplicative bias fields (B, 1, H, W) of a slice size ``shape`` (H, W)."""
        order = self.bias.shape[1]
        u = torch.linspace(0, 1, shape[0], device=device, dtype=dtype)
        v = torch.linspace(0, 1, shape[1], device=device, dtype=dtype)
        freq = torch.arange(order, device=device, dtype=dtype) * np.pi
        cu, cv = torch.cos(freq[:, None] * u), torch.cos(freq[:, None] * v)             # (order, H), (order, W)
        coef = torch.as_tensor(self.bias, device=device, dtype=dtype)
        return torch.exp(torch.einsum("bij,ih,jw->bhw", coef, cu, cv))[:, None]

    def apply(self, images: torch.Tensor, contrast_of_channel, masks: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` (B, C_in, H, W) >= 0 -> curve, times the bias field, 0 outside ``masks`` (B, H, W)."""
        out = self.curve(images.clamp_min(0), contrast_of_channel) * self.field(images.shape[-2:], images.device,
                                                                                  images.dtype)
        return out if masks is None else out * masks[:, None].to(out.dtype)


# -- networks ------------------------------------------------------------------------------------------------


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-weight`` on the way back (gradient reversal)."""
    return _GradReverse.apply(x, float(weight))


class AnatomyEncoder(Encoder2d):
    """Contracting path on slice S1: ``(B, C_in, H, W)`` -> every stage's features (last: bottleneck)."""

    def __init__(self, in_channels: int, depth: int = 3, base_channels: int = 16, norm: str = "instance"):
        super().__init__(in_channels, depth, base_channels, norm)


class ContrastEncoder(nn.Module):
    """Slice S2 -> ``(mu, logvar)``, each ``(B, code_dim)``; holds the sites' mean codes ``site_codes``."""

    def __init__(self, in_channels: int, n_sites: int, code_dim: int = 8, depth: int = 3, base_channels: int = 16,
                 norm: str = "instance"):
        super().__init__()
        self.code_dim = int(code_dim)
        self.encoder = Encoder2d(in_channels, depth, base_channels, norm, out_features=2 * self.code_dim)
        self.register_buffer("site_codes", torch.zeros(int(n_sites), self.code_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        return out[:, :self.code_dim], out[:, self.code_dim:].clamp(-10, 10)


class _Modulation(nn.Module):
    """Feature-wise affine modulation by the contrast code: ``x * (1 + scale(z)) + shift(z)``."""

    def __init__(self, code_dim: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(z)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class ContrastDecoder(nn.Module):
    """Anatomy features + contrast code ``z`` (B, code_dim) -> ``(B, out_channels, H, W)``."""

    def __init__(self, out_channels: int, code_dim: int = 8, depth: int = 3, base_channels: int = 16,
                 norm: str = "instance"):
        super().__init__()
        ch = stage_channels(base_channels, depth)
        self.fuse = nn.Sequential(nn.Conv2d(ch[-1] + code_dim, ch[-1], 1), norm_layer(norm, ch[-1]),
                                  nn.LeakyReLU(0.2))
        self.fuse_mod = _Modulation(code_dim, ch[-1])
        self.up = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i], norm) for i in reversed(range(depth)))
        self.mods = nn.ModuleList(_Modulation(code_dim, ch[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        x = feats[-1]
        tiled = z[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        x = self.fuse_mod(self.fuse(torch.cat([x, tiled.to(x.dtype)], dim=1)), z)
        for block, mod, skip in zip(self.up, self.mods, reversed(feats[:-1])):
            x = mod(block(x, skip), z)
        return self.out(x)


class SiteClassifier(nn.Module):
    """Bottleneck features ``(B, channels, h, w)`` -> site logits ``(B, n_sites)``."""

    def __init__(self, channels: int, n_sites: int, hidden: int = 32):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.LeakyReLU(0.2))
        self.linear = nn.Linear(hidden, int(n_sites))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.conv(feats).mean(dim=(2, 3)))


class CovariateHead(nn.Module):
    """Bottleneck features ``(B, channels, h, w)`` -> standardised covariates ``(B, n_covariates)``.

    A 3x3 convolution, global average pool, batch normalisation (no affine part) and one linear output
    per covariate (a regression). The anatomy bottleneck is instance-normalised, so its pooled features
    differ little from slice to slice (a standard deviation of 0.016 over the slices of the simulated
    cohort); normalising them over the batch lets the linear layer learn at the optimiser's step size
    (without it the head's loss stayed at that of predicting the mean over 600 steps). Batch statistics
    need training batches of 2 slices or more. The buffers ``mean`` and ``scale`` ``(n_covariates,)``
    hold the training covariates' means and standard deviations (set by the trainer, saved with the
    weights): :meth:`to_units` turns a prediction back into the covariates' own units.
    """

    def __init__(self, channels: int, n_covariates: int, hidden: int = 32):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.LeakyReLU(0.2))
        self.norm = nn.BatchNorm1d(hidden, affine=False)
        self.linear = nn.Linear(hidden, int(n_covariates))
        self.register_buffer("mean", torch.zeros(int(n_covariates)))
        self.register_buffer("scale", torch.ones(int(n_covariates)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.conv(feats).mean(dim=(2, 3))))

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        """Covariates ``(B, n_covariates)`` in their own units -> the standardised targets of the head."""
        return (values - self.mean) / self.scale

    def to_units(self, predicted: torch.Tensor) -> torch.Tensor:
        """Standardised predictions ``(B, n_covariates)`` -> the covariates' own units."""
        return predicted * self.scale + self.mean


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the code, averaged over the batch: a scalar."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()


__all__ = ["AnatomyEncoder", "ContrastAugment", "ContrastDecoder", "ContrastEncoder", "ContrastTransform",
           "CovariateHead", "SiteClassifier", "grad_reverse", "kl_divergence"]
