"""The image pool of CycleGAN/S2SGAN: the discriminator also sees older generated maps.

With probability 1/2 a generated map is swapped with a random stored one (which is returned), so
the discriminator does not chase the generator's latest output. Random draws come from a
generator seeded by (seed, step, position): resuming training at any step repeats them exactly, and
the pool's content is saved with the checkpoints (:meth:`ImagePool.state_tensors`).
"""
from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    """A pool of up to ``size`` generated maps; ``size`` 0 returns its input unchanged.

    Parameters
    ----------
    size : int
        number of maps kept (the authors use 20).
    seed : int
        seed of the random draws.
    """

    def __init__(self, size: int = 20, seed: int = 0):
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size, self.seed = int(size), int(seed)
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor, step: int, stream: int = 0) -> torch.Tensor:
        """Return a batch of the same shape: each map either ``batch``'s or a stored one.

        batch: (B, C, V) (detached inside); step, stream: make the draws reproducible.
        """
        batch = batch.detach()
        if self.size == 0:
            return batch
        rng = np.random.default_rng((self.seed, int(step), int(stream)))
        out = []
        for image in batch:
            image = image.clone()
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif rng.random() < 0.5:
                slot = int(rng.integers(len(self.images)))
                out.append(self.images[slot])
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The stored maps as ``{prefix: (n, C, V)}`` (empty dict when the pool is empty)."""
        return {prefix: torch.stack(self.images).cpu().contiguous()} if self.images else {}

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str, device=None) -> None:
        stored = tensors.get(prefix)
        self.images = [] if stored is None else [t.to(device) for t in stored.unbind(0)]
