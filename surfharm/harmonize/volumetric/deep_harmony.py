"""DeepHarmony (Dewey et al., Magn Reson Imaging 2019): paired U-Nets from every scanner to a target scanner.

DeepHarmony learns the mapping between two acquisition protocols from an overlap cohort scanned on both
(8 people in the paper): a U-Net takes a slice of every contrast of a scan on the source protocol
(T1, FLAIR, T2/PD in the paper) and outputs every contrast as the target protocol would have shown
them; it is a supervised image-to-image mapping, learned voxel for voxel.

Here, with K >= 2 sites: one U-Net per site other than the target (``target_site``, default the first
site in sorted order), trained on the slices of *traveling subjects*: every subject (``subjects=``)
scanned on both that site and the target gives pairs of slices at the same position. Pairs are matched
voxel for voxel, so a subject's scans must be co-registered to one grid (the simulated cohorts of
:mod:`surfharm.simulate.volumes` are all on one template grid; real scans must be registered first,
e.g. rigidly to the target session, and given the same brain mask). Scans of subjects without a
partner are not used for training, but are harmonized by ``transform``.

Network (:class:`surfharm.models.image2d.UNet2d`): strided 3x3 convolutions down, transposed 2x2
convolutions up, skip concatenations, and DeepHarmony's final concatenation of the input contrasts with
the last feature map before the 1x1 output convolution, so the network learns a correction of the input
rather than a reconstruction of it. All contrasts in (with ``context`` neighbour slices each side), all
contrasts out.

Training: masked L1 between the mapped source slice and the target's slice (inside both scans' masks),
Adam; each step takes ``batch_size`` pairs of every source site. The paper's loss, optimiser settings,
U-Net width and slice size are not in our reference notes, so these are this implementation's choices:
L1, Adam lr 1e-3, a U-Net of depth 3 from 16 channels with instance normalisation (it behaves the
same in training and inference, where batch statistics of small slice batches made early models
unstable), 2-D slices (``context=0``), 2000 steps; on a CPU and the 4 mm simulated cohort, 150 steps of
depth 3, 8 channels already beat the identity (tests/harmonize/test_deep_images.py). Inputs and outputs are in
the per-scan normalised unit (in-mask 99th percentile), and outputs are returned in the target site's
unit (:mod:`surfharm.harmonize.volumetric.deep`).

Targets: only the fitted ``target_site``; target-site scans are returned unchanged; unseen sites are refused.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surfharm.harmonize.base import register
from surfharm.harmonize.volumetric import slices as sl
from surfharm.harmonize.volumetric.deep import (DeepImageHarmonizer, SliceData, SliceTrainer, SliceTrainingConfig,
                                                masked_l1)
from surfharm.models.image2d import UNet2d


def _key(site: int) -> str:
    """Name of the U-Net of site index ``site`` in the networks' ModuleDict."""
    return f"site{site}"


class DeepHarmonyTrainer(SliceTrainer):
    """Train one U-Net per source site on matched slice pairs (see the module docstring).

    Each step draws ``batch_size`` pairs of every source site (one stream per site, so every network
    is used in every step, which DistributedDataParallel needs) and minimises the mean of the
    sites' masked L1 losses.
    """

    checkpoint_format = "surfharm-deepharmony-checkpoint"
    loss_names = ("loss",)
    progress_desc = "DeepHarmony"
    progress_keys = ("loss",)

    def __init__(self, config: SliceTrainingConfig, networks: nn.ModuleDict, data: SliceData, **run):
        super().__init__(config, networks, data, **run)
        self.sources = [k for k in range(data.n_sites) if k != data.target]
        self.pairs = {k: data.matched_rows([k, data.target]) for k in self.sources}
        empty = [k for k, p in self.pairs.items() if not len(p)]
        if empty:
            raise ValueError(f"site indices {empty} have no slice matched with the target's")
        self.n_pairs = sum(len(p) for p in self.pairs.values())

    @property
    def epoch_size(self) -> int:
        return max(len(p) for p in self.pairs.values())

    def train_step(self) -> dict[str, float]:
        lr = self.lr_at(self.step)
        self._set_lr(lr)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        centre = self.data.centre.to(self.device)
        losses = []
        for k in self.sources:
            pairs = self.rows(self.step, self.pairs[k], stream=k)
            x, mx, _ = self.batch(pairs[:, 0])
            y, my, _ = self.batch(pairs[:, 1])
            with self._autocast():
                pred = self.ddp[_key(k)](x)
            losses.append(masked_l1(pred, y[:, centre], mx & my))
        loss = torch.stack(losses).mean()
        loss.backward()
        return self._finish_step(loss[None], lr)


@register("deepharmony")
class DeepHarmony(DeepImageHarmonizer):
    """DeepHarmony: supervised U-Nets from every site to ``target_site``, trained on traveling subjects.

    Parameters
    ----------
    contrasts : tuple of str
        The contrasts of every scan (all in, all out), e.g. ``("t1", "flair", "t2")``.
    target_site : site label or None
        The site every other is mapped to; None: the first site in sorted order.
    depth : int
        Halvings of the U-Net (slices are zero-padded to multiples of ``2 ** depth``).
    base_channels : int
        Channels of the U-Net's first stage (doubled at each halving).
    norm : "instance", "batch" or "none"
        Normalisation of the convolution blocks (see the module docstring).
    slice_axis, context, percentile, steps, batch_size, lr, seed, device, progress, checkpoint,
    checkpoint_every, resume :
        As :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`'s; ``batch_size`` pairs of
        every source site per step.

    Learned attributes: those of :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`;
    ``networks_`` holds one :class:`~surfharm.models.image2d.UNet2d` per source site (``"site<k>"``,
    ``k`` its index in ``sites_``); ``n_pairs_``: matched slice pairs trained on.
    """

    model_format = "surfharm-deepharmony"
    needs_pairs = True
    min_contrasts = 1
    supports_unseen_sites = False
    maps_to_any_site = False
    required_side_data = ("subjects",)

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, depth: int = 3, base_channels: int = 16,
                 norm: str = "instance", slice_axis: int = 2, context: int = 0,
                 percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 2000, batch_size: int = 8,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = False, checkpoint=None,
                 checkpoint_every: int = 0, resume: bool = False):
        super().__init__(contrasts=contrasts, target_site=target_site, slice_axis=slice_axis, context=context,
                         percentile=percentile, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        self.depth = depth
        self.base_channels = base_channels
        self.norm = norm

    def network_config(self) -> dict[str, Any]:
        return {"in_channels": self.n_in_channels_, "out_channels": len(self.contrasts_), "depth": int(self.depth),
                "base_channels": int(self.base_channels), "norm": self.norm,
                "sources": [k for k in range(len(self.sites_)) if k != self.target_]}

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        return nn.ModuleDict({_key(k): UNet2d(config["in_channels"], config["out_channels"], depth=config["depth"],
                                              base_channels=config["base_channels"], norm=config["norm"],
                                              final_concat=True)
                              for k in config["sources"]})

    def make_trainer(self, config, networks, data, **run) -> DeepHarmonyTrainer:
        return DeepHarmonyTrainer(config, networks, data, **run)

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        return networks[_key(source)](images)


__all__ = ["DeepHarmony", "DeepHarmonyTrainer"]
