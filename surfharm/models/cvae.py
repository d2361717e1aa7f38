"""The conditional variational autoencoder of DeepComBat (Hu et al., Hum Brain Mapp 2024).

* Encoder: ``[x, site, covariates] -> hidden -> hidden -> hidden -> (mu, logvar)``;
* decoder: ``[z, site, covariates] -> hidden -> hidden -> hidden -> x``;

multilayer perceptrons with tanh after every hidden layer and a linear last layer. The hidden widths
are evenly spaced between the number of features ``p`` and the latent size (:func:`hidden_widths`;
the decoder takes them in reverse), the latent size is ``2^round(log2(p / 4))`` by default
(:func:`default_latent_dim`: 16 for the 68 Desikan-Killiany regions).

Loss of a batch of ``n`` scans (:func:`cvae_loss`): the summed squared reconstruction error over
``n`` plus ``beta x lambda`` times the summed Kullback-Leibler divergence of the posterior from
N(0, I) over ``n``; ``beta`` and ``lambda`` follow the published schedule (:func:`kl_schedule`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def default_latent_dim(n_features: int) -> int:
    """``2^round(log2(p / 4))``, at least 2 (p = 68 -> 16)."""
    return max(2, int(2 ** round(math.log2(max(n_features, 1) / 4.0))))


def hidden_widths(n_features: int, latent_dim: int, n_hidden: int = 3) -> list[int]:
    """Widths of the encoder's hidden layers, evenly spaced from ``n_features`` to ``latent_dim``
    (both excluded): 68 -> 16 gives [55, 42, 29]."""
    widths = np.linspace(n_features, latent_dim, n_hidden + 2)[1:-1]
    return [max(1, int(round(w))) for w in widths]


def kl_schedule(epoch: int, *, ae_epochs: int = 5, anneal_epochs: int = 30, cycle_epochs: int = 10,
                ramp_epochs: int = 5, kl_weight: float = 1.0, final_kl_weight: float = 0.1) -> tuple[float, float]:
    """``(beta, lambda)`` of the KL term in ``epoch`` (0-based); the loss weighs the KL by their product.

    * the first ``ae_epochs`` (5): a plain autoencoder, lambda = 0;
    * the next ``anneal_epochs`` (30): cyclic annealing with lambda = ``kl_weight`` (1): in each cycle
      of ``cycle_epochs`` (10) beta rises linearly from 0 to 1 over ``ramp_epochs`` (5: 0, 0.2, ...,
      0.8) and is then held at 1;
    * from then on (5 epochs): beta = 1 at lambda = ``final_kl_weight`` (0.1).
    """
    if epoch < ae_epochs:
        return 0.0, 0.0
    within = epoch - ae_epochs
    if within < anneal_epochs:
        position = within % max(cycle_epochs, 1)
        beta = min(1.0, position / ramp_epochs) if ramp_epochs > 0 else 1.0
        return float(beta), float(kl_weight)
    return 1.0, float(final_kl_weight)


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers between consecutive ``widths``, tanh after every one but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ConditionalVAE(nn.Module):
    """DeepComBat's encoder and decoder, conditioned on site (one-hot) and covariates (in [0, 1]).

    Parameters
    ----------
    n_features : int
        p, the features of a scan (z-scored).
    n_sites : int
        K, one-hot site columns.
    n_covariates : int
        Q, covariate columns (indicator columns and min-max scaled numbers).
    latent_dim : int or None
        latent size (default :func:`default_latent_dim`).
    n_hidden : int
        hidden layers of each network (3).

    Notes
    -----
    Shapes: ``x`` (B, p), ``site`` (B, K), ``cov`` (B, Q), ``z`` (B, latent_dim).
    """

    def __init__(self, n_features: int, n_sites: int, n_covariates: int, *, latent_dim: int | None = None,
                 n_hidden: int = 3):
        super().__init__()
        self.n_features, self.n_sites, self.n_covariates = int(n_features), int(n_sites), int(n_covariates)
        self.latent_dim = int(latent_dim or default_latent_dim(n_features))
        self.widths = hidden_widths(self.n_features, self.latent_dim, n_hidden)
        cond = self.n_sites + self.n_covariates
        self.encoder = nn.Sequential(_mlp([self.n_features + cond, *self.widths]), nn.Tanh())
        self.mu = nn.Linear(self.widths[-1], self.latent_dim)
        self.logvar = nn.Linear(self.widths[-1], self.latent_dim)
        self.decoder = _mlp([self.latent_dim + cond, *self.widths[::-1], self.n_features])

    def encode(self, x: torch.Tensor, site: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, (B, latent_dim) each."""
        h = self.encoder(torch.cat([x, site, cov], dim=1))
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor, site: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """Reconstructed features (B, p)."""
        return self.decoder(torch.cat([z, site, cov], dim=1))

    def forward(self, x, site, cov, generator: torch.Generator | None = None):
        """``(reconstruction, mu, logvar)`` with z drawn from the posterior (reparameterised)."""
        mu, logvar = self.encode(x, site, cov)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, site, cov), mu, logvar


def cvae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kl_factor: float,
              observed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, squared error, KL)``, each summed over the batch and divided by its size.

    ``kl_factor`` is beta x lambda; ``observed`` (B, p) bool leaves missing values out of the error.
    """
    n = x.shape[0]
    diff = recon - x
    if observed is not None:
        diff = torch.where(observed, diff, torch.zeros_like(diff))
    sse = (diff * diff).sum() / n
    kl = -0.5 * (1.0 + logvar - mu * mu - torch.exp(logvar)).sum() / n
    return sse + kl_factor * kl, sse, kl
