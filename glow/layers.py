"""Invertible layers of Glow (Kingma & Dhariwal, 2018), written as the mathematics.

Every bijective layer follows one contract, direction data -> latent:

    forward(x, cond=None) -> (y, logdet)   # logdet: log|det dy/dx|, shape [B]
    reverse(y, cond=None) -> x

Attribute and buffer names follow the widely used rosinality/glow-pytorch layout, so a state
dict of that code (the thesis's ``glow_checkpoint.pt``) loads without renaming. The speed-ups
are these classes' fast twins in :mod:`glow.fast`, switched on by :func:`glow.fast.install`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def random_rotation(n: int) -> Tensor:
    """A random orthogonal [n, n] matrix: the 1x1 convolutions' start (the identity inside
    :func:`glow.fast.no_random_init`, which replaces this function meanwhile)."""
    return torch.linalg.qr(torch.randn(n, n))[0]


def _per_sample(value: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar log-det to shape [B] (``x``'s dtype, at least float32)."""
    return value.to(torch.promote_types(x.dtype, torch.float32)).expand(x.shape[0])


class ActNorm(nn.Module):
    """Per-channel affine normalisation ``y = scale * (x + loc)``.

    Data-dependent initialisation is an explicit step: :meth:`initialize` on a first batch sets
    ``loc = -mean`` and ``scale = 1 / (std + 1e-6)`` per channel and marks the ``initialized``
    buffer. ``forward`` never initialises behind the caller's back.
    """

    def __init__(self, in_channel: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, in_channel, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set loc/scale from ``x`` [B, C, H, W] so the output has zero mean, unit std."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.copy_(-mean)
        self.scale.copy_(1 / (std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h, w = x.shape[2], x.shape[3]
        logdet = h * w * torch.log(torch.abs(self.scale)).sum()
        return self.scale * (x + self.loc), _per_sample(logdet, x)

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        return y / self.scale - self.loc


def fp32_region(x: Tensor):
    """A context with autocast off on ``x``'s device when autocast is on there (else a no-op).

    Log-determinants, priors and the invertible path (ActNorm, 1x1 convolutions, the coupling's
    affine arithmetic) run in float32 under mixed precision: only the coupling conditioners
    take the low-precision path. Sums of thousands of bf16 log terms lose whole units, and a
    bf16 1x1 convolution is not inverted by its reverse to the precision low-memory training
    and exact reconstruction need.
    """
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class _InvConv1x1(nn.Module):
    """What both invertible 1x1 convolutions share: ``y = W x`` at every pixel, log-det
    ``H * W * log|det W|``. Subclasses give ``weight_logdet()``, (W [C, C], log|det W|)
    differentiably, and ``inverse()``, W^-1 [C, C] (computed in float64)."""

    @staticmethod
    def conv(x: Tensor, weight: Tensor) -> Tensor:
        """x [B, C, H, W], weight [O, C] -> [B, O, H, W]."""
        return F.conv2d(x, weight[:, :, None, None])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with fp32_region(x):
            w, logabsdet = self.weight_logdet()
            logdet = x.shape[2] * x.shape[3] * logabsdet
            return self.conv(x.to(w.dtype), w), _per_sample(logdet, x)

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        with fp32_region(y):
            w_inv = self.inverse()
            return self.conv(y.to(w_inv.dtype), w_inv)


class InvConv2d(_InvConv1x1):
    """Invertible 1x1 convolution with an unconstrained weight (initialised orthogonal)."""

    def __init__(self, in_channel: int) -> None:
        super().__init__()
        q = random_rotation(in_channel)
        self.weight = nn.Parameter(q.unsqueeze(2).unsqueeze(3))

    def weight_logdet(self) -> tuple[Tensor, Tensor]:
        w = self.weight[:, :, 0, 0]
        return w, torch.linalg.slogdet(w.double())[1].to(w.dtype)

    def inverse(self) -> Tensor:
        w = self.weight[:, :, 0, 0]
        return torch.linalg.inv(w.double()).to(w.dtype)


class InvConv2dLU(_InvConv1x1):
    """Invertible 1x1 convolution in LU form: ``W = P L (U + diag(sign(s) * exp(log|s|)))``.

    ``P``, the masks and ``sign(s)`` are buffers; ``L``, ``U`` and ``log|s|`` are learned, so
    ``log|det W| = sum(log|s|)`` costs nothing.
    """

    def __init__(self, in_channel: int) -> None:
        super().__init__()
        q = random_rotation(in_channel)
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper).clone()
        u_mask = torch.triu(torch.ones(in_channel, in_channel), 1)
        self.register_buffer("w_p", p)
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer("s_sign", torch.sign(s))
        self.register_buffer("l_eye", torch.eye(in_channel))
        self.w_l = nn.Parameter(lower)
        self.w_s = nn.Parameter(torch.log(torch.abs(s)))
        self.w_u = nn.Parameter(torch.triu(upper, 1))

    def calc_weight(self) -> Tensor:
        """The [C, C] weight matrix from its LU factors (differentiable)."""
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return self.w_p @ lower @ upper

    def weight_logdet(self) -> tuple[Tensor, Tensor]:
        return self.calc_weight(), self.w_s.sum()

    def inverse(self) -> Tensor:
        w = self.calc_weight()
        return torch.linalg.inv(w.double()).to(w.dtype)


class ZeroConv2d(nn.Module):
    """3x3 convolution padded with the value 1, zero-initialised, output ``* exp(3 * scale)``."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, [1, 1, 1, 1], value=1.0)) * torch.exp(self.scale * 3)


class ConditionerNet(nn.Sequential):
    """The Glow conditioner, an ``nn.Sequential`` in the reference layout (state dict and
    indexing), named so that :mod:`glow.fast` can tell it from other sequences."""


def coupling_net(in_channel: int, out_channel: int, hidden: int = 512) -> ConditionerNet:
    """The Glow conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv2d."""
    net = ConditionerNet(nn.Conv2d(in_channel, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
                         ZeroConv2d(hidden, out_channel))
    for i in (0, 2):
        nn.init.normal_(net[i].weight, 0, 0.05)
        nn.init.zeros_(net[i].bias)
    return net


def conditioner_input(net: nn.Module, h: Tensor) -> Tensor:
    """``h`` in the conditioner's dtype when the net was cast to bf16/fp16 for inference
    (:func:`glow.precision.cast_conditioners`); otherwise ``h`` unchanged."""
    p = next(net.parameters(), None)
    if p is not None and p.dtype != h.dtype and p.dtype in (torch.bfloat16, torch.float16):
        return h.to(p.dtype)
    return h


class Coupling(nn.Module):
    """Additive or affine coupling: the first half of the channels conditions the second.

    additive: ``y_b = x_b + t(x_a)``; affine: ``y_b = (x_b + t) * sigmoid(log_s + 2)`` with
    ``(log_s, t) = net(x_a)``. The conditioner is injected (``net``); when a ``cond`` tensor is
    given it is concatenated to ``x_a`` along channels, so the net must expect
    ``C/2 + cond_channels`` inputs.
    """

    def __init__(self, in_channel: int, affine: bool = False, hidden: int = 512,
                 net: nn.Module | None = None, cond_channel: int = 0) -> None:
        super().__init__()
        self.affine = affine
        out = in_channel if affine else in_channel // 2
        self.net = net if net is not None else coupling_net(
            in_channel // 2 + cond_channel, out, hidden)

    def _params(self, x_a: Tensor, cond: Tensor | None) -> Tensor:
        h = x_a if cond is None else torch.cat([x_a, cond], 1)
        # The conditioner is nearly all of Glow's compute; oneDNN's convolutions (forward and
        # backward) run markedly faster on channels-last tensors, and ``x_a`` (a channel slice)
        # needs a copy anyway. The output keeps that layout; callers see no difference.
        h = conditioner_input(self.net, h.contiguous(memory_format=torch.channels_last))
        out = self.net(h)
        # Under autocast (or with the net cast to bf16, glow.precision) the conditioner runs in
        # low precision; everything after it (the affine arithmetic, log-sigmoid and its sum)
        # stays in the activations' precision.
        return out.to(torch.promote_types(x_a.dtype, torch.float32))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.chunk(2, 1)
        h = self._params(x_a, cond)
        if self.affine:
            log_s, t = h.chunk(2, 1)
            s = torch.sigmoid(log_s + 2)
            y_b = (x_b + t) * s
            logdet = F.logsigmoid(log_s + 2).flatten(1).sum(1)
        else:
            y_b = x_b + h
            logdet = x.new_zeros(x.shape[0])
        return torch.cat([x_a, y_b], 1), logdet

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y_a, y_b = y.chunk(2, 1)
        h = self._params(y_a, cond)
        if self.affine:
            log_s, t = h.chunk(2, 1)
            x_b = y_b / torch.sigmoid(log_s + 2) - t
        else:
            x_b = y_b - h
        return torch.cat([y_a, x_b], 1)



class Flow(nn.Module):
    """One step of flow: ActNorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, in_channel: int, affine: bool = False, conv_lu: bool = True,
                 hidden: int = 512, coupling: nn.Module | None = None) -> None:
        super().__init__()
        self.actnorm = ActNorm(in_channel)
        self.invconv = InvConv2dLU(in_channel) if conv_lu else InvConv2d(in_channel)
        self.coupling = coupling if coupling is not None else Coupling(
            in_channel, affine=affine, hidden=hidden)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with fp32_region(x):  # ActNorm + 1x1 conv and their log-dets: full precision
            out, logdet = self.actnorm(x)
            out, det1 = self.invconv(out)
        out, det2 = self.coupling(out, cond)
        return out, logdet + det1 + det2

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        x = self.coupling.reverse(y, cond)
        with fp32_region(x):
            return self.actnorm.reverse(self.invconv.reverse(x))


def squeeze2d(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2] (space to depth, reference channel order)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class Squeeze(nn.Module):
    """Space-to-depth as a layer with the common contract (volume preserving)."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        return unsqueeze2d(y)


def gaussian_log_p(x: Tensor, mean: Tensor, log_sd: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(log_sd)^2)."""
    return -0.5 * LOG_2PI - log_sd - 0.5 * (x - mean) ** 2 * torch.exp(-2 * log_sd)


def gaussian_sample(eps: Tensor, mean: Tensor, log_sd: Tensor) -> Tensor:
    """Map standard-normal ``eps`` through N(mean, exp(log_sd)^2)."""
    return mean + torch.exp(log_sd) * eps
