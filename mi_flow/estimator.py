"""A learned upper bound on the mutual information between the top latent and the condition.

CLUB, the Contrastive Log-ratio Upper Bound of Cheng et al., "CLUB: A Contrastive Log-ratio
Upper Bound of Mutual Information", ICML 2020 (arXiv:2006.12013). With a variational
``q(c | z)`` fitted to the joint by maximum likelihood,

    I(z; c) <= E_p(z,c)[log q(c|z)] - E_p(z)E_p(c)[log q(c|z)],

estimated on a batch by contrasting matched pairs ``(z_i, c_i)`` with all pairs ``(z_i, c_j)``
(``sample=True``: one random partner per ``i``, the paper's CLUB-sample). Here
``q(c|z) = N(mu(z), diag(exp(logvar(z))))``; log-variances and constants are the same for
``c_i`` and ``c_j`` given ``z_i``, so only the squared errors remain in the estimate.

Two losses with separate gradient paths, both for one optimiser over one summed loss:

* :meth:`CLUB.learning_loss` trains ``q`` only: the latent is detached, the condition is data.
* :meth:`CLUB.mi_upper` is the penalty for the flow: evaluated with ``q``'s parameters
  detached, so its gradient reaches the latent (hence the flow) and never ``q`` (minimising
  the bound over ``q`` would just make ``q`` uninformative).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

LOG_2PI = math.log(2 * math.pi)


class CLUB(nn.Module):
    """Variational ``q(c|z)`` for flattened ``z`` [B, z_dim] and ``c`` [B, c_dim].

    A shared two-layer trunk with a mean head and a log-variance head (soft-clamped to
    ``[-5, 5]`` by a scaled tanh, so pixel-scale conditions fit without rescaling).
    """

    def __init__(self, z_dim: int, c_dim: int, hidden: int = 256, sample: bool = False) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.sample = z_dim, c_dim, sample
        self.trunk = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, c_dim)
        self.logvar = nn.Linear(hidden, c_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, ...] -> (mu [B, c_dim], logvar [B, c_dim])."""
        h = self.trunk(z.flatten(1))
        return self.mu(h), 5.0 * torch.tanh(self.logvar(h) / 5.0)

    def log_likelihood(self, z: Tensor, c: Tensor) -> Tensor:
        """``log q(c_i | z_i)`` per sample [B] (nats)."""
        mu, logvar = self(z)
        return -0.5 * ((c - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI).sum(1)

    def learning_loss(self, z: Tensor, c: Tensor) -> Tensor:
        """Negative log-likelihood of ``q`` per condition dimension (nats); trains ``q`` only."""
        return -self.log_likelihood(z.detach(), c.detach()).mean() / self.c_dim

    def mi_upper(self, z: Tensor, c: Tensor, generator: torch.Generator | None = None,
                 c_global: Tensor | None = None, rank: int = 0, world: int = 1) -> Tensor:
        """The CLUB estimate of I(z; c) in nats (scalar); gradient to ``z`` only.

        z [b, ...], c [b, c_dim]. Under DDP the negatives come from the *global* batch:
        ``c_global`` [b * world, c_dim] holds every rank's conditions in interleaved order (this
        rank's rows are ``rank::world``); CLUB-sample draws one permutation of the global batch
        and keeps this rank's rows. Averaged over ranks, the estimate equals one process's.
        """
        frozen = {k: v.detach() for k, v in self.named_parameters()}
        mu, logvar = functional_call(self, frozen, (z,))
        c = c.detach()
        pool = c if c_global is None else c_global.detach()
        inv_var = torch.exp(-logvar)
        positive = -0.5 * ((c - mu) ** 2 * inv_var).sum(1)  # [b]
        if self.sample:
            perm = torch.randperm(pool.shape[0], generator=generator)[rank::world].to(c.device)
            negative = -0.5 * ((pool[perm] - mu) ** 2 * inv_var).sum(1)
        else:
            # all pairs (i, j): mean_j of (c_j - mu_i)^2 per dimension, [b, c_dim]
            sq = (pool.unsqueeze(0) - mu.unsqueeze(1)) ** 2  # [b_i, B_j, c_dim]
            negative = -0.5 * (sq.mean(1) * inv_var).sum(1)
        return (positive - negative).mean()
