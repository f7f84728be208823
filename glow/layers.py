"""Invertible layers of Glow (Kingma & Dhariwal, 2018).

Every bijective layer follows one contract, direction data -> latent:

    forward(x, cond=None) -> (y, logdet)   # logdet: log|det dy/dx|, shape [B]
    reverse(y, cond=None) -> x

Attribute and buffer names follow the widely used rosinality/glow-pytorch layout, so a state
dict of that code (the thesis's ``glow_checkpoint.pt``) loads without renaming.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


_RANDOM_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("glow_random_init",
                                                                    default=True)


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """Layers built inside this context draw no random numbers; for weights loaded next.

    ``torch.nn.init``'s random fills are skipped, so every ``torch.nn`` layer built here
    (the Glow's convolutions, AD-flow's ``nn.Linear``/``nn.GRU``) keeps its weights as
    allocated, and the 1x1 convolutions start from the identity instead of a random rotation.
    At the thesis size the random initialisation (~110M normal and uniform draws) was most of
    the second it takes to build a Glow (AD-flow's encoders and classifier: 0.3 s more), for
    weights that ``load_state_dict`` overwrites at once. The ``torch.nn.init`` functions are
    replaced process-wide while the outermost context is active, so do not build layers that
    need their random start in another thread meanwhile. Not ``torch.nn.utils.skip_init``: its
    meta-device detour costs ~0.5 s on first use. Load every tensor (a strict
    ``load_state_dict``) before using a model built here.
    """
    outermost = _RANDOM_INIT.get()
    token = _RANDOM_INIT.set(False)
    saved = {}
    if outermost:
        for name in _RANDOM_INITS:
            saved[name] = getattr(nn.init, name)
            setattr(nn.init, name, _leave_as_is)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
        _RANDOM_INIT.reset(token)


# torch.nn.init's random fills, left out inside no_random_init (the layers call them through
# the module, so replacing the attribute reaches every reset_parameters).
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")


def _leave_as_is(tensor: Tensor, *args, **kwargs) -> Tensor:
    return tensor


def _start_rotation(n: int) -> Tensor:
    """A random orthogonal [n, n] matrix (the 1x1 convolution's start), or the identity
    inside :func:`no_random_init`."""
    if not _RANDOM_INIT.get():
        return torch.eye(n)
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


def _use_cache(module: nn.Module, param: Tensor) -> bool:
    """Cached weights are safe outside training mode when no gradient can reach them."""
    return not module.training and not (torch.is_grad_enabled() and param.requires_grad)


def cache_key(tensors) -> tuple:
    """What the eval-mode caches are keyed on: each tensor's storage address and version.

    The version counter moves on every in-place edit through autograd's view of a tensor (an
    optimiser step, ``load_state_dict``, ``p.copy_()`` under ``no_grad``) and the address moves
    when a tensor is replaced (``p.data = other``, ``load_state_dict(assign=True)``). An
    in-place edit through ``p.data`` (``p.data.mul_(d)``, as EMA code does) changes neither:
    after such edits call :func:`invalidate_caches` (``Glow.invalidate()``), or ``eval()``,
    which drops every cache too.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


def invalidate_caches(module: nn.Module) -> nn.Module:
    """Drop every eval-mode cache (1x1-conv inverses, fused ActNorm+conv, top priors) in
    ``module``; needed only after in-place edits through ``.data`` (see :func:`cache_key`)."""
    for m in module.modules():
        drop = getattr(m, "_drop_cache", None)
        if callable(drop):
            drop()
    return module


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


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """1x1 convolution as one matrix product: x [B, C, H, W], weight [O, C] -> [B, O, H, W].

    The invertible 1x1 convolutions have few channels (12-96 at 64 px): oneDNN runs those at a
    fraction of a GFLOP/s (a 16x12x32x32 input took ~9 ms as a convolution, ~0.1 ms as a
    matrix product on a 2-core AMD EPYC), because it reorders the tensor into its blocked
    layout and back around a product too small to hide that. Channels-last inputs stay
    channels-last (a [B*H*W, C] product), others are read as [B, C, H*W].
    """
    b, c, h, w = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)
    flat = x.reshape(b, c, h * w)
    if bias is None:
        out = torch.matmul(weight, flat)
    else:
        out = torch.baddbmm(bias[:, None], weight.expand(b, *weight.shape), flat)
    return out.view(b, -1, h, w)


class InvConv2d(nn.Module):
    """Invertible 1x1 convolution with an unconstrained weight (initialised orthogonal).

    Outside training (and when no gradient is needed) ``log|det W|`` and ``W^-1`` are computed
    once and cached, keyed by :func:`cache_key` (see there for ``.data`` edits).
    """

    def __init__(self, in_channel: int) -> None:
        super().__init__()
        q = _start_rotation(in_channel)
        self.weight = nn.Parameter(q.unsqueeze(2).unsqueeze(3))
        self._cache: tuple | None = None

    def _compute(self) -> tuple[Tensor, Tensor, Tensor]:
        w = self.weight
        w64 = w.squeeze(3).squeeze(2).double()
        logabsdet = torch.linalg.slogdet(w64)[1].to(w.dtype)
        inv = torch.linalg.inv(w64).to(w.dtype)[:, :, None, None]
        return w, logabsdet, inv

    def weight_logdet(self) -> tuple[Tensor, Tensor]:
        """(W [C, C], log|det W|) for the forward pass, differentiable; no inverse computed
        (training needs none: only ``reverse`` does)."""
        if _use_cache(self, self.weight):
            w, logabsdet, _ = self._matrices()
            return w[:, :, 0, 0], logabsdet
        w = self.weight[:, :, 0, 0]
        return w, torch.linalg.slogdet(w.double())[1].to(w.dtype)

    def _matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W [C,C,1,1], log|det W|, W^-1 [C,C,1,1])."""
        if not _use_cache(self, self.weight):
            return self._compute()
        key = (cache_key([self.weight]), self.weight.device, self.weight.dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, *self._compute())
        return self._cache[1], self._cache[2], self._cache[3]

    def _drop_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with fp32_region(x):
            w, logabsdet = self.weight_logdet()
            return conv1x1(x.to(w.dtype), w), _per_sample(x.shape[2] * x.shape[3] * logabsdet, x)

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        with fp32_region(y):
            w_inv = self._matrices()[2]
            return conv1x1(y.to(w_inv.dtype), w_inv[:, :, 0, 0])


class InvConv2dLU(nn.Module):
    """Invertible 1x1 convolution in LU form: ``W = P L (U + diag(sign(s) * exp(log|s|)))``.

    ``P``, the masks and ``sign(s)`` are buffers; ``L``, ``U`` and ``log|s|`` are learned, so
    ``log|det W| = sum(log|s|)`` costs nothing. Outside training mode the weight and its inverse
    are computed once and cached (keyed by :func:`cache_key`: an optimiser step or
    ``load_state_dict`` invalidates them; after ``.data`` edits call :func:`invalidate_caches`);
    ``train()`` drops them.
    """

    def __init__(self, in_channel: int) -> None:
        super().__init__()
        q = _start_rotation(in_channel)
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
        self._cache: tuple | None = None

    def calc_weight(self) -> Tensor:
        """The [C, C] weight matrix from its LU factors (differentiable)."""
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return self.w_p @ lower @ upper

    def _compute(self) -> tuple[Tensor, Tensor]:
        w = self.calc_weight()
        inv = torch.linalg.inv(w.double()).to(w.dtype)
        return w[:, :, None, None], inv[:, :, None, None]

    def weight_logdet(self) -> tuple[Tensor, Tensor]:
        """(W [C, C], log|det W|) for the forward pass, differentiable; no inverse computed."""
        if _use_cache(self, self.w_l):
            return self._matrices()[0][:, :, 0, 0], self.w_s.sum()
        return self.calc_weight(), self.w_s.sum()

    def _matrices(self) -> tuple[Tensor, Tensor]:
        """(W, W^-1) as [C, C, 1, 1]; cached when no gradient can reach them."""
        if not _use_cache(self, self.w_l):
            return self._compute()
        key = (cache_key([self.w_l, self.w_s, self.w_u, self.w_p]), self.w_l.device,
               self.w_l.dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, *self._compute())
        return self._cache[1], self._cache[2]

    def _drop_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with fp32_region(x):
            w, logabsdet = self.weight_logdet()
            logdet = x.shape[2] * x.shape[3] * logabsdet
            return conv1x1(x.to(w.dtype), w), _per_sample(logdet, x)

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        with fp32_region(y):
            w_inv = self._matrices()[1]
            return conv1x1(y.to(w_inv.dtype), w_inv[:, :, 0, 0])


def border_correction(wsum: Tensor, h: int, w: int) -> Tensor:
    """What padding with ones instead of zeros adds to a 3x3 convolution's output, [O, h, w].

    ``wsum`` [O, 3, 3] is the weight summed over input channels. Tap (k, l) of output (i, j)
    reads the padding unless row ``i + k - 1`` and column ``j + l - 1`` are both inside, so the
    correction is ``sum(wsum) - sum_kl wsum[k, l] r[k, i] c[l, j]`` with the 0/1 masks
    ``r``, ``c`` of inside rows and columns: a tiny product, differentiable, where a
    convolution of a ones-border image took tens of milliseconds in torch's slow path.
    """
    r = torch.ones(3, h, dtype=wsum.dtype, device=wsum.device)
    c = torch.ones(3, w, dtype=wsum.dtype, device=wsum.device)
    r[0, 0] = r[2, h - 1] = 0
    c[0, 0] = c[2, w - 1] = 0
    inside = torch.einsum("okl,ki,lj->oij", wsum, r, c)
    return wsum.sum((1, 2))[:, None, None] - inside


class ZeroConv2d(nn.Module):
    """3x3 convolution padded with the value 1, zero-initialised, output ``* exp(3 * scale)``.

    The constant-1 padding is applied without materialising a padded copy of the input:
    ``conv(pad1(x)) = conv(pad0(x)) + conv(border_of_ones, W summed over input channels)``.
    """

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def folded(self, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        """(weight, bias, ones-padding correction [O, h, w]) with ``exp(3 scale)`` folded in.

        Folding the gain into the (small) weight, bias and correction instead of multiplying
        the output saves one pass over the output, forward and backward.
        """
        gain = torch.exp(self.scale * 3).reshape(-1)
        correction = border_correction(self.conv.weight.sum(1), h, w) * gain[:, None, None]
        return self.conv.weight * gain[:, None, None, None], self.conv.bias * gain, correction

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, correction = self.folded(x.shape[2], x.shape[3])
        return F.conv2d(x, weight, bias, padding=1) + correction.to(x.dtype)


def _im2col(xh: Tensor, mirror: bool = False) -> Tensor:
    """[N, H, W, C] -> [N*H*W, 9*C]: the 3x3 zero-padded neighbourhoods, taps (row, col) major;
    with ``mirror`` tap (k, l) holds the neighbour at (2-k, 2-l) (a convolution's transpose)."""
    n, h, w, c = xh.shape
    p = F.pad(xh, (0, 0, 1, 1, 1, 1))
    taps = [(i, j) for i in range(3) for j in range(3)]
    if mirror:
        taps.reverse()
    return torch.cat([p[:, i:i + h, j:j + w] for i, j in taps], -1).reshape(n * h * w, 9 * c)


def _tap_sum(z: Tensor, n: int, h: int, w: int, mirror: bool) -> Tensor:
    """Per-tap values ``z`` [N*H*W, 9*C] summed onto the padded grid, [N, H+2, W+2, C].

    Tap (k, l) of pixel (i, j) lands on padded pixel (i+k, j+l): the transpose of
    :func:`_im2col`. With ``mirror`` tap (k, l) takes (2-k, 2-l)'s values, so pixel (i, j)
    gathers tap (k, l) of pixel (i+k-1, j+l-1): a 3x3 convolution of per-tap products.
    Out of place (padded copies of few channels), so that ``vmap`` (batched Jacobians) can
    run the backward.
    """
    z = z.view(n, h, w, 9, -1)
    out = None
    for t in range(9):
        i, j = divmod(t, 3)
        part = F.pad(z[:, :, :, 8 - t if mirror else t], (0, 0, j, 2 - j, i, 2 - i))
        out = part if out is None else out + part
    return out


def _relu_grad_(grad: Tensor, out: Tensor) -> Tensor:
    """ReLU's backward in place on a fresh gradient: zero where the ReLU's output ``out`` is.

    Out of place under ``vmap`` (batched Jacobians), which has no rule for the ``out=`` form.
    """
    try:
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)
    except RuntimeError:
        return torch.ops.aten.threshold_backward(grad, out, 0)


class _ConditionerFn(torch.autograd.Function):
    """conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 (zero padding), as matrix products on
    channels-last [N*H*W, C] matrices, forward and backward.

    The 3x3 convolutions go through a [N*H*W, 9*C] neighbourhood matrix of their few-channel
    side (the first one's input, the ZeroConv's output), where oneDNN ran them at 20-40 % of
    the GEMM rate; the backward masks the ReLUs in place on the fresh gradients instead of
    autograd's extra buffers. Measured on a 2-core AMD EPYC (jemalloc, docs/performance.md,
    round 5): a level-1 conditioner's forward + backward 300 -> 268 ms, the thesis training step
    1.09x; inference was not faster (0.90-1.03x), so it keeps the modules. Saved: the input and
    the two ReLU outputs, as autograd would save.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, wz, bz):  # noqa: ANN001, ANN205 (autograd signature)
        n, _, h, w = x.shape
        xh = x.permute(0, 2, 3, 1).contiguous()
        w1m = w1.permute(0, 2, 3, 1).reshape(w1.shape[0], -1)  # [hidden, 9*Cin]
        w2m = w2[:, :, 0, 0]
        wzm = wz.permute(1, 2, 3, 0).reshape(wz.shape[1], -1)  # [hidden, 9*Cout]
        h1 = torch.addmm(b1, _im2col(xh), w1m.t()).relu_()
        h2 = torch.addmm(b2, h1, w2m.t()).relu_()
        out = (_tap_sum(h2 @ wzm, n, h, w, mirror=True)[:, 1:h + 1, 1:w + 1] + bz).contiguous()
        ctx.save_for_backward(xh, h1, h2, w1m, w2m, wzm)
        ctx.shapes = (w1.shape, wz.shape)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        xh, h1, h2, w1m, w2m, wzm = ctx.saved_tensors
        w1_shape, wz_shape = ctx.shapes
        n, h, w, cin = xh.shape
        cout = wz_shape[0]
        gh = grad.permute(0, 2, 3, 1).contiguous()  # [N, H, W, Cout]
        dz = _im2col(gh, mirror=True)  # ZeroConv: d(taps) = the gradient's mirrored neighbours
        dbz = gh.sum((0, 1, 2))
        dwz = (h2.t() @ dz).view(-1, 3, 3, cout).permute(3, 0, 1, 2)
        g2 = _relu_grad_(dz @ wzm.t(), h2)
        del dz
        dw2 = (g2.t() @ h1)[:, :, None, None]
        db2 = g2.sum(0)
        g1 = _relu_grad_(g2 @ w2m, h1)
        del g2
        cols = _im2col(xh)
        dw1 = (g1.t() @ cols).view(w1_shape[0], 3, 3, cin).permute(0, 3, 1, 2)
        db1 = g1.sum(0)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _tap_sum(g1 @ w1m, n, h, w, mirror=False)[:, 1:h + 1, 1:w + 1] \
                .contiguous().permute(0, 3, 1, 2)
        return dx, dw1, db1, dw2, db2, dwz, dbz


PRODUCTS_MIN_HIDDEN = 384
"""Narrowest conditioner that trains as matrix products (:class:`ConditionerNet`). Per
conditioner, forward + backward, against the modules (2-core AMD EPYC, jemalloc): 1.04-1.15x at
hidden 512, 0.98-1.09x at 384, 0.99-1.08x at 256, 0.82-0.96x at 128; a 32-px demo Glow (hidden
128) trained 0.87x as fast on the products."""


class ConditionerNet(nn.Sequential):
    """The Glow conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> :class:`ZeroConv2d`.

    An ``nn.Sequential`` (the state dict and indexing are those of the reference layout). When
    training on the CPU in float32/float64 without autocast, with at least
    :data:`PRODUCTS_MIN_HIDDEN` hidden channels, it runs as one autograd function of matrix
    products (:class:`_ConditionerFn`); elsewhere (inference, CUDA, autocast, forward hooks on
    its layers, a changed layer, a narrow net) as the plain sequence of modules.
    """

    def _fast(self, x: Tensor) -> bool:
        if not torch.is_grad_enabled() or x.device.type != "cpu" \
                or x.dtype not in (torch.float32, torch.float64) or x.dim() != 4 \
                or torch.is_autocast_enabled("cpu") or len(self) != 5:
            return False
        c1, r1, c2, r2, zc = self
        if not (type(c1) is nn.Conv2d and type(c2) is nn.Conv2d and type(zc) is ZeroConv2d
                and type(r1) is nn.ReLU and type(r2) is nn.ReLU) \
                or c2.out_channels < PRODUCTS_MIN_HIDDEN:
            return False
        if c1.kernel_size != (3, 3) or c1.padding != (1, 1) or c2.kernel_size != (1, 1) \
                or c2.padding != (0, 0) or c1.bias is None or c2.bias is None:
            return False
        if any(c.stride != (1, 1) or c.dilation != (1, 1) or c.groups != 1
               or c.padding_mode != "zeros" for c in (c1, c2)):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self) \
            and all(p.dtype == x.dtype for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        if not self._fast(x):
            return super().forward(x)
        c1, _, c2, _, zc = self
        wz, bz, correction = zc.folded(x.shape[2], x.shape[3])
        return _ConditionerFn.apply(x, c1.weight, c1.bias, c2.weight, c2.bias, wz, bz) + correction


def coupling_net(in_channel: int, out_channel: int, hidden: int = 512) -> nn.Sequential:
    """The Glow conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv2d."""
    net = ConditionerNet(
        nn.Conv2d(in_channel, hidden, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(inplace=True),
        ZeroConv2d(hidden, out_channel),
    )
    if _RANDOM_INIT.get():
        for i in (0, 2):
            net[i].weight.data.normal_(0, 0.05)
            net[i].bias.data.zero_()
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


# Backwards-friendly name used by the reference layout.
AffineCoupling = Coupling


class Flow(nn.Module):
    """One step of flow: ActNorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, in_channel: int, affine: bool = False, conv_lu: bool = True,
                 hidden: int = 512, coupling: nn.Module | None = None) -> None:
        super().__init__()
        self.actnorm = ActNorm(in_channel)
        self.invconv = InvConv2dLU(in_channel) if conv_lu else InvConv2d(in_channel)
        self.coupling = coupling if coupling is not None else Coupling(
            in_channel, affine=affine, hidden=hidden)
        self._fused_cache: tuple | None = None

    def _fused(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
        """ActNorm followed by the 1x1 conv as one 1x1 conv with bias (eval mode only).

        ``W (s * (x + loc)) = (W diag(s)) x + W (s * loc)`` and its inverse
        ``diag(1/s) W^-1 y - loc``. Returns (w, b, w_inv, b_inv, log|det| per pixel), or None
        in training mode or when a gradient could reach the parameters. Cached, keyed by
        :func:`cache_key` over every tensor involved (an optimiser step, ``load_state_dict`` or
        ActNorm's initialisation invalidates it; after ``.data`` edits call
        :func:`invalidate_caches`); ``train()`` drops it.
        """
        an, ic = self.actnorm, self.invconv
        params = [*an.parameters(), *ic.parameters()]
        if self.training or an.training or ic.training or (
                torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return None
        tensors = params + list(ic.buffers())
        key = (cache_key(tensors), an.scale.device, an.scale.dtype)
        if self._fused_cache is None or self._fused_cache[0] != key:
            with torch.no_grad():
                mats = ic._matrices()
                w, w_inv = mats[0], mats[-1]
                ld_conv = mats[1] if isinstance(ic, InvConv2d) else ic.w_s.sum()
                dtype = an.scale.dtype
                s = an.scale.reshape(-1).double()
                loc = an.loc.reshape(-1).double()
                w64 = w[:, :, 0, 0].double()
                w_f = (w64 * s[None, :]).to(dtype)[:, :, None, None]
                b_f = (w64 @ (s * loc)).to(dtype)
                w_r = (w_inv[:, :, 0, 0].double() / s[:, None]).to(dtype)[:, :, None, None]
                b_r = (-loc).to(dtype)
                ld = (torch.log(torch.abs(s)).sum().to(dtype) + ld_conv.to(dtype))
            self._fused_cache = (key, (w_f, b_f, w_r, b_r, ld))
        return self._fused_cache[1]

    def _drop_cache(self) -> None:
        self._fused_cache = None

    def train(self, mode: bool = True):
        self._fused_cache = None
        return super().train(mode)

    def _folds(self) -> bool:
        """Whether ActNorm and the 1x1 conv are this module's own (foldable) kinds."""
        return type(self.actnorm) is ActNorm and type(self.invconv) in (InvConv2d, InvConv2dLU)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with fp32_region(x):  # ActNorm + 1x1 conv and their log-dets: full precision
            fused = self._fused()
            if fused is not None:
                w, b, _, _, ld = fused
                out = conv1x1(x.to(w.dtype), w[:, :, 0, 0], b)
                logdet = _per_sample(x.shape[2] * x.shape[3] * ld, x)
            elif self._folds():
                # Training: ActNorm folded into the 1x1 weight, differentiably, so forward and
                # backward make one pass over the activation instead of three (ActNorm's add
                # and multiply, then the product): W (s * (x + loc)) = (W diag(s)) x + W (s*loc).
                an = self.actnorm
                w, ld_conv = self.invconv.weight_logdet()
                s = an.scale.reshape(-1).to(w.dtype)
                w_f = w * s[None, :]
                b_f = w_f @ an.loc.reshape(-1).to(w.dtype)
                out = conv1x1(x.to(w.dtype), w_f, b_f)
                ld = torch.log(torch.abs(s)).sum() + ld_conv
                logdet = _per_sample(x.shape[2] * x.shape[3] * ld, x)
            else:
                out, logdet = self.actnorm(x)
                out, det1 = self.invconv(out)
                logdet = logdet + det1
        out, det2 = self.coupling(out, cond)
        return out, logdet + det2

    def reverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        x = self.coupling.reverse(y, cond)
        with fp32_region(x):
            fused = self._fused()
            if fused is not None:
                return conv1x1(x.to(fused[2].dtype), fused[2][:, :, 0, 0], fused[3])
            x = self.invconv.reverse(x)
            return self.actnorm.reverse(x)


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
