"""Networks of MISPEL on the sphere (:mod:`surfharm.harmonize.mispel_sphere`): per scanner an encoder to a
shared latent space and a linear per-vertex decoder back to that scanner's maps.

* :class:`SiteEncoders`: one spherical U-Net (:class:`spherical_ops.IcoUNet`, widths ``base_channels`` x 1,
  2, 4 with skips; 32-64-128 as published) per scanner, from the map's channels to ``latent_channels``
  (6 as published) per vertex.
* :class:`SiteDecoders`: one per-vertex linear map (:class:`spherical_ops.nn.PointwiseLinear`, a 1x1
  convolution: latent channels -> map channels) per scanner.

Every module takes channels-first tensors ``(B, C, V)`` on an icosahedral mesh with one site index per
scan. A batch need not hold scans of every scanner; the networks of the absent scanners still enter the
output with weight 0, so that a backward pass reaches every parameter (DistributedDataParallel needs it,
and a single process then steps exactly as several do).
"""
from __future__ import annotations

import torch
from torch import nn

from spherical_ops.nn import IcoUNet, PointwiseLinear

#: Resolution levels of each encoder (widths base, 2 base, 4 base: 32-64-128 as published).
ENCODER_DEPTH = 3


def _zero_touch(modules) -> torch.Tensor | float:
    """0 x (one weight of each module): adds the modules to the autograd graph with zero gradient."""
    terms = [p.reshape(-1)[:1].sum() * 0 for m in modules for p in m.parameters()]
    return torch.stack(terms).sum() if terms else 0.0


def _per_site(modules: nn.ModuleDict, x: torch.Tensor, sites: torch.Tensor, out_channels: int) -> torch.Tensor:
    """``modules[str(k)]`` applied to the rows of ``x`` whose site is k: (B, out_channels, V)."""
    out = x.new_zeros((x.shape[0], out_channels, x.shape[2]))
    present = set(torch.unique(sites).tolist())
    for k in sorted(present):
        rows = torch.nonzero(sites == k).flatten()
        out = out.index_copy(0, rows, modules[str(k)](x[rows]))
    absent = [modules[str(k)] for k in range(len(modules)) if k not in present]
    return out + _zero_touch(absent)


class SiteEncoders(nn.Module):
    """Per-scanner spherical U-Net encoders. Shapes: x (B, in_channels, V), sites (B,) -> (B, latent, V)."""

    def __init__(self, n_sites: int, in_channels: int, level: int, latent_channels: int = 6,
                 base_channels: int = 32):
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.nets = nn.ModuleDict({
            str(k): IcoUNet(in_channels, latent_channels, level, depth=min(ENCODER_DEPTH, level + 1),
                            base_channels=base_channels, norm="group") for k in range(int(n_sites))})

    def forward(self, x: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
        return _per_site(self.nets, x, sites, self.latent_channels)


class SiteDecoders(nn.Module):
    """Per-scanner linear per-vertex decoders.

    ``forward(latent (B, L, V), sites (B,))`` -> (B, C, V): each latent decoded by its own scanner's decoder
    (its scanner's *unit output*: MISPEL's harmonized map once step 2 has made the units agree).
    """

    def __init__(self, n_sites: int, latent_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = int(out_channels)
        self.nets = nn.ModuleDict({str(k): PointwiseLinear(latent_channels, out_channels)
                                   for k in range(int(n_sites))})

    def forward(self, latent: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
        return _per_site(self.nets, latent, sites, self.out_channels)


class MispelNetworks(nn.Module):
    """The encoders and decoders of every scanner (see the module docstring).

    ``forward(x (B, C, V), sites (B,))`` -> ``(latent (B, L, V), rec (B, C, V))``: each scan's latent and its
    own scanner's decoding of it. :meth:`harmonize` is what ``transform`` applies.
    """

    def __init__(self, n_sites: int, in_channels: int, level: int, latent_channels: int = 6,
                 base_channels: int = 32):
        super().__init__()
        self.encoders = SiteEncoders(n_sites, in_channels, level, latent_channels, base_channels)
        self.decoders = SiteDecoders(n_sites, latent_channels, in_channels)

    def forward(self, x: torch.Tensor, sites: torch.Tensor):
        latent = self.encoders(x, sites)
        return latent, self.decoders(latent, sites)

    def harmonize(self, x: torch.Tensor, sites: torch.Tensor, decoder: int | None = None) -> torch.Tensor:
        """Each scan's own scanner's encoder, then its own scanner's decoder (``decoder`` None, MISPEL's
        output) or the decoder of scanner index ``decoder``: (B, C, V)."""
        latent = self.encoders(x, sites)
        if decoder is None:
            return self.decoders(latent, sites)
        return self.decoders.nets[str(int(decoder))](latent)
