"""The training scans of one domain (site): :class:`DomainData`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class DomainData:
    """The training scans of one domain (site), already normalised.

    Attributes
    ----------
    maps : Tensor
        (n, in_channels, V) float32, z-scored per vertex, 0 outside the mask.
    mask : Tensor
        (n, V) bool, vertices inside cortex (the only ones in the losses).
    cond : Tensor or None
        (n, cond_channels) float32 conditioning values (standardised), or None.
    """

    maps: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor | None = None

    def __post_init__(self):
        if self.maps.dim() != 3 or self.mask.shape != (self.maps.shape[0], self.maps.shape[2]):
            raise ValueError(f"DomainData: maps must be (n, C, V) and mask (n, V); got {tuple(self.maps.shape)} "
                             f"and {tuple(self.mask.shape)}")
        if self.maps.shape[0] < 1:
            raise ValueError("DomainData: a domain needs at least one scan")

    def __len__(self) -> int:
        return self.maps.shape[0]

    def batch(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        index = torch.as_tensor(rows, dtype=torch.long)
        cond = None if self.cond is None else self.cond[index].to(device)
        return self.maps[index].to(device), self.mask[index].to(device), cond
