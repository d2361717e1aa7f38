"""MISPEL (Torbati et al. 2021/2023): a latent space shared by m scanners, learned from traveling subjects.

MISPEL (multi-scanner image harmonization via structure preserving embedding learning) learns, per
scanner, an encoder to a latent image and a linear decoder back to that scanner's images, from subjects
scanned on several scanners (traveling subjects), in two steps:

* **Step 1** (encoders and decoders): 1.0 x the variance, across scanners, of the latents of the same
  subject and slice + 0.3 x the L1 reconstruction of each scan from its own latent by its own scanner's
  decoder. The latents of one person become the same whatever the scanner.
* **Step 2** (encoders frozen, decoders only): 1.0 x L1 reconstruction + 4.0 x the mean pairwise L1
  between the scanners' harmonized images of the same subject and slice (each scan decoded by its own
  scanner's decoder, as published), so the decoders agree on one appearance while staying close to
  their scans.

Networks (per scanner, :mod:`surfharm.models.image2d`): a U-Net encoder (:class:`UNet2d`, widths
``base_channels`` x 1, 2, 4 with skips: 32-64-128 as published, ``depth=2`` halvings) from every contrast
of a slice (with ``context`` neighbours) to a ``latent_channels`` (6 published) latent image, and a
linear per-pixel decoder (a 1x1 convolution, latent -> contrasts). All contrasts in, all contrasts out.

Harmonizing a scan (``output``):

* ``"own"`` (default, as published): the scan's *own* scanner's unit, its encoder then its decoder. Step
  2 made the units' outputs of one subject agree, so every scanner's output is the shared appearance
  (not any one scanner's). Scans of the target scanner go through their own unit as well (they are not
  returned unchanged: the raw target scans are not in the shared appearance). ``target_site`` only sets
  the intensity unit of the outputs (the target scanner's, as for every method of this package).
* ``"target"``: the scan's scanner's encoder, then the decoder of the target scanner (``target_site``):
  every scan in the target's appearance, which is what the other image methods of this package return.
  Scans of the target scanner are returned unchanged (:mod:`surfharm.harmonize.volumetric.deep`).

Either way ``transform(..., target_site=...)`` picks another training scanner without refitting
(:attr:`Mispel.maps_to_any_site`). Scans of a scanner not seen in training are refused: both outputs
need that scanner's own encoder (``supports_unseen_sites`` is False).

Traveling subjects (``subjects=``): a subject seen on two or more scanners gives, at every slice position,
one *group* (its slice on each of those scanners). Every training scanner must share subjects with the
others so that all scanners' latent spaces are tied together: ``fit`` refuses scanners without a
traveling subject, and sets of scanners that share no subject with the rest, by name. Scans of subjects
seen once are not trained on (they only enter the intensity units), but are harmonized by ``transform``.
A subject's scans are matched voxel for voxel: they must be co-registered to one grid.

Optimisation: Adam, lr 0.01, batch 4 groups, as published; the published 100 epochs of each step (over
every slice of every traveling subject) are far beyond a CPU, so each step's length is a parameter in
optimisation steps: ``steps`` (step 1) and ``steps_2`` (step 2, default ``steps``), 300 each by default
(minutes per 100 steps on one CPU thread at the published widths; ``base_channels=8`` is several times faster).
The encoders and the decoders have one Adam each; the decoders' Adam starts afresh at step 2 (a new
optimisation). During step 2 the encoders run in evaluation mode without gradients, as in ``transform``.
Both steps are one run of one trainer (the step number says which), so a checkpoint written in step 1
resumes into step 2 exactly as an uninterrupted run. ``steps_2=0`` trains step 1 only. Normalisation of
the encoders' blocks (not in our reference notes): ``norm="instance"`` by default; batch normalisation
changes the latents when step 2 switches the encoders to evaluation mode (running statistics of batches
of 4 slices), and on the simulated cohort it harmonized worse after 300 + 300 steps.

Measured on CPU (3 scanners, 2 training traveling subjects, 4 mm grid, t1/t2/flair, 300 + 300 steps at
the published widths, about 8 minutes on one shared thread, ``output="target"``): the harmonized held-out
scans were *not* closer to the target scanner's scans than the identity (relative error 1.2 to 3 times
the identity's); step 1's reconstruction error was still falling. Expect MISPEL to need far longer
training (the published 100 + 100 epochs) before it helps.

``"own"`` against ``"target"`` (one fitted model, both outputs; ``benchmarks/bench_deep_images.py
--quick`` scenario, held-out traveling subjects against the target scanner's scan; SSIM / PSNR dB / MAE,
then volume CV and tissue Dice): at 150 + 150 steps 0.765 / 19.0 / 77 against 0.778 / 19.1 / 76, and
0.125 / 0.71 against 0.117 / 0.82; at the default 300 + 300 steps (two seeds) 0.82-0.85 / 23.0 / 48
against 0.84-0.87 / 21.7 / 60, and volume CV 0.02-0.03 against 0.15-0.19, Dice 0.83-0.85 against
0.81-0.83. ``"own"`` puts every scanner's scans in one appearance; what it costs is on the target
scanner's own scans, which now carry the networks' reconstruction error: the benchmark's errors
against the truth rise (MAE 0.044 against 0.037 at 300 steps) and its GM-intensity age slope falls
from about 0.7 of the truth's to about 0. The networks themselves do not keep that slope at this
training length (within the other scanner neither output kept it: ratios -0.5 to 0.3 of the truth's
per contrast); with ``"target"`` the unchanged target scans carry it.

Intensities are those of :mod:`surfharm.harmonize.volumetric.deep` (each contrast of each scan divided by
its in-mask 99th percentile; outputs in the target scanner's unit). Scanners not seen in training are
refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from surfharm.harmonize.base import HarmonizerInputError, register
from surfharm.harmonize.volumetric import slices as sl
from surfharm.harmonize.volumetric.deep import (DeepImageHarmonizer, SliceData, SliceTrainer, SliceTrainingConfig,
                                                masked_l1)
from surfharm.models.image2d import NORMS, UNet2d

#: The published loss weights: step 1 variance and reconstruction, step 2 reconstruction and harmonization.
PUBLISHED_WEIGHTS = {"variance_weight": 1.0, "reconstruction_weight_1": 0.3, "reconstruction_weight_2": 1.0,
                     "harmonization_weight": 4.0}
#: What ``transform`` returns: each scanner's own unit (published) or its encoder + the target's decoder.
OUTPUTS = ("own", "target")


def _encoder(site: int) -> str:
    return f"encoder{site}"


def _decoder(site: int) -> str:
    return f"decoder{site}"


def _label(value):
    return value.item() if isinstance(value, np.generic) else value


def traveling_groups(data: SliceData) -> np.ndarray:
    """The training groups: ``(n_groups, n_sites)`` slice rows of one subject at one position on each site.

    For every subject seen on two or more sites its first scan on each site is taken; every slice
    position present in two or more of those scans gives one row (column ``k``: the slice on site index
    ``k``, -1 where that site has none).
    """
    if data.scan_subjects is None:
        return np.zeros((0, data.n_sites), dtype=np.int64)
    scans, positions = data.scans.numpy(), data.positions.numpy()
    lookup = {(int(s), int(p)): r for r, (s, p) in enumerate(zip(scans, positions))}
    out = []
    for subject in pd.unique(data.scan_subjects):
        first = {}
        for k in range(data.n_sites):
            hits = np.flatnonzero((data.scan_subjects == subject) & (data.scan_sites == k))
            if hits.size:
                first[k] = int(hits[0])
        if len(first) < 2:
            continue
        common = sorted(set().union(*(set(positions[scans == s].tolist()) for s in first.values())))
        for p in common:
            row = [lookup.get((first[k], p), -1) if k in first else -1 for k in range(data.n_sites)]
            if sum(r >= 0 for r in row) >= 2:
                out.append(row)
    return np.asarray(out, dtype=np.int64).reshape(-1, data.n_sites)


@dataclass(frozen=True)
class MispelTrainingConfig(SliceTrainingConfig):
    """:class:`SliceTrainingConfig` with MISPEL's step 1 length and loss weights.

    ``max_steps`` is the length of both steps together; steps ``[0, steps_1)`` are step 1.
    """

    steps_1: int = 1
    variance_weight: float = 1.0
    reconstruction_weight_1: float = 0.3
    reconstruction_weight_2: float = 1.0
    harmonization_weight: float = 4.0


class MispelTrainer(SliceTrainer):
    """Train MISPEL's encoders and decoders in its two steps (see the module docstring).

    A batch is ``batch_size`` groups (rows of :func:`traveling_groups`: one subject's slice at one
    position on each scanner that saw it). Losses, all inside the voxels of the mask of every scan of a
    group (reconstruction: inside each scan's own mask):

    * ``variance``: per voxel and latent channel, the variance of the group's latents across its scanners;
    * ``rec``: L1 between each scan and its own scanner's decoding of its latent;
    * ``pairwise``: mean L1 between two scanners' decodings (each of its own latent) of the same group.

    ``loss`` is ``variance_weight x variance + reconstruction_weight_1 x rec`` in step 1 and
    ``reconstruction_weight_2 x rec + harmonization_weight x pairwise`` in step 2; every term is
    reported in both steps, and ``stage`` (1 or 2) says which step a history record averages.
    """

    checkpoint_format = "surfharm-mispel-checkpoint"
    loss_names = ("loss", "variance", "rec", "pairwise", "stage")
    progress_desc = "MISPEL"
    progress_keys = ("loss", "variance", "rec", "pairwise")

    def __init__(self, config: MispelTrainingConfig, networks: nn.ModuleDict, data: SliceData, **run):
        super().__init__(config, networks, data, **run)
        self.groups = traveling_groups(data)
        if not len(self.groups):
            raise ValueError("no slice of any subject is on two or more sites: MISPEL needs traveling subjects")
        self.n_pairs = int((self.groups >= 0).sum())       # slices trained on

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        n = self.config.n_sites
        enc = [p for k in range(n) for p in self.networks[_encoder(k)].parameters()]
        dec = [p for k in range(n) for p in self.networks[_decoder(k)].parameters()]
        return {"opt_enc": torch.optim.Adam(enc, lr=self.config.lr, betas=self.config.betas),
                "opt_dec": torch.optim.Adam(dec, lr=self.config.lr, betas=self.config.betas)}

    @property
    def epoch_size(self) -> int:
        return len(self.groups)

    def stage_at(self, step: int) -> int:
        """1 (encoders and decoders) or 2 (decoders only) at ``step``."""
        return 1 if step < self.config.steps_1 else 2

    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        """As :meth:`Trainer.train`, with a history record (and checkpoint) at the end of step 1, so that no
        record averages the two steps."""
        end = self.total_steps if until_step is None else min(int(until_step), self.total_steps)
        if self.step < self.config.steps_1 < end:
            super().train(self.config.steps_1)
        return super().train(end)

    def losses(self, groups: np.ndarray, stage: int) -> dict[str, torch.Tensor]:
        """The loss terms (scalars) of ``groups`` (rows of :attr:`groups`) at ``stage``."""
        cfg = self.config
        rows = torch.as_tensor(np.asarray(groups, dtype=np.int64))
        g, k = torch.nonzero(rows >= 0, as_tuple=True)
        x, mask, _ = self.batch(rows[g, k])
        g, k = g.to(self.device), k.to(self.device)
        target = x[:, self.data.centre.to(self.device)]
        n_groups, n_sites = rows.shape
        latent = rec = None
        for site in torch.unique(k).tolist():
            idx = torch.nonzero(k == site).flatten()
            encoder = self.networks[_encoder(site)]
            encoder.train(stage == 1)                   # frozen in step 2: as transform runs it
            with torch.set_grad_enabled(stage == 1), self._autocast():
                z = (self.ddp[_encoder(site)] if stage == 1 else encoder)(x[idx])
            with self._autocast():
                y = self.ddp[_decoder(site)](z)
            z, y = z.float(), y.float()
            if latent is None:
                latent = z.new_zeros((len(g), *z.shape[1:]))
                rec = y.new_zeros((len(g), *y.shape[1:]))
            latent, rec = latent.index_copy(0, idx, z), rec.index_copy(0, idx, y)
        present = torch.zeros(n_groups, n_sites, device=self.device)
        present[g, k] = 1.0
        size = present.sum(1)
        # Voxels inside the mask of every scan of the group.
        inside = torch.zeros(n_groups, *mask.shape[1:], device=self.device).index_add(0, g, mask.float())
        inside = (inside == size[:, None, None]).float()

        centre = torch.zeros(n_groups, *latent.shape[1:], device=self.device).index_add(0, g, latent)
        centre = centre / size[:, None, None, None]
        spread = torch.zeros_like(centre).index_add(0, g, (latent - centre[g]).square()) / size[:, None, None, None]
        variance = (spread * inside[:, None]).sum() / (inside.sum() * latent.shape[1]).clamp_min(1)
        rec_l1 = masked_l1(rec, target, mask)
        dense = torch.zeros(n_groups, n_sites, *rec.shape[1:], device=self.device).index_put((g, k), rec)
        num = rec.new_zeros(())
        den = rec.new_zeros(())
        for a in range(n_sites):
            for b in range(a + 1, n_sites):
                both = (present[:, a] * present[:, b])[:, None, None] * inside
                num = num + ((dense[:, a] - dense[:, b]).abs() * both[:, None]).sum()
                den = den + both.sum() * rec.shape[1]
        pairwise = num / den.clamp_min(1)
        if stage == 1:
            loss = cfg.variance_weight * variance + cfg.reconstruction_weight_1 * rec_l1
        else:
            loss = cfg.reconstruction_weight_2 * rec_l1 + cfg.harmonization_weight * pairwise
        return {"loss": loss, "variance": variance, "rec": rec_l1, "pairwise": pairwise}

    def train_step(self) -> dict[str, float]:
        step = self.step
        stage = self.stage_at(step)
        if step == self.config.steps_1:
            self.optimizers["opt_dec"].state.clear()    # step 2 is a new optimisation of the decoders
        lr = self.lr_at(step)
        self._set_lr(lr)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)             # step 2: no encoder gradient, so Adam leaves them as they are
        out = self.losses(self.rows(step, self.groups), stage)
        out["loss"].backward()
        stage_value = torch.tensor(float(stage), device=self.device)
        return self._finish_step(torch.stack([out["loss"], out["variance"], out["rec"], out["pairwise"],
                                              stage_value]), lr)


@register("mispel")
class Mispel(DeepImageHarmonizer):
    """MISPEL: per-scanner encoders to a shared latent image and linear decoders, learned from traveling
    subjects in two steps (see the module docstring).

    Parameters
    ----------
    contrasts : tuple of str
        The contrasts of every scan (all in, all out), e.g. ``("t1", "t2", "flair")``.
    target_site : site label or None
        The scanner whose unit the outputs are put in (``output="own"``), and whose decoder gives them
        (``output="target"``); None: the first site in sorted order. ``transform(..., target_site=...)``
        may choose any other training scanner.
    output : "own" or "target"
        ``"own"`` (published): each scan through its own scanner's encoder and decoder, target scanner's
        scans included; ``"target"``: its own encoder, the target scanner's decoder, target scans returned
        unchanged (see the module docstring).
    latent_channels : int
        Channels of the latent image (6 published).
    depth : int
        Halvings of each encoder U-Net (2: widths ``base``, ``2 base``, ``4 base``).
    base_channels : int
        Width of the encoders' first stage (32 published: 32-64-128); smaller is faster on CPU.
    norm : "batch", "instance" or "none"
        Normalisation of the encoders' convolution blocks.
    steps, steps_2 : int, int or None
        Optimisation steps of step 1 and of step 2 (None: as ``steps``; 0: step 1 only).
    variance_weight, reconstruction_weight_1, reconstruction_weight_2, harmonization_weight : float
        Loss weights (published 1.0, 0.3, 1.0, 4.0).
    slice_axis, context, percentile, batch_size, lr, seed, device, progress, checkpoint, checkpoint_every,
    resume :
        As :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`'s; ``batch_size`` is in groups
        (one subject's slice on each of its scanners; 4 published), ``lr`` 0.01 as published.

    Learned attributes: those of :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`;
    ``networks_`` holds ``"encoder<k>"`` (:class:`~surfharm.models.image2d.UNet2d`) and ``"decoder<k>"``
    (1x1 ``nn.Conv2d``) for every site index ``k`` of ``sites_``; ``n_pairs_``: slices trained on;
    ``history_`` records carry ``stage`` (1 or 2).
    """

    model_format = "surfharm-mispel"
    needs_pairs = True
    min_contrasts = 1
    supports_unseen_sites = False
    maps_to_any_site = True
    required_side_data = ("subjects",)

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, output: str = "own", latent_channels: int = 6,
                 depth: int = 2,
                 base_channels: int = 32, norm: str = "instance", slice_axis: int = 2, context: int = 0,
                 percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 300, steps_2: int | None = None,
                 batch_size: int = 4, lr: float = 0.01, variance_weight: float = 1.0,
                 reconstruction_weight_1: float = 0.3, reconstruction_weight_2: float = 1.0,
                 harmonization_weight: float = 4.0, seed: int = 0, device: str = "cpu", progress: bool = False,
                 checkpoint=None, checkpoint_every: int = 0, resume: bool = False):
        super().__init__(contrasts=contrasts, target_site=target_site, slice_axis=slice_axis, context=context,
                         percentile=percentile, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        self.output = output
        self.latent_channels = latent_channels
        self.depth = depth
        self.base_channels = base_channels
        self.norm = norm
        self.steps_2 = steps_2
        self.variance_weight = variance_weight
        self.reconstruction_weight_1 = reconstruction_weight_1
        self.reconstruction_weight_2 = reconstruction_weight_2
        self.harmonization_weight = harmonization_weight

    # -- checks ---------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        for name in ("latent_channels", "depth", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise HarmonizerInputError(f"{name} must be a positive int, got {value!r}")
        if self.steps_2 is not None and (isinstance(self.steps_2, bool) or not isinstance(
                self.steps_2, (int, np.integer)) or self.steps_2 < 0):
            raise HarmonizerInputError(f"steps_2 must be an int >= 0 or None (as steps), got {self.steps_2!r}")
        if self.norm not in NORMS:
            raise HarmonizerInputError(f"norm must be one of {NORMS}, got {self.norm!r}")
        self._check_output()
        for name in PUBLISHED_WEIGHTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise HarmonizerInputError(f"{name} must be a finite number >= 0, got {value!r}")

    def check_pairs(self, sites: np.ndarray, subjects: np.ndarray) -> None:
        """Refuse scanners without a traveling subject, and groups of scanners that share no subject with
        the others (their latent spaces would not be tied to the rest), naming them."""
        labels = [_label(s) for s in sites]
        by_subject: dict[Any, set] = {}
        for subject, site in zip(subjects, labels):
            by_subject.setdefault(subject, set()).add(site)
        traveling = [s for s in by_subject.values() if len(s) >= 2]
        alone = [site for site in self.sites_ if not any(site in s for s in traveling)]
        if alone:
            raise HarmonizerInputError(
                f"{self._owner()} learns from traveling subjects, but site(s) {alone} share no subject with any "
                "other site (subjects=, one label per scan: the same label on two sites is one person scanned on "
                "both); every site needs subjects also scanned elsewhere")
        # Connected components of the sites linked by shared subjects.
        component = {site: i for i, site in enumerate(self.sites_)}
        changed = True
        while changed:
            changed = False
            for linked in traveling:
                low = min(component[s] for s in linked)
                for s in linked:
                    if component[s] != low:
                        component[s], changed = low, True
        parts = sorted({tuple(s for s in self.sites_ if component[s] == c) for c in component.values()})
        if len(parts) > 1:
            raise HarmonizerInputError(
                f"{self._owner()} ties every site's latent space to the others' through shared subjects, but the "
                f"sites fall into groups that share no subject: {[list(p) for p in parts]}; add subjects scanned "
                "on sites of different groups, or fit each group separately")

    # -- hooks ----------------------------------------------------------------------------------------------
    def network_config(self) -> dict[str, Any]:
        return {"in_channels": self.n_in_channels_, "out_channels": len(self.contrasts_),
                "latent_channels": int(self.latent_channels), "depth": int(self.depth),
                "base_channels": int(self.base_channels), "norm": self.norm, "n_sites": len(self.sites_)}

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        modules = {}
        for k in range(config["n_sites"]):
            modules[_encoder(k)] = UNet2d(config["in_channels"], config["latent_channels"], depth=config["depth"],
                                          base_channels=config["base_channels"], norm=config["norm"])
            modules[_decoder(k)] = nn.Conv2d(config["latent_channels"], config["out_channels"], 1)
        return nn.ModuleDict(modules)

    def training_config(self, network: dict[str, Any]) -> MispelTrainingConfig:
        steps_1 = int(self.steps)
        steps_2 = steps_1 if self.steps_2 is None else int(self.steps_2)
        return MispelTrainingConfig(in_channels=self.n_in_channels_, out_channels=len(self.contrasts_),
                                    n_sites=len(self.sites_), target=self.target_, network=network,
                                    lr=float(self.lr), batch_size=int(self.batch_size),
                                    max_steps=steps_1 + steps_2, seed=int(self.seed), steps_1=steps_1,
                                    **{name: float(getattr(self, name)) for name in PUBLISHED_WEIGHTS})

    def make_trainer(self, config, networks, data, **run) -> MispelTrainer:
        return MispelTrainer(config, networks, data, **run)

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        if "output" not in meta.get("params", {}):
            self.output = "target"            # files without the parameter mapped with the target's decoder

    def _check_output(self) -> None:
        if not isinstance(self.output, str) or self.output not in OUTPUTS:
            raise HarmonizerInputError(f"output must be one of {OUTPUTS} (the scan's own scanner's unit, or its "
                                       f"encoder and the target scanner's decoder), got {self.output!r}")

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        decoder = source if self.output == "own" else target
        return networks[_decoder(decoder)](networks[_encoder(source)](images))

    def maps_target_scans(self) -> bool:
        # With the published output the target scanner's scans go through their own unit as well.
        self._check_output()
        return self.output == "own"


__all__ = ["OUTPUTS", "Mispel", "MispelTrainer", "MispelTrainingConfig", "PUBLISHED_WEIGHTS", "traveling_groups"]
