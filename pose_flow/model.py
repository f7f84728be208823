"""The pose-conditioned Glow: the landmark maps of every level enter every conditioned coupling.

Direction data -> latent (the layer contract of :mod:`glow.layers`). Layout (the anchor's at
64 px, ``n_block=4, n_header=2``):

    3x64x64   first block, no squeeze, n_flow//2 unconditioned flows
    12x32x32  split block 1 (squeeze, n_flow flows on the 32 px condition, split 6 off)
    24x16x16  split block 2 ...                                   (split 12 off)
    48x8x8    split block 3                                       (split 24 off)
    96x4x4    split block 4                                       (split 48 off)
    192x2x2   header 1 (squeeze, n_flow flows, no split)
    768x1x1   header 2 -> w, the appearance code

Priors: each split latent has a learned Gaussian whose mean and log-sd come from a zero-initialised
conv of (kept half, this level's condition); ``w`` has a learned mean and log-sd (unconditional:
it must not carry pose). ``prior="standard"`` uses N(0, I) everywhere (the anchor).

``reference="warp"`` (ours; the anchor has no such mode) models an image *given a reference
image of the same face*: the reference is warped piecewise-affinely by the landmark motion
(:mod:`pose_flow.warp`), the flow runs on the residual ``x - warped`` (a shift: log-det 0, so the
likelihood is the exact conditional density of ``x``), and every block's condition also carries
the warped reference at that block's resolution (squeezed, so no detail is pooled away; the
first block sees it whole). A transfer is then ``warped + reverse(w prior mean, conditions, split
prior means)``: it starts at the warp and the flow learns what a warp cannot draw (an opening
mouth's inside, the shading of a turned head).

``reference="warp_motion"`` is ``"warp"`` with the warp's motion in the condition too: two more
channels beside the warped reference, the displacement from each output pixel to the point of
the reference it was sampled from (``MOTION_SCALE`` x image units). The warp pins the image's
border, so how far a turned head's hair and outline are off depends on where the face came from,
which the target's landmarks and the warped image alone do not say.

Everything the glow core provides is reused: ``glow.Flow`` (ActNorm with its ``initialized``
buffer, LU 1x1 conv, fused eval path), ``glow.Coupling`` with an injected conditioner and a
``cond`` tensor, ``glow.ZeroConv2d`` (zero-initialised at construction, no lazy re-creation).
:class:`PoseCoupling` only adds an uneven channel split, so the 3-channel first block works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow import ActNorm, Coupling, Flow, gaussian_log_p, squeeze2d, unsqueeze2d
from glow.fast import InvConv2dLU, ZeroConv2d, install, use_cache
from glow.layers import conditioner_input

from .conditions import cond_channels, condition, mirror_landmarks, pixel_centres
from .conditions import mirror as mirror_faces  # "mirror" is render()'s flag
from .warp import piecewise_affine

MIRRORED = "mirrored "
"""Key prefix of the mirrored faces' appearance in :meth:`PoseFlow.appearance` (``mirror=True``)."""

# The anchor's conditioner widths per level at 64 px: first block, 4 split blocks, 2 headers.
ANCHOR_HIDDEN = (64, 128, 128, 256, 256, 512, 512)
PRIORS = ("learned", "standard")
REFERENCES = ("none", "warp", "warp_motion")
# ``warp_motion``: the displacement channels are this many times the displacement in image units
# (a head turn moves points by up to ~0.1 of the image: about the range of the other inputs)
MOTION_SCALE = 10.0


def _draw(mean: Tensor, log_sd: Tensor, temperature: float, eps: Tensor | None) -> Tensor:
    """``mean + exp(log_sd) * temperature * eps`` (fresh standard-normal ``eps`` when None);
    the mean itself at temperature 0."""
    if temperature == 0:
        return mean
    noise = eps if eps is not None else torch.randn_like(mean)
    return mean + torch.exp(log_sd) * (temperature * noise)


class _OnePixelConv(torch.autograd.Function):
    """A 3x3 convolution of a 1x1 map padded with ones: ``x [B, I, 1, 1]``, ``weight
    [O, I, 3, 3]`` -> ``[B, O, 1, 1]`` = centre tap on ``x`` + the outer taps summed, + bias.
    The backward writes the weight's gradient once (autograd through a sum and a slice would
    materialise and add several weight-sized tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        centre = weight[:, :, 1, 1]
        border = weight.sum((1, 2, 3)) - centre.sum(1)
        return (x.flatten(1) @ centre.T + (bias + border))[:, :, None, None]

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.flatten(1)  # [B, O]
        grad_x = (g @ weight[:, :, 1, 1])[:, :, None, None]
        grad_w = g.sum(0)[:, None, None, None].expand_as(weight).clone()
        grad_w[:, :, 1, 1] = g.T @ x.flatten(1)
        return grad_x, grad_w, g.sum(0)


class SmallMapZeroConv(ZeroConv2d):
    """``glow.ZeroConv2d`` (same parameters, same function) made cheap on tiny maps.

    glow's version avoids a padded copy of the input by adding a border correction computed
    from the weight, which uses the weight twice. On the header levels (2x2 and 1x1 maps, up
    to 768 channels) the weight is far larger than the activation: at 2x2 the plain
    pad-then-convolve is cheaper, at 1x1 the centre tap alone does the work.
    """

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        if h * w > 4:
            return super().forward(x)
        weight, bias = self.conv.weight, self.conv.bias
        if h == w == 1:
            # On a 1x1 map the eight outer taps only ever see the padding (ones): the 3x3
            # convolution is the centre tap as a 1x1 convolution plus a constant per output.
            out = _OnePixelConv.apply(x, weight, bias)
        else:
            out = F.conv2d(F.pad(x, [1, 1, 1, 1], value=1.0), weight, bias)
        return out * torch.exp(self.scale * 3)


class FactorInvConvLU(InvConv2dLU):
    """``glow.InvConv2dLU`` (same parameters and buffers) that applies its factors directly.

    In training the weight ``W = P L U`` is rebuilt every step; on the pose flow's deep, thin
    levels (a 768-channel 1x1 map at 64 px) building it costs ``C^3`` multiply-adds while the
    convolution itself costs ``N C^2`` for ``N`` batch pixels. So: with ``N < C`` the factors
    are applied to the pixels (``U``, then ``L``, then the permutation as an index), otherwise
    ``L U`` is formed once and permuted by indexing (``P`` is a permutation: no product
    needed). The inverse uses triangular solves the same way instead of a general inverse.
    Eval mode with no gradient keeps glow's cached weight and inverse.
    """

    def _perm(self) -> Tensor:
        """``idx`` with ``(P M)[i] = M[idx[i]]``, cached on the buffer's version."""
        key = (self.w_p._version, self.w_p.device)
        cache = self.__dict__.get("_perm_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.w_p.argmax(1))
            self.__dict__["_perm_cache"] = cache
        return cache[1]

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return lower, upper

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if use_cache(self):
            return super().forward(x)
        b, c, h, w = x.shape
        lower, upper = self._factors()
        logdet = (h * w * self.w_s.sum()).to(x.dtype).expand(b)
        if b * h * w < c:
            flat = x.permute(1, 0, 2, 3).reshape(c, -1)
            y = (lower @ (upper @ flat))[self._perm()]
            return y.reshape(c, b, h, w).permute(1, 0, 2, 3), logdet
        weight = (lower @ upper)[self._perm()]
        return F.conv2d(x, weight[:, :, None, None]), logdet

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        if use_cache(self):
            return super().reverse(y)
        b, c, h, w = y.shape
        lower, upper = self._factors()
        inv_perm = torch.empty_like(self._perm())
        inv_perm[self._perm()] = torch.arange(c, device=y.device)
        if b * h * w < c:
            flat = y.permute(1, 0, 2, 3).reshape(c, -1)[inv_perm]
            x = torch.linalg.solve_triangular(
                upper, torch.linalg.solve_triangular(lower, flat, upper=False,
                                                     unitriangular=True), upper=True)
            return x.reshape(c, b, h, w).permute(1, 0, 2, 3)
        eye = self.l_eye[inv_perm]  # P^T as a matrix
        inv = torch.linalg.solve_triangular(
            upper, torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True),
            upper=True)
        return F.conv2d(y, inv[:, :, None, None])


def conditioner(in_channel: int, out_channel: int, hidden: int, kernel: int = 3) -> nn.Sequential:
    """conv kxk -> ReLU -> conv 1x1 -> ReLU -> ZeroConv2d (the Glow conditioner)."""
    net = nn.Sequential(
        nn.Conv2d(in_channel, hidden, kernel, padding=kernel // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(inplace=True),
        SmallMapZeroConv(hidden, out_channel),
    )
    for i in (0, 2):
        net[i].weight.data.normal_(0, 0.05)
        net[i].bias.data.zero_()
    return net


class PoseCoupling(Coupling):
    """Affine (or additive) coupling on ``[x_a, x_b]`` with ``x_a`` the first ``C - C//2``
    channels; the net sees ``cat(x_a, cond)``. ``glow.Coupling`` with an uneven split."""

    def __init__(self, in_channel: int, cond_channel: int, hidden: int, affine: bool = True,
                 kernel: int = 3) -> None:
        n_b = in_channel // 2
        self.n_a = in_channel - n_b
        net = conditioner(self.n_a + cond_channel, 2 * n_b if affine else n_b, hidden, kernel)
        super().__init__(in_channel, affine=affine, net=net, cond_channel=cond_channel)

    def _params(self, x_a: Tensor, cond: Tensor | None) -> Tensor:
        # Plain NCHW: at the pose flow's shapes (small maps, many thin levels) glow.Coupling's
        # channels-last copies cost more than they save, because the elementwise coupling
        # arithmetic then mixes memory formats (measured in bench/pose_flow_step.py).
        h = x_a.contiguous() if cond is None else torch.cat([x_a, cond], 1)
        # a conditioner cast to bf16 (glow.precision) takes its dtype; the rest stays float32
        out = self.net(conditioner_input(self.net, h))
        return out.to(torch.promote_types(x_a.dtype, torch.float32))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a:]
        h = self._params(x_a, cond)
        if self.affine:
            log_s, t = h.chunk(2, 1)
            y_b = (x_b + t) * torch.sigmoid(log_s + 2)
            logdet = F.logsigmoid(log_s + 2).flatten(1).sum(1)
        else:
            y_b, logdet = x_b + h, x.new_zeros(x.shape[0])
        return torch.cat([x_a, y_b], 1), logdet

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a:]
        h = self._params(y_a, cond)
        if self.affine:
            log_s, t = h.chunk(2, 1)
            x_b = y_b / torch.sigmoid(log_s + 2) - t
        else:
            x_b = y_b - h
        return torch.cat([y_a, x_b], 1)


def pose_step(channels: int, cond_channel: int, hidden: int, affine: bool = True,
              kernel: int = 3) -> Flow:
    """One step of flow: ``glow.Flow`` (ActNorm, LU 1x1 conv, coupling) with the pose
    coupling and the factor-applying 1x1 conv (state-dict names unchanged)."""
    flow = Flow(channels, coupling=PoseCoupling(channels, cond_channel, hidden, affine, kernel))
    flow.invconv = FactorInvConvLU(channels)
    return flow


class PoseBlock(nn.Module):
    """(Squeeze), ``n_flow`` conditioned flows, (split half off under a conditional prior).

    Input [B, C, H, W]; with ``squeeze`` the flows run on [B, 4C, H/2, W/2]. ``cond`` is the
    condition at the flows' resolution (or None for an unconditioned block).
    """

    def __init__(self, in_channel: int, n_flow: int, hidden: int, cond_channel: int,
                 squeeze: bool, split: bool, prior: str, size: int, affine: bool = True,
                 prior_hidden: int = 0) -> None:
        super().__init__()
        c = in_channel * 4 if squeeze else in_channel
        self.squeeze, self.split, self.cond_channel = squeeze, split, cond_channel
        self.size = size  # resolution of the flows
        kernel = 1 if size == 1 else 3
        self.flows = nn.ModuleList(pose_step(c, cond_channel, hidden, affine, kernel)
                                   for _ in range(n_flow))
        self.prior = None
        if split and prior == "learned":
            kept = c - c // 2
            # prior_hidden 0: one zero-initialised 3x3 convolution (the split prior is linear in
            # the kept half and the condition); > 0: a conditioner network of that width (also
            # zero at the start), so the prior mean can be a non-linear function of them
            self.prior = (conditioner(kept + cond_channel, 2 * (c // 2), prior_hidden, kernel)
                          if prior_hidden > 0
                          else SmallMapZeroConv(kept + cond_channel, 2 * (c // 2)))

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """x -> (kept or whole output, logdet [B], split latent or None)."""
        out = squeeze2d(x) if self.squeeze else x
        logdet = x.new_zeros(x.shape[0])
        for flow in self.flows:
            out, det = flow(out, cond)
            logdet = logdet + det
        if not self.split:
            return out, logdet, None
        n_a = out.shape[1] - out.shape[1] // 2
        return out[:, :n_a], logdet, out[:, n_a:]

    def reverse(self, out: Tensor, cond: Tensor | None, z: Tensor | None = None) -> Tensor:
        y = torch.cat([out, z], 1) if self.split else out
        for flow in reversed(self.flows):
            y = flow.reverse(y, cond)
        return unsqueeze2d(y) if self.squeeze else y

    def prior_params(self, kept: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mean, log_sd) of the split latent given the kept half and the condition."""
        if self.prior is None:
            zero = kept.new_zeros(kept.shape[0], self.flows[0].actnorm.loc.shape[1] // 2,
                                  *kept.shape[2:])
            return zero, zero
        h = kept if cond is None else torch.cat([kept, cond], 1)
        return self.prior(h).chunk(2, 1)


class PoseFlow(nn.Module):
    """Glow conditioned on landmark maps over images in [-0.5, 0.5].

    ``model(x, landmarks)`` -> ``(log_p [B], logdet [B], w, splits, conds)``: ``w`` the top
    latent (768x1x1 at 64 px), ``splits[i]`` the latent split off by split block ``i``,
    ``conds`` the per-block conditions (None for the first block). The log-likelihood of a
    dequantised x is ``log_p + logdet - D log(n_bins)``.
    """

    def __init__(self, img_size: int = 64, n_flow: int = 16, n_block: int = 4, n_header: int = 2,
                 hidden: int = 0, sigma: float = 0.1, coord_below: int = 8,
                 prior: str = "learned", affine: bool = True, in_channel: int = 3,
                 reference: str = "none", prior_hidden: int = 0) -> None:
        super().__init__()
        if n_block < 1 or n_header < 0 or n_flow < 1:
            raise ValueError("need n_block >= 1, n_header >= 0, n_flow >= 1")
        if img_size % 2 ** (n_block + n_header):
            raise ValueError(f"img_size {img_size} is not divisible by 2^(n_block + n_header)")
        if prior not in PRIORS:
            raise ValueError(f"prior {prior!r}: choose one of {PRIORS}")
        if reference not in REFERENCES:
            raise ValueError(f"reference {reference!r}: choose one of {REFERENCES}")
        if prior_hidden < 0 or (prior_hidden and prior != "learned"):
            raise ValueError("prior_hidden must be >= 0 and needs the learned prior")
        self.img_size, self.n_flow, self.n_block, self.n_header = img_size, n_flow, n_block, n_header
        self.hidden, self.sigma, self.coord_below, self.prior = hidden, sigma, coord_below, prior
        self.affine, self.in_channel, self.reference = affine, in_channel, reference
        self.prior_hidden = prior_hidden
        # reference channels before squeezing: the warped image (and the warp's motion)
        ref = {"none": 0, "warp": in_channel, "warp_motion": in_channel + 2}[reference]
        widths = self.level_widths()
        self.blocks = nn.ModuleList()
        c, size = in_channel, img_size
        # The anchor's first block: no squeeze, half the flows, no condition (with a reference:
        # the warped reference itself).
        self.blocks.append(PoseBlock(c, max(1, n_flow // 2), widths[0], ref, False, False, prior,
                                     size, affine))
        for i in range(n_block + n_header):
            size //= 2
            split = i < n_block
            self.blocks.append(PoseBlock(c, n_flow, widths[i + 1],
                                         cond_channels(size, coord_below) + 4 * ref, True, split,
                                         prior, size, affine, prior_hidden))
            c = c * 4 - (c * 4) // 2 if split else c * 4
        self.w_shape = (c, size, size)
        if prior == "learned":
            self.w_mean = nn.Parameter(torch.zeros(1, *self.w_shape))
            self.w_log_sd = nn.Parameter(torch.zeros(1, *self.w_shape))
        else:
            self.register_buffer("w_mean", torch.zeros(1, *self.w_shape))
            self.register_buffer("w_log_sd", torch.zeros(1, *self.w_shape))
        install(self)  # the layers' fast twins (glow.fast)

    def level_widths(self) -> list[int]:
        n = 1 + self.n_block + self.n_header
        if self.hidden > 0:
            return [self.hidden] * n
        # the anchor's schedule, sampled evenly when there are more or fewer levels than 7
        last = len(ANCHOR_HIDDEN) - 1
        return [ANCHOR_HIDDEN[round(i * last / max(n - 1, 1))] for i in range(n)]

    # -- conditions ----------------------------------------------------------------------------

    def conditions(self, landmarks: Tensor, ref: Tensor | None = None) -> list[Tensor | None]:
        """Per-block conditions of landmarks ``[B, 68, 2]`` (None for the first block). With a
        reference, ``ref`` is :meth:`reference_input`'s ``[B, 3 (+2 with "warp_motion"), S, S]``:
        the first block's condition, and squeezed to every other block's resolution beside its
        landmark maps."""
        lm = landmarks.to(next(self.parameters()).dtype)
        maps = [condition(lm, b.size, self.sigma, self.coord_below) for b in self.blocks[1:]]
        if self.reference == "none":
            return [None, *maps]
        if ref is None:
            raise ValueError("this pose flow models images given a reference: pass the warped "
                             "reference (warp_reference) with the landmarks")
        conds: list[Tensor | None] = [ref]
        for b, m in zip(self.blocks[1:], maps, strict=True):
            r = ref if ref.shape[-1] == 2 * b.size else F.adaptive_avg_pool2d(ref, 2 * b.size)
            conds.append(torch.cat([m, squeeze2d(r)], 1))
        return conds

    def warp_reference(self, ref: Tensor, ref_landmarks: Tensor, landmarks: Tensor) -> Tensor:
        """The reference images ``[B, 3, S, S]`` warped so their landmarks land on
        ``landmarks`` (the piecewise-affine warp of :mod:`pose_flow.warp`)."""
        return piecewise_affine(ref, ref_landmarks, landmarks)

    def reference_input(self, ref: Tensor, ref_landmarks: Tensor, landmarks: Tensor) -> Tensor:
        """What the flow is given as ``ref=``: the warped reference (``"warp"``), with the warp's
        displacement channels after it for ``"warp_motion"`` (the pixel centres warped the same
        way, less the pixel centres: the bilinear sampling of a linear ramp is exact)."""
        if self.reference != "warp_motion":
            return self.warp_reference(ref, ref_landmarks, landmarks)
        b, _, s, _ = ref.shape
        centres = pixel_centres(s, ref).T.reshape(1, 2, s, s).expand(b, 2, s, s)
        warped = self.warp_reference(torch.cat([ref, centres], 1), ref_landmarks, landmarks)
        return torch.cat([warped[:, :ref.shape[1]],
                          (warped[:, ref.shape[1]:] - centres) * MOTION_SCALE], 1)

    def _residual(self, x: Tensor, ref: Tensor | None, sign: int) -> Tensor:
        if self.reference == "none":
            return x
        if ref is None:
            raise ValueError("this pose flow models images given a reference: pass ref=")
        return x + sign * ref[:, :x.shape[1]]

    # -- density -------------------------------------------------------------------------------

    def forward(self, x: Tensor, landmarks: Tensor | None = None,
                conds: Sequence[Tensor | None] | None = None, ref: Tensor | None = None):
        """``ref``: :meth:`reference_input` (models with a reference only); the flow then runs
        on ``x`` less the warped image (a shift, log-det 0)."""
        if conds is None:
            conds = self.conditions(landmarks, ref)
        logdet = x.new_zeros(x.shape[0])
        log_p = x.new_zeros(x.shape[0])
        splits: list[Tensor] = []
        out = self._residual(x, ref, -1)
        for block, c in zip(self.blocks, conds, strict=True):
            out, det, z = block(out, c)
            logdet = logdet + det
            if z is not None:
                mean, log_sd = block.prior_params(out, c)
                log_p = log_p + gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)
                splits.append(z)
        log_p = log_p + gaussian_log_p(out, self.w_mean, self.w_log_sd).flatten(1).sum(1)
        return log_p, logdet, out, splits, list(conds)

    def encode(self, x: Tensor, landmarks: Tensor,
               ref: Tensor | None = None) -> tuple[Tensor, list[Tensor], list]:
        """(w, splits, conds) of images ``x`` with their landmarks (and warped reference)."""
        _, _, w, splits, conds = self.forward(x, landmarks, ref=ref)
        return w, splits, conds

    def prior_w(self, n: int, temperature: float = 0.0, eps: Tensor | None = None) -> Tensor:
        """``n`` draws of ``w`` from its prior at ``temperature`` (0: the mean)."""
        return _draw(self.w_mean.expand(n, *self.w_shape), self.w_log_sd, temperature, eps)

    def reverse(self, w: Tensor, conds: Sequence[Tensor | None],
                splits: Sequence[Tensor | None] | None = None, temperature: float = 0.7,
                eps: Sequence[Tensor | None] | None = None, ref: Tensor | None = None) -> Tensor:
        """(w, conditions, split latents) -> images. A split given as None is drawn from its
        prior: ``mean + exp(log_sd) * temperature * eps`` (``eps[i]`` when given, fresh
        standard-normal noise otherwise; ``temperature=0``: the prior mean). With a reference,
        the warped image in ``ref`` (:meth:`reference_input`) is added back."""
        n_split = sum(1 for b in self.blocks if b.split)
        splits = list(splits) if splits is not None else [None] * n_split
        eps = list(eps) if eps is not None else [None] * n_split
        if len(splits) != n_split:
            raise ValueError(f"expected {n_split} split latents, got {len(splits)}")
        out = w
        k = n_split
        for block, c in zip(reversed(self.blocks), reversed(list(conds)), strict=True):
            z = None
            if block.split:
                k -= 1
                z = splits[k]
                if z is None:
                    z = _draw(*block.prior_params(out, c), temperature, eps[k])
            out = block.reverse(out, c, z)
        return self._residual(out, ref, 1)

    def appearance(self, x: Tensor, landmarks: Tensor, mirror: bool = False) -> dict:
        """What a transfer keeps of faces ``x`` [B, 3, S, S] (landmarks [B, 68, 2]): their
        ``w`` (``reference="none"``), or the images and landmarks themselves (``"warp"``).
        ``select_appearance`` picks and repeats rows; ``render`` re-poses. With ``mirror`` the
        mirrored faces' appearance is kept beside it (keys prefixed ``MIRRORED``), and
        ``render`` averages the two renderings (:meth:`render`)."""
        app = self._appearance(x, landmarks)
        if mirror:
            xm, lm = mirror_faces(x, landmarks)
            app.update({MIRRORED + k: v for k, v in self._appearance(xm, lm).items()})
        return app

    def _appearance(self, x: Tensor, landmarks: Tensor) -> dict:
        if self.reference == "none":
            return {"w": self.encode(x, landmarks)[0]}
        return {"image": x, "landmarks": landmarks}

    @staticmethod
    def select_appearance(app: dict, i: int, n: int) -> dict:
        """Row ``i`` of an appearance, repeated ``n`` times."""
        return {k: v[i:i + 1].expand(n, *v.shape[1:]) for k, v in app.items()}

    def render(self, app: dict, target_landmarks: Tensor, temperature: float = 0.0) -> Tensor:
        """An appearance (:meth:`appearance`) at ``target_landmarks`` [B, 68, 2]: the target's
        conditions, split latents (and with a reference, ``w``) from their priors at
        ``temperature`` (0: the means).

        An appearance made with ``mirror=True`` renders twice, as given and mirrored (the
        mirrored faces at the mirrored target landmarks, flipped back), and returns the mean:
        test-time augmentation that halves the part of the flow's error that is not
        left-right symmetric (twice the work; docs/pose_flow.md, "Round 3")."""
        plain = {k: v for k, v in app.items() if not k.startswith(MIRRORED)}
        out = self._render(plain, target_landmarks, temperature)
        if len(plain) == len(app):
            return out
        mirrored = {k[len(MIRRORED):]: v for k, v in app.items() if k.startswith(MIRRORED)}
        back = self._render(mirrored, mirror_landmarks(target_landmarks), temperature).flip(-1)
        return (out + back) / 2

    def _render(self, app: dict, target_landmarks: Tensor, temperature: float) -> Tensor:
        if self.reference == "none":
            return self.reverse(app["w"], self.conditions(target_landmarks), None, temperature)
        ref = self.reference_input(app["image"], app["landmarks"], target_landmarks)
        w = self.prior_w(ref.shape[0], temperature)
        return self.reverse(w, self.conditions(target_landmarks, ref), None, temperature,
                            ref=ref)

    def transfer(self, x: Tensor, landmarks: Tensor, target_landmarks: Tensor,
                 temperature: float = 0.0, mirror: bool = False) -> Tensor:
        """Re-pose ``x`` [B, 3, S, S] (landmarks [B, 68, 2]) to ``target_landmarks``
        (``mirror``: average with the mirrored rendering, :meth:`render`)."""
        return self.render(self.appearance(x, landmarks, mirror), target_landmarks, temperature)

    def split_shapes(self, img_size: int | None = None) -> list[tuple[int, int, int]]:
        """Shapes (C, H, W) of the split latents."""
        size, c, shapes = img_size or self.img_size, self.in_channel, []
        for b in self.blocks:
            if b.squeeze:
                size //= 2
                c *= 4
            if b.split:
                shapes.append((c // 2, size, size))
                c = c - c // 2
        return shapes

    # -- initialisation ------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor, landmarks: Tensor, ref: Tensor | None = None) -> None:
        """Data-dependent ActNorm initialisation from a batch (explicit, once): each flow's
        ActNorm from its own input, then the batch goes through that flow."""
        conds = self.conditions(landmarks, ref)
        out = self._residual(x, ref, -1)
        for block, c in zip(self.blocks, conds, strict=True):
            h = squeeze2d(out) if block.squeeze else out
            for flow in block.flows:
                flow.actnorm.initialize(h)
                h, _ = flow(h, c)
            out = h[:, : h.shape[1] - h.shape[1] // 2] if block.split else h

    @property
    def initialized(self) -> bool:
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    def config(self) -> dict:
        return dict(img_size=self.img_size, n_flow=self.n_flow, n_block=self.n_block,
                    n_header=self.n_header, hidden=self.hidden, sigma=self.sigma,
                    coord_below=self.coord_below, prior=self.prior, affine=self.affine,
                    in_channel=self.in_channel, reference=self.reference,
                    prior_hidden=self.prior_hidden)
