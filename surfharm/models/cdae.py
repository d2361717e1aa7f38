"""Networks and losses of CDAE (Zhao et al., MICCAI 2023): a cycle-consistent adversarial autoencoder
that separates the site-invariant content of a cortical map from its scanner's appearance.

Every module takes channels-first tensors ``(B, C, V)`` on an icosahedral mesh (FreeSurfer order);
vertices outside cortex are zero in the inputs and left out of the losses by a ``(B, V)`` mask.

With ``base_channels = 32`` and maps at level 6 (40962 vertices) the widths are the authors':

* :class:`InvariantEncoder`: 1-ring convolution blocks with mean pooling, 32 -> 64 -> 128 -> 256
  channels, ending at level 3 (642 vertices x 256);
* :class:`ScannerEncoder`: 8 -> 16 -> ... -> 256 channels down to level 1 (42 vertices), averaged over
  channels to a 42-vector, then ``Linear(42, n_sites)``: one logit per scanner (a sigmoid gives the
  scanner probabilities);
* :class:`CodeDecoder`: the one-hot scanner code repeated at every vertex and concatenated with the
  invariant features, transposed convolutions back to the input level (GroupNorm, LeakyReLU 0.2);
* :class:`SiteClassifier` (the adversary on the invariant features): pooling one level, 1-ring
  convolutions 256 -> 32 -> n_sites, then fully connected ``V * n_sites -> 256 -> 32 -> n_sites``.

Every width scales with ``base_channels`` (the authors' ratios); at levels below the authors' the
encoders stop at level 0 (fewer pooling steps).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from spherical_ops.mesh import n_vertices
from spherical_ops.nn import GroupNormLeakyReLU, IcoConv, IcoPool, IcoUpConv, PointwiseLinear, check_input
from surfharm.models.losses import masked_l1, masked_pearson

#: Pooling steps of the invariant encoder and of the scanner encoder at full depth (the authors').
INVARIANT_DOWN, SCANNER_DOWN = 3, 5


def _act(channels: int) -> nn.Module:
    return GroupNormLeakyReLU(math.gcd(4, channels), channels)


class _Block(nn.Sequential):
    """2 x (IcoConv, GroupNorm, LeakyReLU 0.2) at one level."""

    def __init__(self, in_channels: int, out_channels: int, level: int):
        super().__init__(IcoConv(in_channels, out_channels, level), _act(out_channels),
                         IcoConv(out_channels, out_channels, level), _act(out_channels))


def _encoder(in_channels: int, level: int, widths: list[int]) -> tuple[nn.Sequential, int]:
    """Blocks of ``widths`` with a pooling before each but the first; returns (module, final level)."""
    layers: list[nn.Module] = []
    current, width = level, in_channels
    for i, out in enumerate(widths):
        if i:
            layers.append(IcoPool(current))
            current -= 1
        layers.append(_Block(width, out, current))
        width = out
    return nn.Sequential(*layers), current


class InvariantEncoder(nn.Module):
    """Site-invariant content of the maps.

    Shapes: x (B, in_channels, V(level)) -> (B, 8 * base_channels, V(bottleneck_level)), with
    ``bottleneck_level = level - min(3, level)``.
    """

    def __init__(self, in_channels: int, level: int, base_channels: int = 32):
        super().__init__()
        self.in_channels, self.level = int(in_channels), int(level)
        n_down = min(INVARIANT_DOWN, self.level)
        self.widths = [base_channels * 2 ** i for i in range(INVARIANT_DOWN + 1)]
        self.widths = self.widths[:1] + self.widths[INVARIANT_DOWN + 1 - n_down:]   # always ends at 8 x base
        self.net, self.bottleneck_level = _encoder(self.in_channels, self.level, self.widths)
        self.out_channels = self.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "InvariantEncoder")
        return self.net(x)


class ScannerEncoder(nn.Module):
    """Which scanner a map looks like: one logit per scanner.

    Shapes: x (B, in_channels, V(level)) -> (B, n_sites) logits.
    """

    def __init__(self, in_channels: int, level: int, n_sites: int, base_channels: int = 32):
        super().__init__()
        self.in_channels, self.level = int(in_channels), int(level)
        n_down = min(SCANNER_DOWN, self.level)
        first = max(1, base_channels // 4)
        widths = [first * 2 ** i for i in range(SCANNER_DOWN + 1)]
        widths = widths[:1] + widths[SCANNER_DOWN + 1 - n_down:]
        self.net, self.code_level = _encoder(self.in_channels, self.level, widths)
        self.fc = nn.Linear(n_vertices(self.code_level), int(n_sites))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "ScannerEncoder")
        return self.fc(self.net(x).mean(dim=1))


class CodeDecoder(nn.Module):
    """Maps from invariant features and a scanner code.

    Shapes: features (B, F, V(bottleneck)), code (B, n_sites) -> (B, out_channels, V(level)).
    """

    def __init__(self, widths: list[int], bottleneck_level: int, n_sites: int, out_channels: int):
        super().__init__()
        self.n_sites, self.bottleneck_level = int(n_sites), int(bottleneck_level)
        widths = list(reversed(widths))                         # coarse to fine: 256, 128, 64, 32
        self.head_in = _Block(widths[0] + self.n_sites, widths[0], self.bottleneck_level)
        self.up = nn.ModuleList()
        level = self.bottleneck_level
        for wide, narrow in zip(widths[:-1], widths[1:]):
            self.up.append(nn.ModuleList([IcoUpConv(wide, narrow, level), _act(narrow),
                                          IcoConv(narrow, narrow, level + 1), _act(narrow)]))
            level += 1
        self.level = level
        self.head = PointwiseLinear(widths[-1], int(out_channels))

    def forward(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        tiled = code.to(features.dtype)[:, :, None].expand(-1, -1, features.shape[2])
        x = self.head_in[0](features, tiled)                    # conv of the concatenation, never formed
        for layer in list(self.head_in)[1:]:
            x = layer(x)
        for layers in self.up:
            for layer in layers:
                x = layer(x)
        return self.head(x)


class SiteClassifier(nn.Module):
    """The adversary: which scanner invariant features came from (logits).

    Shapes: features (B, F, V(bottleneck)) -> (B, n_sites).
    """

    def __init__(self, in_channels: int, level: int, n_sites: int, base_channels: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        if level >= 1:
            layers.append(IcoPool(level))
            level -= 1
        k = int(n_sites)
        layers += [IcoConv(in_channels, base_channels, level), nn.LeakyReLU(0.2),
                   IcoConv(base_channels, k, level), nn.LeakyReLU(0.2)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(n_vertices(level) * k, 8 * base_channels), nn.LeakyReLU(0.2),
                                nn.Linear(8 * base_channels, base_channels), nn.LeakyReLU(0.2),
                                nn.Linear(base_channels, k))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(features).reshape(features.shape[0], -1))


class CDAENetwork(nn.Module):
    """The three networks a harmonized map needs (the adversary is apart: :class:`SiteClassifier`).

    Parameters
    ----------
    in_channels : int
        map channels (thickness; optionally sulc, curv): all are reconstructed.
    level : int
        icosahedral level of the maps.
    n_sites : int
        scanners seen in training (length of the one-hot code).
    base_channels : int
        32 for the authors' widths.
    """

    def __init__(self, in_channels: int, level: int, n_sites: int, base_channels: int = 32):
        super().__init__()
        self.in_channels, self.level, self.n_sites = int(in_channels), int(level), int(n_sites)
        self.invariant = InvariantEncoder(in_channels, level, base_channels)
        self.scanner = ScannerEncoder(in_channels, level, n_sites, base_channels)
        self.decoder = CodeDecoder(self.invariant.widths, self.invariant.bottleneck_level, n_sites, in_channels)

    def code(self, sites: torch.Tensor) -> torch.Tensor:
        """(B,) site indices -> (B, n_sites) one-hot codes."""
        return F.one_hot(sites.long(), self.n_sites).float()

    def forward(self, x: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None = None,
                keep: torch.Tensor | None = None):
        """Maps ``x`` (B, C, V) decoded with the codes of ``target`` (B,) site indices: (B, C, V).

        With ``source`` (the scans' own site indices) and ``keep`` ((B, 1, V), 1 inside cortex): the whole
        training pass, a dict of the invariant ``features``, the reconstruction ``rec``, the scanner
        logits ``scanner_real`` and ``scanner_fake``, the ``mapped`` maps, their re-encoded
        ``features_mapped`` and the ``cycle`` back to the source code (maps masked by ``keep``).
        """
        if source is None:
            return self.decoder(self.invariant(x), self.code(target))
        features = self.invariant(x)
        mapped = self.decoder(features, self.code(target)) * keep
        features_mapped = self.invariant(mapped)
        return {"features": features, "rec": self.decoder(features, self.code(source)) * keep,
                "scanner_real": self.scanner(x), "mapped": mapped, "scanner_fake": self.scanner(mapped),
                "features_mapped": features_mapped,
                "cycle": self.decoder(features_mapped, self.code(source)) * keep}


# -- losses ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CDAEWeights:
    """The authors' loss weights (see :mod:`surfharm.harmonize.cdae`)."""

    reconstruction: float = 1.0
    reconstruction_mse: float = 3.0      # reconstruction and cycle: L1 + 3 x MSE
    scanner: float = 0.9                 # scanner encoder's BCE on real maps (class-frequency weighted)
    adversary: float = 0.5               # the site classifier's own BCE
    encoder_adversarial: float = 0.4     # invariant encoder's BCE toward 0.5
    fake_scanner: float = 0.7            # mapped maps must look like the target scanner
    latent: float = 4.0                  # re-encoding consistency: L1 + 10 x MSE
    latent_mse: float = 10.0
    correlation: float = 10.0            # 1 - r(x, mapped)
    cycle: float = 0.5                   # back to the source: L1 + 3 x MSE
    distance_correlation: float = 3.0    # 1 - r(x^2, mapped^2)

    def to_dict(self) -> dict:
        return asdict(self)


def masked_mse_per_scan(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over each scan's masked vertices and channels: (B,)."""
    weight = mask[:, None, :].to(torch.float32)
    total = ((a.float() - b.float()).square() * weight).sum(dim=(1, 2))
    return total / (weight.sum(dim=(1, 2)) * a.shape[1]).clamp_min(1)


def masked_l1_per_scan(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over each scan's masked vertices and channels: (B,)."""
    return torch.stack([masked_l1(a[i:i + 1], b[i:i + 1], mask[i:i + 1]) for i in range(a.shape[0])])


def pearson_per_scan(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson r between ``a`` and ``b`` (B, C, V) over each scan's mask, averaged over channels: (B,)."""
    batch, channels, _ = a.shape
    flat = masked_pearson(a.reshape(batch * channels, 1, -1), b.reshape(batch * channels, 1, -1),
                          mask.repeat_interleave(channels, dim=0))
    return flat.reshape(batch, channels).mean(dim=1)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) against ``target`` (B, K), per scan (B,), times ``weight`` (B,)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean(dim=1)
    return loss if weight is None else loss * weight
