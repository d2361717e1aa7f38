"""Torch modules of the learned harmonizers (S2SGAN): generators, discriminators, losses, image pool.

Every module takes channels-first tensors ``(B, C, V)`` on an icosahedral mesh in FreeSurfer order
(:mod:`spherical_ops`); vertices outside cortex are zero in the inputs and excluded from the
losses by a ``(B, V)`` boolean mask.
"""
from surfharm.models.networks import SphericalDiscriminator, SphericalGenerator
from surfharm.models.losses import (
    LossWeights,
    correlation_loss,
    lsgan_loss,
    masked_l1,
    masked_pearson,
)
from surfharm.models.pool import ImagePool

__all__ = ["ImagePool", "LossWeights", "SphericalDiscriminator", "SphericalGenerator", "correlation_loss",
           "lsgan_loss", "masked_l1", "masked_pearson"]
