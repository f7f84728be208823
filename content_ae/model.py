"""The content-disentanglement auto-encoder (Press et al., ICLR 2019) and its "improved" remake.

Images are in ``[-1, 1]`` here (the paper's scale; the recipe converts from the project's
``[-0.5, 0.5]``). With ``G = img_size / 2**n_down`` and ``C = code`` channels per cell:

* ``E1`` (common encoder): ``[B, 3, S, S] -> [B, C - sep, G, G]``
* ``E2`` (specific encoder): ``[B, 3, S, S] -> [B, sep, G, G]``
* ``Decoder``: ``[B, C, G, G] -> [B, 3, S, S]`` (tanh), plus a soft mask ``[B, 1, S, S]``
  (sigmoid) with ``mask=True``
* ``Discriminator`` on the common code: ``[B, C - sep, G, G] -> [B]`` logits (A = 1, B = 0)

A's code is ``E1(a) ⊕ E2(a)``, B's is ``E1(b) ⊕ 0`` (the specific part exactly zero).

With a mask, a transfer or removal blends ``m**p * Dec(...) + (1 - m**p) * input`` with
``p = ContentAE.mask_power`` (:data:`MASK_POWER` unless a script's ``--mask_power`` says
otherwise). Training uses the mask as it is (``p = 1``); raising it at test time keeps the
confident part of the mask and drops its soft fringe, which is where a short run's mask
reaches beyond the attribute (docs/content_ae.md measures 1 to 4). With
``ContentAE.donor_mask`` (``--donor_mask``) a transfer's mask is also multiplied by the donor's
own mask, the mask of ``Dec(E1(a) ⊕ E2(a))``: where the model itself places the attribute on
the donor. The transfer then changes only what both masks mark, not the hair or background a
transfer's mask spills onto (the faces are aligned, so the donor's attribute sits where the
target's will).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Test-time mask power: chosen on the *training* identities of the demo's glasses set by
# whole-image transfer PSNR (1: 28.13, 1.5: 28.29, 2: 27.98 dB), docs/content_ae.md.
MASK_POWER = 1.5


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: give comma-separated integers") from None
    if any(v < 1 for v in vals):
        raise ValueError(f"--{what} {text!r}: widths must be positive")
    return vals


@dataclass
class Arch:
    """Resolved architecture (see ``content_ae.recipe.Config`` for the flags)."""

    arch: str
    img_size: int
    n_down: int
    code: int
    sep: int
    e1_widths: list[int]
    e2_widths: list[int]
    dec_widths: list[int]
    disc_hidden: int
    n_res: int
    dec_res: int
    mask: bool

    @property
    def grid(self) -> int:
        return self.img_size // 2**self.n_down


# -------------------------------------------------------------------------------------------
# --arch original: 4x4 stride-2 convs, InstanceNorm, LeakyReLU(0.2); transposed-conv decoder

# The activations after a norm work in place: a norm's backward needs its input, not its
# output, so overwriting the output saves one stored activation per layer (autograd's version
# counters would refuse the backward if that were not so).
def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 4, 2, 1), nn.InstanceNorm2d(cout), _lrelu()]


class ConvEncoder(nn.Sequential):
    """``n_down`` stride-2 4x4 convs with the given output widths (the original's encoders)."""

    def __init__(self, widths: list[int]):
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += _down(cin, w)
            cin = w
        super().__init__(*layers)


class ConvDecoder(nn.Module):
    """Transposed 4x4 stride-2 convs ``code -> widths... -> 3 (+1 mask)`` (the original's).

    The first layer is split into a common and a specific half (the sum of two transposed
    convs equals one over the concatenation), so a B code, whose specific half is zero, skips
    the specific half's work exactly.
    """

    def __init__(self, common: int, sep: int, widths: list[int], mask: bool):
        super().__init__()
        out0 = widths[0] if widths else 3 + int(mask)
        self.first_c = nn.ConvTranspose2d(common, out0, 4, 2, 1)
        self.first_s = nn.ConvTranspose2d(sep, out0, 4, 2, 1, bias=False)
        layers: list[nn.Module] = []
        cin = out0
        for w in widths[1:]:
            layers += [nn.InstanceNorm2d(cin), nn.ReLU(inplace=True),
                       nn.ConvTranspose2d(cin, w, 4, 2, 1)]
            cin = w
        if widths:
            layers += [nn.InstanceNorm2d(cin), nn.ReLU(inplace=True),
                       nn.ConvTranspose2d(cin, 3 + int(mask), 4, 2, 1)]
        self.rest = nn.Sequential(*layers)

    def forward(self, common: Tensor, specific: Tensor | None) -> Tensor:
        h = self.first_c(common)
        if specific is not None:
            h = h + self.first_s(specific)
        return self.rest(h)


class MLPDiscriminator(nn.Module):
    """``Linear(common*G*G, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 1)``, logits ``[B]``."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, common: Tensor) -> Tensor:
        return self.net(common.flatten(1)).view(-1)


# -------------------------------------------------------------------------------------------
# --arch improved: reflection-padded 7x7 stem, 3x3 stride-2 downs, residual blocks,
# nearest-neighbour upsampling + 3x3 conv with ILN, spectral-norm discriminator

class ILN(nn.Module):
    """Instance-layer norm: ``rho * IN(x) + (1 - rho) * LN(x)``, then ``gamma``/``beta``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        v_in, m_in = torch.var_mean(x, dim=(2, 3), keepdim=True)
        v_ln, m_ln = torch.var_mean(x, dim=(1, 2, 3), keepdim=True)
        x_in = (x - m_in) * torch.rsqrt(v_in + self.eps)
        x_ln = (x - m_ln) * torch.rsqrt(v_ln + self.eps)
        return (self.rho * x_in + (1 - self.rho) * x_ln) * self.gamma + self.beta


class ResBlock(nn.Module):
    """Two reflection-padded 3x3 convs with InstanceNorm, identity skip."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False), nn.InstanceNorm2d(ch),
            _lrelu(), nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False),
            nn.InstanceNorm2d(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResEncoder(nn.Sequential):
    """7x7 stem at ``widths[0]``, stride-2 3x3 downs to ``widths[1:]`` then ``out``, res blocks."""

    def __init__(self, widths: list[int], out: int, n_res: int):
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, widths[0], 7, bias=False),
                                   nn.InstanceNorm2d(widths[0]), _lrelu()]
        cin = widths[0]
        for w in [*widths[1:], out]:
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, w, 3, 2, bias=False),
                       nn.InstanceNorm2d(w), _lrelu()]
            cin = w
        layers += [ResBlock(out) for _ in range(n_res)]
        super().__init__(*layers)


class ResDecoder(nn.Module):
    """Residual blocks at the code width, ``n_up`` x (nearest x2, 3x3 conv halving, ILN,
    LeakyReLU), reflection-padded 7x7 conv to ``3 (+1 mask)``."""

    def __init__(self, code: int, n_up: int, n_res: int, mask: bool):
        super().__init__()
        self.code = code
        self.res = nn.Sequential(*[ResBlock(code) for _ in range(n_res)])
        layers: list[nn.Module] = []
        ch = code
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                       nn.Conv2d(ch, ch // 2, 3, bias=False), ILN(ch // 2), _lrelu()]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3 + int(mask), 7, bias=False)]
        self.up = nn.Sequential(*layers)

    def forward(self, common: Tensor, specific: Tensor | None) -> Tensor:
        if specific is None:  # residual blocks mix the channels: the zeros must be there
            specific = common.new_zeros(common.shape[0], self.code - common.shape[1],
                                        *common.shape[2:])
        return self.up(self.res(torch.cat([common, specific], 1)))


class SNDiscriminator(nn.Module):
    """Spectral-norm 3x3 convs on the common code, global average pool, spectral-norm linear."""

    def __init__(self, common: int, hidden: int):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(sn(nn.Conv2d(common, hidden, 3, 1, 1)), nn.LeakyReLU(0.2),
                                 sn(nn.Conv2d(hidden, hidden, 3, 1, 1)), nn.LeakyReLU(0.2))
        self.fc = sn(nn.Linear(hidden, 1))

    def forward(self, common: Tensor) -> Tensor:
        return self.fc(self.net(common).mean(dim=(2, 3))).view(-1)


# -------------------------------------------------------------------------------------------

class ContentAE(nn.Module):
    """E1, E2, decoder and discriminator of one architecture (see the module docstring)."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.img_size = arch.img_size
        self.mask_power = MASK_POWER  # an inference setting, not a weight: not in the state dict
        self.donor_mask = False  # transfer: also gate by the donor's own mask (inference only)
        common = arch.code - arch.sep
        if arch.arch == "original":
            self.e1 = ConvEncoder([*arch.e1_widths, *[common] * (arch.n_down - len(arch.e1_widths))])
            self.e2 = ConvEncoder([*arch.e2_widths, arch.sep])
            self.decoder = ConvDecoder(common, arch.sep, arch.dec_widths, arch.mask)
            self.disc = MLPDiscriminator(common * arch.grid**2, arch.disc_hidden)
        else:
            self.e1 = ResEncoder(arch.e1_widths, common, arch.n_res)
            self.e2 = ResEncoder(arch.e2_widths, arch.sep, arch.n_res)
            self.decoder = ResDecoder(arch.code, arch.n_down, arch.dec_res, arch.mask)
            self.disc = SNDiscriminator(common, arch.disc_hidden)

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.e1.parameters(), *self.e2.parameters(), *self.decoder.parameters()]

    def decode(self, common: Tensor, specific: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(image [B, 3, S, S] in [-1, 1], mask [B, 1, S, S] in [0, 1] or None)``.

        ``specific=None`` is the zero specific part (a B code, or removal), computed exactly.
        """
        out = self.decoder(common, specific)
        img = torch.tanh(out[:, :3])
        mask = torch.sigmoid(out[:, 3:4]) if self.arch.mask else None
        return img, mask

    def blend(self, img: Tensor, mask: Tensor | None, base: Tensor) -> Tensor:
        """``img`` where the mask (raised to :attr:`mask_power`) says so, ``base`` elsewhere;
        ``img`` itself without a mask."""
        if mask is None:
            return img
        if self.mask_power != 1:
            mask = mask.pow(self.mask_power)
        return mask * img + (1 - mask) * base

    def transfer(self, a: Tensor, b: Tensor) -> Tensor:
        """``[B, 3, S, S]``: each ``b`` with the matching ``a``'s attribute,
        ``Dec(E1(b) ⊕ E2(a))``; with a mask, only the masked region of ``b`` changes (with
        :attr:`donor_mask`, only where ``a``'s own mask also marks its attribute)."""
        specific = self.e2(a)
        img, mask = self.decode(self.e1(b), specific)
        if self.donor_mask and mask is not None:
            _, own = self.decode(self.e1(a), specific)
            mask = mask * own
        return self.blend(img, mask, b)

    def remove(self, a: Tensor) -> Tensor:
        """``[B, 3, S, S]``: ``a`` without its attribute, ``Dec(E1(a) ⊕ 0)``; with a mask, only
        the region the attribute occupies (the mask of ``a``'s own code) changes."""
        common = self.e1(a)
        img, _ = self.decode(common, None)
        if not self.arch.mask:
            return img
        _, mask = self.decode(common, self.e2(a))
        return self.blend(img, mask, a)


def bce_logits(logits: Tensor, target: float) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against a constant float label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))
