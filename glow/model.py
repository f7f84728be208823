"""Multi-scale Glow: blocks of (squeeze, K flows, split with a learned prior)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .fast import EvalCache, install, invalidate_caches, use_cache
from .layers import (
    ActNorm,
    Flow,
    ZeroConv2d,
    fp32_region,
    gaussian_log_p,
    gaussian_sample,
    squeeze2d,
    unsqueeze2d,
)
from .memory import reversible_forward


def latent_shapes(in_channel: int, n_block: int, img_size: int) -> list[tuple[int, int, int]]:
    """Shapes (C, H, W) of a multi-scale Glow's latents, one per block, for a square input."""
    size, c, shapes = img_size, in_channel, []
    for _ in range(n_block - 1):
        size //= 2
        c *= 2
        shapes.append((c, size, size))
    size //= 2
    shapes.append((c * 4, size, size))
    return shapes


def flows_forward(flows: Sequence[nn.Module], x: Tensor,
                  low_memory: bool = False) -> tuple[Tensor, Tensor]:
    """Squeeze and run a stack of flows: [B,C,H,W] -> ([B,4C,H/2,W/2], logdet [B]).

    ``low_memory`` recomputes the activations in backward (:mod:`glow.memory`).
    """
    out = squeeze2d(x)
    if low_memory:
        return reversible_forward(flows, out)
    logdet = x.new_zeros(x.shape[0])
    for flow in flows:
        out, det = flow(out)
        logdet = logdet + det
    return out, logdet


def flows_reverse(flows: Sequence[nn.Module], y: Tensor) -> Tensor:
    """Inverse of :func:`flows_forward`."""
    for flow in reversed(flows):
        y = flow.reverse(y)
    return unsqueeze2d(y)


@torch.no_grad()
def initialize_actnorms(blocks: Sequence[nn.Module], x: Tensor) -> None:
    """Data-dependent ActNorm initialisation of a stack of blocks from a batch ``x``.

    Works for any blocks exposing ``flows`` and ``split`` (Glow's and MI-flow's): each flow's
    ActNorm is initialised from its own input, then the batch is pushed through that flow.
    """
    out = x
    for block in blocks:
        h = squeeze2d(out)
        for flow in block.flows:
            flow.actnorm.initialize(h)
            h, _ = flow(h)
        out = h.chunk(2, 1)[0] if block.split else h


def actnorms_initialized(module: nn.Module) -> bool:
    """True when every ActNorm inside ``module`` has been initialised."""
    return all(bool(m.initialized) for m in module.modules() if isinstance(m, ActNorm))


class Block(EvalCache, nn.Module):
    """Squeeze, ``n_flow`` flows, then split half the channels off under a learned prior.

    With ``split=True`` the prior of the split half is a Gaussian whose mean and log-sd come
    from the kept half (``ZeroConv2d(2C, 4C)``); the last block (``split=False``) keeps all
    channels and takes its prior from a zero input (``ZeroConv2d(4C, 8C)``).
    """

    def __init__(self, in_channel: int, n_flow: int, split: bool = True, affine: bool = False,
                 conv_lu: bool = True, hidden: int = 512) -> None:
        super().__init__()
        squeeze_dim = in_channel * 4
        self.flows = nn.ModuleList(
            Flow(squeeze_dim, affine=affine, conv_lu=conv_lu, hidden=hidden) for _ in range(n_flow)
        )
        self.split = split
        # Recompute activations in backward instead of storing them (glow.memory).
        self.low_memory = False
        if split:
            self.prior = ZeroConv2d(in_channel * 2, in_channel * 4)
        else:
            self.prior = ZeroConv2d(in_channel * 4, in_channel * 8)

    def prior_params(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_sd) of this block's latent, given the kept half (or the top latent).

        Always float32 or wider: under autocast the prior runs with autocast off.
        """
        with fp32_region(kept):
            kept = kept.to(torch.promote_types(kept.dtype, self.prior.scale.dtype))
            if self.split:
                return self.prior(kept).chunk(2, 1)
            return self._top_prior(kept)

    def _top_prior(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The last block's prior, computed from zeros shaped like ``like``: it depends only on
        the shape and the prior's parameters, so outside training it is computed once per shape
        (:class:`glow.fast.EvalCache`)."""
        def compute() -> tuple[Tensor, Tensor]:
            return self.prior(torch.zeros_like(like)).chunk(2, 1)
        if self.training or not use_cache(self.prior):
            return compute()
        return self._cached(list(self.prior.parameters()), compute, tuple(like.shape),
                            like.dtype, like.device)

    def flow_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Squeeze and run the flows: [B,C,H,W] -> ([B,4C,H/2,W/2], logdet [B])."""
        return flows_forward(self.flows, x, self.low_memory)

    def flow_reverse(self, y: Tensor) -> Tensor:
        return flows_reverse(self.flows, y)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [B,C,H,W] -> (kept, logdet [B], log_p [B], z_new)."""
        out, logdet = self.flow_forward(x)
        if self.split:
            out, z_new = out.chunk(2, 1)
            mean, log_sd = self.prior_params(out)
        else:
            z_new = out
            mean, log_sd = self.prior_params(out)
        with fp32_region(z_new):
            log_p = gaussian_log_p(z_new.to(mean.dtype), mean, log_sd).flatten(1).sum(1)
        return out, logdet, log_p, z_new

    def reverse(self, kept: Tensor | None, z: Tensor | None, reconstruct: bool = True,
                temperature: float = 1.0, top_like: Tensor | None = None) -> Tensor:
        """Invert the block.

        ``reconstruct=True``: ``z`` is this level's latent, used as is (``None`` samples it
        from the prior at ``temperature``). ``reconstruct=False``: ``z`` is standard-normal
        noise mapped through the prior, ``mean + exp(log_sd) * z`` (the reference's sampling).
        For the top block ``kept`` is ignored; sampling it (``z=None``) needs ``top_like``, any
        tensor of the top latent's shape [B, 4C, H/2, W/2] (only its shape, dtype and device
        are read).
        """
        if z is None or not reconstruct:  # inverting given latents needs no prior
            if self.split:
                source = kept
            elif z is not None:
                source = z
            elif top_like is not None:
                source = top_like
            else:
                raise ValueError("sampling the top latent needs its shape (top_like)")
            mean, log_sd = self.prior_params(source)
            if z is None:
                z = gaussian_sample(temperature * torch.randn_like(mean), mean, log_sd)
            else:
                z = gaussian_sample(z, mean, log_sd)
        y = torch.cat([kept, z], 1) if self.split else z
        return self.flow_reverse(y)


class Glow(nn.Module):
    """Multi-scale Glow over images in [-0.5, 0.5].

    ``model(x)`` returns ``(log_p [B], logdet [B], z_list)`` where ``z_list[i]`` is the latent
    split off by block ``i`` (the last entry is the top latent); for 3x64x64 and 4 blocks:
    6x32x32, 12x16x16, 24x8x8, 96x4x4. The total log-likelihood of a dequantised x is
    ``log_p + logdet - D * log(n_bins)``.
    """

    def __init__(self, in_channel: int = 3, n_flow: int = 32, n_block: int = 4,
                 affine: bool = False, conv_lu: bool = True, hidden: int = 512,
                 img_size: int = 64, conv_lu_last: bool | None = None) -> None:
        super().__init__()
        self.in_channel, self.n_flow, self.n_block = in_channel, n_flow, n_block
        self.affine, self.conv_lu, self.hidden, self.img_size = affine, conv_lu, hidden, img_size
        # The reference code always builds its last block with LU; ``conv_lu_last`` mirrors that
        # when loading its checkpoints trained with --no_lu.
        last_lu = conv_lu if conv_lu_last is None else conv_lu_last
        self.blocks = nn.ModuleList()
        c = in_channel
        for _ in range(n_block - 1):
            self.blocks.append(Block(c, n_flow, True, affine, conv_lu, hidden))
            c *= 2
        self.blocks.append(Block(c, n_flow, False, affine, last_lu, hidden))
        install(self)  # the layers' fast twins (glow.fast): the same functions, faster

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        log_p = x.new_zeros(x.shape[0])
        logdet = x.new_zeros(x.shape[0])
        z_list: list[Tensor] = []
        out = x
        for block in self.blocks:
            out, det, lp, z = block(out)
            z_list.append(z)
            logdet = logdet + det
            log_p = log_p + lp
        return log_p, logdet, z_list

    def encode(self, x: Tensor) -> list[Tensor]:
        """Latents only (the ``z_list`` of :meth:`forward`)."""
        return self.forward(x)[2]

    def reverse(self, z_list: Sequence[Tensor | None], reconstruct: bool = True,
                temperature: float = 1.0, batch: int = 1,
                img_size: int | None = None) -> Tensor:
        """Latents -> image.

        ``reconstruct=True`` inverts exactly; an entry that is ``None`` is sampled from its
        (learned, conditional) prior at ``temperature``. ``reconstruct=False`` reads every entry
        as standard-normal noise and maps it through its prior (scale the noise by a
        temperature yourself), as the reference implementation does. With every entry ``None``
        the output is ``batch`` samples of ``img_size`` (default: the model's); otherwise the
        batch and size follow from the given latents.
        """
        if len(z_list) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} latents, got {len(z_list)}")
        top_like = None
        if z_list[-1] is None:
            # The top latent's shape follows from any given latent (batch and spatial size
            # scale together) or, with every entry None, from ``batch`` and ``img_size``.
            given = next(((i, z) for i, z in enumerate(z_list) if z is not None), None)
            p = next(self.parameters())
            if given is None:
                n, size = batch, self.img_size if img_size is None else img_size
            else:
                n, size = given[1].shape[0], given[1].shape[-1] * 2 ** (given[0] + 1)
            c, h, w = self.z_shapes(size)[-1]
            dtype = p.dtype if given is None else given[1].dtype
            device = p.device if given is None else given[1].device
            top_like = torch.empty((n, c, h, w), dtype=dtype, device=device)
        out: Tensor | None = None
        for i, block in enumerate(reversed(self.blocks)):
            z = z_list[-(i + 1)]
            out = block.reverse(out, z, reconstruct=reconstruct, temperature=temperature,
                                top_like=top_like if i == 0 else None)
        return out

    def invalidate(self) -> Glow:
        """Drop every eval-mode cache; call it after editing parameters through ``.data``.

        Optimiser steps, ``load_state_dict``, in-place edits of the parameters themselves and
        ``train()``/``eval()`` are detected without it (:func:`glow.fast.cache_key`).
        """
        return invalidate_caches(self)

    def z_shapes(self, img_size: int | None = None) -> list[tuple[int, int, int]]:
        """Shapes (C, H, W) of the latents for a square input of ``img_size``."""
        return latent_shapes(self.in_channel, self.n_block,
                             self.img_size if img_size is None else img_size)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7, img_size: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples [n, C, H, W] at ``temperature`` (noise scaled, then mapped by priors)."""
        p = next(self.parameters())
        z = [temperature * torch.randn((n, *s), generator=generator, device=p.device, dtype=p.dtype)
             if generator is None or generator.device == p.device else
             (temperature * torch.randn((n, *s), generator=generator)).to(p.device, p.dtype)
             for s in self.z_shapes(img_size)]
        return self.reverse(z, reconstruct=False)

    def initialize(self, x: Tensor) -> None:
        """Data-dependent ActNorm initialisation from a batch ``x`` (explicit, once)."""
        initialize_actnorms(self.blocks, x)

    @property
    def initialized(self) -> bool:
        return actnorms_initialized(self)

    def config(self) -> dict:
        """Constructor arguments (for self-describing checkpoints)."""
        return dict(in_channel=self.in_channel, n_flow=self.n_flow, n_block=self.n_block,
                    affine=self.affine, conv_lu=self.conv_lu, hidden=self.hidden,
                    img_size=self.img_size)
