"""MI-flow: a conditional multi-scale Glow whose split latents carry the mouth condition.

Direction data -> latent, as in :mod:`glow`. The condition ``c0`` is the input with everything
but the mouth window zeroed. A condition pyramid (conv3x3 -> ReLU -> maxpool 2, ``C -> 2C``
channels per level) turns it into one condition per split block; a zero-initialised conv maps
that level's condition to the mean and log-sd of the split latent's prior, so the split latents
are modelled as *condition-relevant*. The top latent keeps Glow's unconditional learned prior
(*condition-irrelevant*: identity and everything else). The couplings are not conditioned.

Module and attribute names follow the thesis's MI-flow model (``blocks.i.flows.j...``,
``blocks.i.cond.conv.0``, ``blocks.i.prior_c``, ``blocks.L-1.prior``), so its state dicts load
without renaming (see :func:`mi_flow.io.load_thesis_state`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow import Flow, ZeroConv2d, gaussian_log_p
from glow.fast import install
from glow.model import (
    actnorms_initialized,
    flows_forward,
    flows_reverse,
    initialize_actnorms,
    latent_shapes,
)

from .estimator import CLUB

# The thesis's mouth window at 64 px: rows 31:47, cols 21:42 (end exclusive).
MOUTH_WINDOW_64 = (31, 47, 21, 42)


def mouth_window(size: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the condition window at ``size`` px, rounded outwards.

    ``mouth_window(64) == (31, 47, 21, 42)`` (the thesis's), ``mouth_window(32) == (15, 24, 10,
    21)``.
    """
    k = size / 64.0
    t, b, left, r = MOUTH_WINDOW_64
    return (math.floor(t * k), min(size, math.ceil(b * k)),
            math.floor(left * k), min(size, math.ceil(r * k)))


def mask_condition(x: Tensor) -> Tensor:
    """``c0``: ``x`` [B, C, S, S] with everything outside the mouth window set to zero."""
    t, b, left, r = mouth_window(x.shape[-1])
    c = torch.zeros_like(x)
    c[:, :, t:b, left:r] = x[:, :, t:b, left:r]
    return c


class CondConv(nn.Module):
    """One level of the condition pyramid: conv3x3 (C -> 2C) -> ReLU -> maxpool 2."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channel, out_channel, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )

    def forward(self, c: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 2C, H/2, W/2]."""
        return self.conv(c)


class CondBlock(nn.Module):
    """Squeeze, ``n_flow`` flows, then split half the channels off under a conditional prior.

    Split block at input [B, C, H, W]: the split latent [B, 2C, H/2, W/2] has prior
    ``N(mean, exp(log_sd))`` with ``(mean, log_sd) = prior_c(cond(c_in))`` where ``c_in`` is the
    condition at this block's input resolution; with ``prior_kept`` the kept half is
    concatenated to the condition (standard Glow's dependence, for ablation). The top block
    (``split=False``) keeps all 4C channels under a learned unconditional prior.
    """

    def __init__(self, in_channel: int, n_flow: int, split: bool = True, affine: bool = False,
                 conv_lu: bool = True, hidden: int = 512, prior_kept: bool = False) -> None:
        super().__init__()
        self.flows = nn.ModuleList(
            Flow(in_channel * 4, affine=affine, conv_lu=conv_lu, hidden=hidden)
            for _ in range(n_flow))
        self.split = split
        self.prior_kept = prior_kept and split
        if split:
            self.cond = CondConv(in_channel, in_channel * 2)
            extra = in_channel * 2 if self.prior_kept else 0
            self.prior_c = ZeroConv2d(in_channel * 2 + extra, in_channel * 4)
        else:
            self.prior = ZeroConv2d(in_channel * 4, in_channel * 8)

    def prior_params(self, cond: Tensor | None, kept: Tensor | None,
                     like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean, log_sd) of this block's latent.

        Split block: from this level's condition ``cond`` (the pyramid's output here,
        [B, 2C, H/2, W/2]) and, with ``prior_kept``, the kept half. Top block: constant, from a
        zero input shaped like ``like`` (the top latent).
        """
        if self.split:
            src = torch.cat([cond, kept], 1) if self.prior_kept else cond
            return self.prior_c(src).chunk(2, 1)
        zero = like.new_zeros(1, *like.shape[1:])
        mean, log_sd = self.prior(zero).chunk(2, 1)
        return mean.expand_as(like), log_sd.expand_as(like)

    def flow_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return flows_forward(self.flows, x)

    def flow_reverse(self, y: Tensor) -> Tensor:
        return flows_reverse(self.flows, y)


class MIFlow(nn.Module):
    """Conditional Glow of MI-flow over images in [-0.5, 0.5].

    ``model(x)`` returns ``(log_p [B], logdet [B], log_c [B], z_list, conds)``: ``log_p`` is the
    top latent's log-density under its unconditional prior, ``log_c`` the split latents' under
    their conditional priors, ``z_list[i]`` block ``i``'s latent (last: the top), ``conds[i]``
    the condition of split block ``i``'s prior ([B, 2C_i, H_i/2, W_i/2]; ``n_block - 1``
    entries). The log-likelihood of a dequantised x is ``log_p + log_c + logdet - D log(n_bins)``.

    ``mi_estimator`` (``"club"``/``"club_sample"``) adds a CLUB estimator of the mutual
    information between the top latent and the mouth crop (``self.mi``); ``None`` builds none.
    """

    def __init__(self, in_channel: int = 3, n_flow: int = 32, n_block: int = 4,
                 affine: bool = False, conv_lu: bool = True, hidden: int = 512,
                 img_size: int = 64, prior_kept: bool = False, conv_lu_last: bool | None = None,
                 mi_estimator: str | None = None, mi_hidden: int = 256,
                 mi_cond_pool: int = 4) -> None:
        super().__init__()
        if n_block < 2:
            raise ValueError("MI-flow needs n_block >= 2 (at least one conditioned split)")
        self.in_channel, self.n_flow, self.n_block = in_channel, n_flow, n_block
        self.affine, self.conv_lu, self.hidden, self.img_size = affine, conv_lu, hidden, img_size
        self.prior_kept = prior_kept
        # The thesis builds its top block with LU whatever --no_lu says; ``conv_lu_last``
        # mirrors that when loading its state dicts.
        self.conv_lu_last = conv_lu if conv_lu_last is None else conv_lu_last
        self.blocks = nn.ModuleList()
        c = in_channel
        for _ in range(n_block - 1):
            self.blocks.append(CondBlock(c, n_flow, True, affine, conv_lu, hidden, prior_kept))
            c *= 2
        self.blocks.append(CondBlock(c, n_flow, False, affine, self.conv_lu_last, hidden))
        install(self.blocks)  # the layers' fast twins (glow.fast)
        self.mi_estimator, self.mi_hidden, self.mi_cond_pool = mi_estimator, mi_hidden, mi_cond_pool
        self.mi: CLUB | None = None
        if mi_estimator is not None:
            top = self.z_shapes()[-1]
            self.mi = CLUB(math.prod(top), in_channel * mi_cond_pool**2, mi_hidden,
                           sample=mi_estimator == "club_sample")

    # -- conditions ----------------------------------------------------------------------------

    def conditions(self, x: Tensor) -> list[Tensor]:
        """The split priors' conditions of images ``x`` [B, C, S, S] (no flow is run)."""
        c = mask_condition(x)
        conds = []
        for block in self.blocks[:-1]:
            c = block.cond(c)
            conds.append(c)
        return conds

    def mi_condition(self, x: Tensor) -> Tensor:
        """The condition as the MI estimator sees it: the mouth window of ``x`` average-pooled
        to ``mi_cond_pool`` x ``mi_cond_pool``, flattened: [B, C * pool^2]. Data, not learned,
        so the flow cannot lower the MI estimate by degrading the condition features."""
        t, b, left, r = mouth_window(x.shape[-1])
        crop = x[:, :, t:b, left:r]
        return F.adaptive_avg_pool2d(crop, self.mi_cond_pool).flatten(1)

    # -- density -------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
        c = mask_condition(x)
        logdet = x.new_zeros(x.shape[0])
        log_c = x.new_zeros(x.shape[0])
        z_list: list[Tensor] = []
        conds: list[Tensor] = []
        out = x
        log_p = None
        for block in self.blocks:
            out, det = block.flow_forward(out)
            logdet = logdet + det
            if block.split:
                out, z = out.chunk(2, 1)
                c = block.cond(c)
                conds.append(c)
                mean, log_sd = block.prior_params(c, out)
                log_c = log_c + gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)
            else:
                z = out
                mean, log_sd = block.prior_params(None, None, like=z)
                log_p = gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)
            z_list.append(z)
        return log_p, logdet, log_c, z_list, conds

    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(latents, conditions) of ``x``."""
        out = self.forward(x)
        return out[3], out[4]

    def reverse(self, z_list: Sequence[Tensor | None], conds: Sequence[Tensor],
                temperature: float = 1.0, eps: Sequence[Tensor | None] | None = None) -> Tensor:
        """Latents -> image.

        A tensor entry of ``z_list`` is used as is (exact inversion). A ``None`` entry is drawn
        from its prior: ``mean + exp(log_sd) * temperature * eps`` with ``eps[i]`` when given,
        fresh standard-normal noise otherwise (``temperature=0``: the prior mean). Split priors
        use ``conds`` (and, with ``prior_kept``, the kept half being inverted).
        """
        if len(z_list) != self.n_block:
            raise ValueError(f"expected {self.n_block} latents, got {len(z_list)}")
        if len(conds) != self.n_block - 1:
            raise ValueError(f"expected {self.n_block - 1} conditions, got {len(conds)}")
        eps = list(eps) if eps is not None else [None] * self.n_block
        shapes = self.z_shapes(conds[0].shape[-1] * 2)
        ref = conds[0]
        out: Tensor | None = None
        for i in reversed(range(self.n_block)):
            block, z = self.blocks[i], z_list[i]
            if z is None:
                if block.split:
                    mean, log_sd = block.prior_params(conds[i], out)
                else:
                    like = ref.new_zeros(ref.shape[0], *shapes[-1])
                    mean, log_sd = block.prior_params(None, None, like=like)
                noise = eps[i] if eps[i] is not None else torch.randn_like(mean)
                z = mean + torch.exp(log_sd) * (temperature * noise)
            y = torch.cat([out, z], 1) if block.split else z
            out = block.flow_reverse(y)
        return out

    # -- helpers -------------------------------------------------------------------------------

    def z_shapes(self, img_size: int | None = None) -> list[tuple[int, int, int]]:
        """Shapes (C, H, W) of the latents for a square input of ``img_size``."""
        return latent_shapes(self.in_channel, self.n_block,
                             self.img_size if img_size is None else img_size)

    def initialize(self, x: Tensor) -> None:
        """Data-dependent ActNorm initialisation from a batch ``x`` (explicit, once)."""
        initialize_actnorms(self.blocks, x)

    @property
    def initialized(self) -> bool:
        return actnorms_initialized(self)

    def flow_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the MI estimator's."""
        skip = {id(p) for p in self.mi.parameters()} if self.mi is not None else set()
        return [p for p in self.parameters() if id(p) not in skip]

    def config(self) -> dict:
        """Constructor arguments."""
        return dict(in_channel=self.in_channel, n_flow=self.n_flow, n_block=self.n_block,
                    affine=self.affine, conv_lu=self.conv_lu, hidden=self.hidden,
                    img_size=self.img_size, prior_kept=self.prior_kept,
                    conv_lu_last=self.conv_lu_last, mi_estimator=self.mi_estimator,
                    mi_hidden=self.mi_hidden, mi_cond_pool=self.mi_cond_pool)
