"""Generator and discriminator of S2SGAN on the icosahedral sphere.

* :class:`SphericalGenerator`: a Spherical U-Net (:class:`spherical_ops.IcoUNet`) mapping the
  maps of one site to another's, optionally as a residual on the input map; conditioning channels
  (e.g. standardised age, constant over vertices) are appended to the input.
* :class:`SphericalDiscriminator`: ``n_down`` x (IcoConv, LeakyReLU, mean pooling) and a final
  IcoConv to one channel: a real/fake score per coarse-vertex patch (PatchGAN on the sphere), or
  their mean when ``global_score`` is set.
"""
from __future__ import annotations

import torch
from torch import nn

from spherical_ops.nn import IcoConv, IcoPool, IcoUNet, check_input


class SphericalGenerator(nn.Module):
    """Spherical U-Net generator.

    Parameters
    ----------
    in_channels : int
        map channels (thickness first; optionally sulc, curv).
    level : int
        icosahedral level of the maps (V = 10 * 4**level + 2 vertices).
    cond_channels : int
        conditioning channels (constant over vertices), e.g. 1 for age.
    depth, base_channels, ring : int
        of the U-Net (see :class:`spherical_ops.IcoUNet`).
    residual : bool
        predict a correction added to the input's first channel. The output layer starts
        at zero, so an untrained residual generator is the identity (in the per-site z-scored
        space this is per-vertex mean/std matching), and training departs from it.

    Notes
    -----
    Shapes:
        x (B, in_channels, V), cond (B, cond_channels) or None -> (B, 1, V).
    """

    def __init__(self, in_channels: int, level: int, *, cond_channels: int = 0, depth: int = 4,
                 base_channels: int = 16, ring: int = 1, residual: bool = True):
        super().__init__()
        self.in_channels, self.cond_channels, self.level = int(in_channels), int(cond_channels), int(level)
        self.residual = bool(residual)
        self.unet = IcoUNet(self.in_channels + self.cond_channels, 1, level, depth=depth,
                            base_channels=base_channels, norm="group", ring=ring)
        if self.residual:
            nn.init.zeros_(self.unet.head.weight)
            nn.init.zeros_(self.unet.head.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "SphericalGenerator")
        out = self.unet(_with_conditions(x, cond, self.cond_channels, "SphericalGenerator"))
        return x[:, :1] + out if self.residual else out


class SphericalDiscriminator(nn.Module):
    """Spherical CNN discriminator scoring how much a map looks like one site's.

    Parameters
    ----------
    in_channels : int
        map channels.
    cond_channels : int
        conditioning channels (as the generator's).
    level : int
        icosahedral level of the maps.
    n_down : int
        pooling steps (score at level ``level - n_down``).
    base_channels : int
        channels after the first convolution, doubled after each pooling.
    global_score : bool
        average the patch scores into one score per map.

    Notes
    -----
    Shapes:
        x (B, in_channels, V), cond (B, cond_channels) or None -> (B, 1, V(level - n_down)) or (B, 1).
    """

    def __init__(self, in_channels: int, level: int, *, cond_channels: int = 0, n_down: int = 3,
                 base_channels: int = 16, global_score: bool = False):
        super().__init__()
        if not 0 <= n_down <= level:
            raise ValueError(f"n_down must be between 0 and the level {level}, got {n_down}")
        self.in_channels, self.cond_channels, self.level = int(in_channels), int(cond_channels), int(level)
        self.global_score = bool(global_score)
        layers: list[nn.Module] = []
        width, current = self.in_channels + self.cond_channels, self.level
        for i in range(n_down):
            out = base_channels * 2 ** i
            layers += [IcoConv(width, out, current), nn.LeakyReLU(0.2), IcoPool(current)]
            width, current = out, current - 1
        layers += [IcoConv(width, width, current), nn.LeakyReLU(0.2), IcoConv(width, 1, current)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "SphericalDiscriminator")
        score = self.net(_with_conditions(x, cond, self.cond_channels, "SphericalDiscriminator"))
        return score.mean(dim=2) if self.global_score else score


def _with_conditions(x: torch.Tensor, cond: torch.Tensor | None, n_cond: int, layer: str) -> torch.Tensor:
    """Append ``cond`` (B, n_cond) as channels constant over vertices."""
    if n_cond == 0:
        if cond is not None and cond.numel():
            raise ValueError(f"{layer} was built without conditioning channels but got cond of shape "
                             f"{tuple(cond.shape)}")
        return x
    if cond is None or cond.shape != (x.shape[0], n_cond):
        got = None if cond is None else tuple(cond.shape)
        raise ValueError(f"{layer} expects cond of shape ({x.shape[0]}, {n_cond}), got {got}")
    return torch.cat([x, cond.to(x.dtype)[:, :, None].expand(-1, -1, x.shape[2])], dim=1)
