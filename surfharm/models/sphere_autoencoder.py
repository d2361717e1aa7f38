"""A spherical convolutional autoencoder of single-channel vertex maps (DeepComBat's ``"sphere"`` front end).

The maps (z-scored per vertex, missing vertices as 0) are compressed on their icosahedral mesh
(:mod:`spherical_ops`, FreeSurfer order) to a few channels at a coarse level, and decoded back:

* encoder: ``IcoConv(1 -> w_0)`` at the map's level, then per coarser level mean pooling
  (:class:`~spherical_ops.IcoPool`) and ``IcoConv(w_{i-1} -> w_i)``, each followed by LeakyReLU 0.2;
  a last linear ``IcoConv(w_d -> c)`` at the bottleneck level gives the code
  (``c`` channels x ``V(bottleneck_level)`` vertices: 4 x 642 = 2568 features at level 3);
* decoder: ``IcoConv(c -> w_d)``, then per finer level a transposed convolution
  (:class:`~spherical_ops.IcoUpConv`) and ``IcoConv``, each followed by LeakyReLU 0.2; a last linear
  ``IcoConv(w_0 -> 1)``.

No normalisation layer: GroupNorm would remove each scan's mean over the vertices, which is the
largest site effect there is. The network never sees the site (trained to reconstruct the maps of
every site alike). Its size does not depend on the map's level beyond one more pooling step per
level, and the activations of a batch scale with the vertices: a batch of 16 scans at level 7
(163842 vertices) holds a few hundred MB.

:func:`train_autoencoder` trains it with Adam on the masked mean squared error; batches are a
function of (seed, epoch), so training is deterministic on CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spherical_ops.mesh import level_of, n_vertices
from spherical_ops.nn import IcoConv, IcoPool, IcoUpConv, check_input

#: Channels at the finest level; doubled per pooling step up to :data:`MAX_WIDTH`.
BASE_WIDTH, MAX_WIDTH = 8, 32


def default_widths(level: int, bottleneck_level: int) -> list[int]:
    """Hidden channels per level from ``level`` down to ``bottleneck_level``: 8, 16, 32, 32, ..."""
    return [min(BASE_WIDTH * 2 ** i, MAX_WIDTH) for i in range(level - bottleneck_level + 1)]


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class SphereAutoencoder(nn.Module):
    """Spherical convolutional autoencoder of one-channel maps.

    Parameters
    ----------
    level : int
        icosahedral level of the maps (V = 10 * 4**level + 2 vertices).
    bottleneck_level : int
        level of the code (0 <= bottleneck_level <= level).
    code_channels : int
        channels of the code.
    widths : list of int, optional
        hidden channels at each level from ``level`` to ``bottleneck_level`` (default
        :func:`default_widths`).

    Notes
    -----
    Shapes: maps ``x`` (B, V(level)); codes (B, code_channels * V(bottleneck_level)), channel-major
    (``code.view(B, code_channels, V(bottleneck_level))``).
    """

    def __init__(self, level: int, *, bottleneck_level: int = 3, code_channels: int = 4,
                 widths: list[int] | None = None):
        super().__init__()
        self.level, self.bottleneck_level, self.code_channels = int(level), int(bottleneck_level), int(code_channels)
        if not 0 <= self.bottleneck_level <= self.level:
            raise ValueError(f"bottleneck_level must be between 0 and the maps' level {self.level}, "
                             f"got {bottleneck_level}")
        if self.code_channels < 1:
            raise ValueError(f"code_channels must be a positive int, got {code_channels!r}")
        self.widths = list(widths) if widths is not None else default_widths(self.level, self.bottleneck_level)
        if len(self.widths) != self.level - self.bottleneck_level + 1:
            raise ValueError(f"widths must have one entry per level from {self.level} to {self.bottleneck_level} "
                             f"({self.level - self.bottleneck_level + 1}), got {self.widths}")
        w = self.widths
        levels = [self.level - i for i in range(len(w))]
        enc: list[nn.Module] = [IcoConv(1, w[0], levels[0]), _act()]
        for i in range(1, len(w)):
            enc += [IcoPool(levels[i - 1]), IcoConv(w[i - 1], w[i], levels[i]), _act()]
        enc.append(IcoConv(w[-1], self.code_channels, levels[-1]))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [IcoConv(self.code_channels, w[-1], levels[-1]), _act()]
        for i in reversed(range(1, len(w))):
            dec += [IcoUpConv(w[i], w[i - 1], levels[i]), _act(), IcoConv(w[i - 1], w[i - 1], levels[i - 1]), _act()]
        dec.append(IcoConv(w[0], 1, levels[0]))
        self.decoder = nn.Sequential(*dec)

    @property
    def n_vertices(self) -> int:
        return n_vertices(self.level)

    @property
    def code_size(self) -> int:
        """Features of a code: ``code_channels * V(bottleneck_level)``."""
        return self.code_channels * n_vertices(self.bottleneck_level)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V) maps -> (B, code_size) codes."""
        check_input(x[:, None], 1, self.level, "SphereAutoencoder")
        return self.encoder(x[:, None]).reshape(x.shape[0], -1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """(B, code_size) codes -> (B, V) maps."""
        if code.dim() != 2 or code.shape[1] != self.code_size:
            raise ValueError(f"SphereAutoencoder.decode expects codes of shape (B, {self.code_size}), "
                             f"got {tuple(code.shape)}")
        grid = code.reshape(code.shape[0], self.code_channels, n_vertices(self.bottleneck_level))
        return self.decoder(grid)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def config(self) -> dict:
        """The constructor's arguments (JSON-serialisable), to rebuild the network from a model file."""
        return {"level": self.level, "bottleneck_level": self.bottleneck_level, "code_channels": self.code_channels,
                "widths": list(self.widths)}


def map_level(n_features: int) -> int:
    """Icosahedral level of maps with ``n_features`` vertices (ValueError when it is no icosphere's)."""
    return level_of(int(n_features))


def train_autoencoder(network: SphereAutoencoder, Z: np.ndarray, *, epochs: int, lr: float, batch_size: int,
                      seed: int, device: torch.device, progress: bool = False) -> list[dict[str, float]]:
    """Train ``network`` to reconstruct ``Z`` (n_scans, V) z-scored maps (NaN: missing, left out of the loss).

    Loss: mean squared error over the observed vertices of a batch; Adam at ``lr``; batches of
    ``batch_size`` scans in an order drawn from ``(seed, epoch)``. Returns the per-epoch history
    ``{"epoch", "mse"}`` (mean over the epoch's scans). The network is left in eval mode on the CPU.

    Raises :class:`surfharm.training.trainer.TrainingDivergedError` on a non-finite loss.
    """
    from surfharm._progress import progress_bar
    from surfharm.training.trainer import TrainingDivergedError

    network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=float(lr))
    n = Z.shape[0]
    history: list[dict[str, float]] = []
    bar = progress_bar(bool(progress), total=int(epochs), desc="DeepComBat sphere front end", unit="epoch")
    try:
        for epoch in range(int(epochs)):
            order = np.random.default_rng((int(seed), 1, epoch)).permutation(n)
            total, count = 0.0, 0
            for start in range(0, n, int(batch_size)):
                rows = np.sort(order[start:start + int(batch_size)])
                block = np.asarray(Z[rows], dtype=np.float32)
                observed = torch.as_tensor(np.isfinite(block), device=device)
                x = torch.as_tensor(np.nan_to_num(block), device=device)
                diff = torch.where(observed, network(x) - x, torch.zeros((), device=device))
                loss = (diff * diff).sum() / observed.sum().clamp(min=1)
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise TrainingDivergedError(
                        f"DeepComBat's sphere front end stopped in epoch {epoch}: non-finite reconstruction "
                        f"loss ({value}). Lower its learning rate (now {lr:g}) or check the maps for extreme values")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += value * len(rows)
                count += len(rows)
            history.append({"epoch": epoch + 1, "mse": total / max(count, 1)})
            bar.update(1)
            bar.set_postfix({"mse": f"{total / max(count, 1):.3f}"})
    finally:
        bar.close()
        network.cpu().eval()
    return history


def apply_in_batches(function, A: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``function`` (a network method, torch in and out) over the rows of ``A`` in batches, without
    gradients; float64 result (n_rows, ...)."""
    out = []
    with torch.no_grad():
        for start in range(0, A.shape[0], batch_size):
            x = torch.as_tensor(np.ascontiguousarray(A[start:start + batch_size]), dtype=torch.float32)
            out.append(function(x).double().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0,))
