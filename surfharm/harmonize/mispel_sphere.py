"""MISPEL (Torbati et al. 2021/2023) on the sphere: a shared latent space for m scanners, learned from
traveling subjects in two steps.

Per scanner a spherical U-Net encoder (widths 32-64-128 with skips, :class:`spherical_ops.IcoUNet`) maps
the scanner's z-scored maps to a latent of 6 channels per vertex, and a linear per-vertex decoder (a
1x1 map, latent channels -> map channels) maps a latent back (:mod:`surfharm.models.mispel_sphere`).

* Step 1 (encoders and decoders): 1.0 x the variance, across scanners, of the latents of the same
  subject + 0.3 x L1 reconstruction of each scan from its own latent by its own scanner's decoder.
* Step 2 (encoders frozen): 1.0 x L1 reconstruction + 4.0 x the mean pairwise L1 between the
  harmonized maps of the same subject on different scanners, each scan's map being its own scanner's
  unit output (its encoder and its decoder), as published.
* Harmonized map of a scan (``output``): ``"own"`` (default, as published) the scan's own scanner's
  unit output, the shared appearance that step 2 made the units agree on; ``"target"`` the
  *reference* scanner's decoder applied to the scan's latent. Either way the map is put back in the
  reference scanner's units (its per-vertex mean and standard deviation), and scans of the reference
  scanner are harmonized too (encoded and decoded), unlike ``paired-unet``'s. Both outputs need the
  scan's scanner's encoder, so scanners not seen in training are refused.
* Measured (the cohort of ``tests/harmonize/test_mispel_sphere.py``: level-2 maps, 8 subjects x 3
  scanners, one subject held out, ``base_channels=4``, 100 + 100 steps, seeds 0 and 1): the held-out
  subject's maps correlate 0.86 and 0.75 with its true map under either output, and "own" is at least
  as close to it (MAE 0.148 against 0.151 mm, 0.176 both) and across scanners (0.079 against 0.081,
  0.096 against 0.097 mm; raw 0.53). With the agreement of step 2 taken between the reference decoder's
  decodings instead of each scanner's own, that decoder learnt one constant map: every output equal,
  correlation -0.09.
* Adam, lr 0.01, batch 4 traveling subjects, as published; published 100 epochs per step. On the
  sphere one map is one sample (the published networks see every 2-D slice), and on CPU the default is
  ``epochs=20`` per step; ``base_channels`` scales the widths (32 is the published 32-64-128; 8 or 16
  train several times faster on CPU).

Data: ``subjects`` (one label per scan). A traveling subject is one seen on at least 2 scanners; a batch
element is all its scans (one per scanner that saw it). Every scanner needs at least one traveling
subject (its encoder and decoder learn only from them): ``fit`` refuses otherwise, naming the scanners.
Scans of non-traveling subjects enter the z-scoring statistics only.

Why a method of its own and not ``PairedUNet(scheme="mispel")``: the two share the traveling-subject
data and its checks, the z-scoring, the checkpoints and the refusals (:class:`TravelingSubjectsHarmonizer`),
but not their networks (one residual U-Net per non-reference scanner vs an encoder and a decoder per
scanner), hyper-parameters (depth, correlation and unpaired weights vs latent width and the two
steps), training (pairs with the reference vs groups of all scanners) nor model files; one class with
a switch would hold parameters that mean nothing in the other scheme.

Shapes as CDAE's: ``X`` (n_scans, V) or (n_scans, C, V); ``transform`` returns the same shape and dtype;
NaN and vertices outside the training cortex are returned as given; sites not seen in training are
refused by name.
"""
from __future__ import annotations

import numpy as np
import torch

from surfharm.harmonize.base import HarmonizerInputError, register
from surfharm.harmonize.paired import TravelingSubjectsHarmonizer, find_traveling_groups

MODEL_FORMAT = "surfharm-mispel-sphere"
#: What ``transform`` returns: each scanner's own unit (published) or its encoder + the reference's decoder.
OUTPUTS = ("own", "target")


@register("mispel-sphere")
class MispelSphere(TravelingSubjectsHarmonizer):
    """MISPEL's shared latent space on the sphere (see the module docstring).

    Parameters
    ----------
    reference_site : site label or None
        The scanner whose units the harmonized maps are put in, and whose decoder gives them with
        ``output="target"``; None: the first site in sorted order.
    output : "own" or "target"
        ``"own"`` (published): each scan through its own scanner's encoder and decoder; ``"target"``: its own
        encoder and the reference scanner's decoder.
    latent_channels : int
        Latent channels per vertex (6 published).
    base_channels : int
        Width of the encoders' first level (32 published: 32-64-128); smaller is faster on CPU.
    epochs, max_steps : int, int or None
        Epochs (of ``batch_size`` traveling subjects) of each of the two steps; ``max_steps`` caps each.
    batch_size, lr : optimisation (Adam; 4 and 0.01 published).
    loss_weights : dict or None
        Overrides of ``variance`` (1.0), ``reconstruction_1`` (0.3), ``reconstruction_2`` (1.0) and
        ``harmonization`` (4.0).
    min_std_mm, seed, device, checkpoint_dir, checkpoint_every, resume, progress : as CDAE's.

    Learned attributes
    ------------------
    sites_, reference_, level_, n_features_in_, n_channels_, mean_, std_, mask_ : as CDAE's
    n_groups_ : traveling-subject groups trained on;  networks_ : the trained
    :class:`surfharm.models.mispel_sphere.MispelNetworks`;  history_ : per-epoch losses (``stage`` 1 or 2)
    """

    format_name = "mispel-sphere"

    def __init__(self, *, reference_site=None, output: str = "own", latent_channels: int = 6, base_channels: int = 32,
                 epochs: int = 20,
                 max_steps: int | None = None, batch_size: int = 4, lr: float = 0.01,
                 loss_weights: dict | None = None, min_std_mm: float = 0.01, seed: int = 0, device: str = "cpu",
                 checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False, progress: bool = False):
        self.reference_site = reference_site
        self.output = output
        self.latent_channels = latent_channels
        self.base_channels = base_channels
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.loss_weights = loss_weights
        self.min_std_mm = min_std_mm
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.progress = progress

    def training_config(self, level: int, n_sites: int, n_channels: int, reference: int):
        """The :class:`surfharm.training.paired.MispelConfig` this harmonizer trains with."""
        from surfharm.training.paired import MispelConfig

        weights = dict(self.loss_weights or {})
        known = ("variance", "reconstruction_1", "reconstruction_2", "harmonization")
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise HarmonizerInputError(f"loss_weights {unknown} are unknown; known: {list(known)}")
        try:
            return MispelConfig(level=level, n_sites=n_sites, reference=reference, in_channels=n_channels,
                                latent_channels=int(self.latent_channels), base_channels=int(self.base_channels),
                                lr=float(self.lr), batch_size=int(self.batch_size), epochs=int(self.epochs),
                                max_steps=self.max_steps, seed=int(self.seed),
                                **{k: float(v) for k, v in weights.items()})
        except ValueError as exc:
            raise HarmonizerInputError(f"mispel-sphere: {exc}") from None

    def _check_output(self) -> None:
        if not isinstance(self.output, str) or self.output not in OUTPUTS:
            raise HarmonizerInputError(f"output must be one of {OUTPUTS} (the scan's own scanner's unit, or its "
                                       f"encoder and the reference scanner's decoder), got {self.output!r}")

    def fit(self, X, y=None, *, sites=None, subjects=None) -> "MispelSphere":
        """Train on the traveling subjects of ``X`` (n_scans, V) or (n_scans, C, V) given by ``subjects``."""
        from surfharm.training.paired import MispelTrainer

        self._check_output()
        maps, index, subjects = self._prepare(X, sites, subjects)
        groups = find_traveling_groups(index, subjects, len(self.sites_))
        covered = set(np.flatnonzero((groups >= 0).any(axis=0)).tolist())
        missing = [self.sites_[k] for k in range(len(self.sites_)) if k not in covered]
        if missing:
            raise HarmonizerInputError(
                f"site(s) {missing} have no traveling subject: none of their subjects was also scanned on another "
                "site. mispel-sphere learns each site's encoder and decoder from subjects scanned on several "
                "sites; give subjects= labels that match across sites, or harmonize those sites with an unpaired "
                "method (cdae)")
        self._normalise(maps, index)
        self.n_groups_ = int(len(groups))
        z, valid = self._zscore(maps, index)
        config = self.training_config(self.level_, len(self.sites_), self.n_channels_, self.reference_)
        checkpoint = self._checkpoint()
        trainer = MispelTrainer(config, torch.from_numpy(z), torch.from_numpy(valid), groups, device=self.device,
                                checkpoint_path=checkpoint, checkpoint_every=self.checkpoint_every,
                                progress=self.progress, checkpoint_extra=self._checkpoint_extra)
        self._train(trainer, checkpoint)
        return self

    def transform(self, X, *, sites=None, subjects=None, batch_size: int = 8):
        """Harmonize every scan (reference scanner's included): its own scanner's unit output (``output="own"``)
        or its latent decoded by the reference scanner's decoder (``"target"``), in the reference's units.

        ``subjects`` is accepted (the declared side datum) and not needed: each scan is harmonized alone.
        """
        self._check_output()
        maps, ndim, index = self._transform_input(
            X, sites, "each scanner has its own encoder, learned from its traveling subjects")
        z, valid = self._zscore(maps, index)
        decoder = None if self.output == "own" else self.reference_
        out = self._map_scans(maps, z, valid, index, np.arange(len(maps)), batch_size,
                              lambda zt, site: self.networks_.harmonize(zt, site, decoder))
        return out[:, 0] if ndim == 2 else out

    # -- model file ------------------------------------------------------------------------------------
    model_format = MODEL_FORMAT
    count_meta = "n_groups"

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        if "output" not in meta.get("params", {}):
            # Files without the parameter were trained for, and mapped with, the reference decoder.
            self.output = "target"

    def _build_networks(self):
        from surfharm.models.mispel_sphere import MispelNetworks

        return MispelNetworks(len(self.sites_), self.n_channels_, self.level_, int(self.latent_channels),
                              int(self.base_channels))
