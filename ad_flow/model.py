"""AD-flow: attribute decomposition of a frozen Glow's latents into a face part and a lip part.

Per Glow level ``i`` a feature encoder ``E_i`` reads the latent ``z_i`` and, in this project's
convention, outputs the *lip* part: ``lip_i = E_i(z_i)``, ``face_i = z_i - lip_i``. (The
thesis's convolutional ablation outputs the face part instead; ``target="face"`` reproduces
that convention when loading such weights.) Talking-face transfer keeps the query's face part
and takes the lip part from the mouth-mixed frame, then inverts the Glow exactly:
``z_i = face_i(query) + lip_i(mix)``.

Shapes: a clip batch is ``[B, T, 3, S, S]``; the Glow latents of level ``i`` are
``[B*T, C_i, h_i, h_i]`` (for 64 px and 4 levels: 6x32x32, 12x16x16, 24x8x8, 96x4x4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from glow import Glow

ENCODERS = ("linear", "full", "conv", "mlp")


class _LinearMap(nn.Module):
    """``Linear(features, features)`` over the vectors ``vectors(z)`` of a level's latent."""

    def __init__(self, size: int, features: int) -> None:
        super().__init__()
        self.size = size
        self.features = features
        self.linear = nn.Linear(features, features)

    @staticmethod
    def vectors(z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        """[N, C, h, h] -> [N, C, h, h]"""
        return self.linear(self.vectors(z)).view_as(z)


class LinearEncoder(_LinearMap):
    """One linear map over the ``h*h`` flattened positions, shared by every channel (thesis)."""

    def __init__(self, size: int) -> None:
        super().__init__(size, size * size)

    @staticmethod
    def vectors(z: Tensor) -> Tensor:
        """[N, C, h, h] -> the vectors the map acts on, [N, C, h*h] (one per channel)."""
        return z.flatten(2)


class FullEncoder(_LinearMap):
    """One linear map over the whole level, every channel and position (``C*h*h`` square; ours).

    The thesis's map is shared by the channels, so it cannot treat the Glow's channels
    differently; this one can. It has ``C`` times the inputs and ``C**2`` times the weights
    (32 px, three levels: 3.5 M; 64 px: 52 M). Fitted in closed form by ``--init matched``
    or ``--init lstsq``, exactly as the thesis's map is."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__(size, channels * size * size)

    @staticmethod
    def vectors(z: Tensor) -> Tensor:
        """[N, C, h, h] -> the vectors the map acts on, [N, C*h*h] (one per frame)."""
        return z.flatten(1)


CLOSED_FORM = (LinearEncoder, FullEncoder)
"""Encoders with a closed-form fit (``--init lstsq`` / ``matched``): a ``linear`` layer over
``vectors(z)``."""
CLOSED_FORM_KINDS = ("linear", "full")
"""The ``--encoder`` names of :data:`CLOSED_FORM`."""


class MLPEncoder(nn.Module):
    """Linear - ReLU - Linear over the flattened positions, shared by channels (thesis ablation)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        p = size * size
        self.mlp = nn.Sequential(nn.Linear(p, p), nn.ReLU(), nn.Linear(p, p))

    def forward(self, z: Tensor) -> Tensor:
        return self.mlp(z.flatten(2)).view_as(z)


class ConvEncoder(nn.Module):
    """Three 3x3 convolutions ``C -> C`` without activations (thesis ablation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*(nn.Conv2d(channels, channels, 3, padding=1)
                                    for _ in range(3)))

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(z)


def _encoder(kind: str, channels: int, size: int) -> nn.Module:
    """One level's encoder of ``kind`` for latents ``[N, channels, size, size]``."""
    if kind == "linear":
        return LinearEncoder(size)
    if kind == "full":
        return FullEncoder(channels, size)
    return MLPEncoder(size) if kind == "mlp" else ConvEncoder(channels)


class FeatureEncoder(nn.Module):
    """Per-level encoders splitting Glow latents into (face, lip) parts.

    ``z_shapes``: the Glow's latent shapes ``(C, h, h)`` per level. ``kind``: ``linear``
    (thesis), ``full`` (ours: channels mixed too), ``conv`` or ``mlp``. ``target``: what the
    encoder outputs, ``lip`` (default: ``lip = E(z), face = z - lip``) or ``face`` (``face =
    E(z), lip = z - face``).
    """

    def __init__(self, z_shapes: Sequence[tuple[int, int, int]], kind: str = "linear",
                 target: str = "lip") -> None:
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"unknown encoder '{kind}'; choose one of {', '.join(ENCODERS)}")
        if target not in ("lip", "face"):
            raise ValueError(f"encoder target must be 'lip' or 'face', not {target!r}")
        self.kind, self.target = kind, target
        self.z_shapes = [tuple(int(v) for v in s) for s in z_shapes]
        self.levels = nn.ModuleList(_encoder(kind, c, h) for c, h, _ in self.z_shapes)

    def split_level(self, i: int, z: Tensor) -> tuple[Tensor, Tensor]:
        """Level ``i``: z [N, C, h, h] -> (face, lip), each [N, C, h, h]."""
        out = self.levels[i](z)
        return (z - out, out) if self.target == "lip" else (out, z - out)

    def split(self, z_list: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Every level: lists of [N, C_i, h_i, h_i] -> (faces, lips)."""
        faces, lips = [], []
        for i, z in enumerate(z_list):
            f, m = self.split_level(i, z)
            faces.append(f)
            lips.append(m)
        return faces, lips


class SequenceClassifier(nn.Module):
    """Word classifier on the lip parts of a clip.

    Per frame, the channel-mean of each level's lip part, flattened and concatenated (level 0
    first; 1024 + 256 + 64 + 16 = 1360 features at 64 px); a one-layer bidirectional GRU with
    as many hidden units; the final states of both directions ``[B, 2F]`` through an MLP.
    """

    def __init__(self, positions: Sequence[int], n_classes: int,
                 hidden: Sequence[int] = (2048, 1024)) -> None:
        super().__init__()
        self.n_features = int(sum(positions))
        self.gru = nn.GRU(self.n_features, self.n_features, batch_first=True,
                          bidirectional=True)
        layers: list[nn.Module] = []
        width = 2 * self.n_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, n_classes))
        self.head = nn.Sequential(*layers)

    @staticmethod
    def features(lips: Sequence[Tensor]) -> Tensor:
        """Lip parts, each [B, T, C, h, h] -> per-frame features [B, T, sum h*h]."""
        return torch.cat([m.mean(dim=2).flatten(2) for m in lips], dim=2)

    def forward(self, lips: Sequence[Tensor]) -> Tensor:
        """Lip parts [B, T, C_i, h_i, h_i] per level -> logits [B, n_classes]."""
        _, h_n = self.gru(self.features(lips))  # h_n [2, B, F]: forward, backward
        return self.head(h_n.transpose(0, 1).flatten(1))


class ADFlow(nn.Module):
    """Feature encoder + sequence classifier on top of a frozen Glow.

    The Glow is held outside the registered submodules: it is neither trained nor part of
    ``state_dict()`` (the checkpoint records which Glow file it belongs to), yet ``.to()``
    moves it along. It stays in eval mode with gradients off, so its 1x1 inverses are cached.
    """

    def __init__(self, glow: Glow, encoder: FeatureEncoder,
                 classifier: SequenceClassifier | None) -> None:
        super().__init__()
        glow.eval()
        for p in glow.parameters():
            p.requires_grad_(False)
        self._frozen = (glow,)  # a tuple: not registered as a submodule
        self.encoder = encoder
        self.classifier = classifier
        self.words: list[str] | None = None
        self._query_cache: tuple | None = None
        self._reference_lips: list[Tensor] | None = None  # transfer(relative=True)

    @property
    def glow(self) -> Glow:
        return self._frozen[0]

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """The Glow, held outside the state dict: for walks that must reach every module
        (``glow.precision.every_module``: ``test.py --precision bf16`` casts its
        conditioners)."""
        return self._frozen

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.glow._apply(fn, recurse)
        self._query_cache = None
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.glow.eval()
        return self

    @property
    def img_size(self) -> int:
        return int(self.glow.img_size)

    # ---------------------------------------------------------------------------------------
    # Latents

    @torch.no_grad()
    def encode_frames(self, x: Tensor) -> list[Tensor]:
        """Images [N, 3, S, S] in [-0.5, 0.5] -> Glow latents (no gradient)."""
        return [z.detach() for z in self.glow.encode(x)]

    def forward(self, frames: Tensor, labels: Tensor | None, shifts: Tensor,
                pair_frames: Tensor, with_classifier: bool = True,
                partner: Tensor | None = None) -> dict[str, Tensor]:
        """The four AD-flow terms on a batch of clips.

        frames [B, T, 3, S, S]; labels [B] (word ids); shifts [B] (time roll of each clip's
        face parts, ``0 <= shift < T``); pair_frames [B] (frame of clip ``(b+1) % B`` whose
        face part is mixed with clip ``b``'s lips in the cycle term). ``partner`` [B, 3, S, S]:
        those partner frames given directly (under DDP the partner of a rank's last clip lives
        on another rank; ``pair_frames`` is then unused). Returns scalar terms ``rec``,
        ``struct``, ``cycle``, ``cls`` (when a classifier runs) and ``acc``.
        """
        b, t = frames.shape[:2]
        z_flat = self.encode_frames(frames.flatten(0, 1))
        z = [zi.view(b, t, *zi.shape[1:]) for zi in z_flat]
        faces_flat, lips_flat = self.encoder.split(z_flat)
        faces = [f.view(b, t, *f.shape[1:]) for f in faces_flat]
        lips = [m.view(b, t, *m.shape[1:]) for m in lips_flat]
        partner_faces = None
        if partner is not None:  # the Glow is frozen: only the encoder's split carries gradient
            partner_faces, _ = self.encoder.split(self.encode_frames(partner))
        terms = {"rec": reconstruction_loss(z, faces, lips, shifts),
                 "struct": structural_loss(z, faces),
                 "cycle": cycle_loss(self.encoder, faces, lips, pair_frames, partner_faces),
                 **split_diagnostics(z, faces, lips)}
        if with_classifier and self.classifier is not None and labels is not None:
            logits = self.classifier(lips)
            terms["cls"] = F.cross_entropy(logits, labels)
            terms["acc"] = (logits.argmax(1) == labels).float().mean().detach()
        return terms

    # ---------------------------------------------------------------------------------------
    # Talking-face transfer

    def load_state_dict(self, *args, **kwargs):
        self._query_cache = None  # new encoder weights: the cached face parts are stale
        return super().load_state_dict(*args, **kwargs)

    def _query_key(self, query: Tensor) -> tuple:
        """The query cache's key: the query, the encoder's weights (their version counters
        and sums, so an optimiser step, ``load_state_dict`` or an in-place ``.data`` edit all
        invalidate it) and the dtypes of the Glow's weights (conditioners cast to bf16 or back
        encode the query differently)."""
        weights = tuple((p._version, float(p.detach().double().sum()))
                        for p in self.encoder.parameters())
        weights += tuple(sorted({str(p.dtype) for p in self.glow.parameters()}))
        return (query.data_ptr(), query._version, tuple(query.shape), query.device,
                float(query.double().sum()), weights)

    def begin_sequence(self) -> None:
        """A new source sequence starts: the next relative :meth:`transfer` takes its first
        mixed frame as the reference (test.py and evaluate.py call this before each source)."""
        self._reference_lips = None

    @torch.no_grad()
    def transfer(self, query: Tensor, mix: Tensor, relative: bool = False) -> Tensor:
        """Query [1, 3, S, S] and mouth-mixed frames [T, 3, S, S] -> [T, 3, S, S].

        Per level ``z = face(query) + lip(mix)`` (absolute motion, the thesis's), inverted
        exactly by the Glow. ``relative``: ``z = z(query) + lip(mix_t) - lip(mix_0)``, the
        query's own latents moved by the change of the mix's lip part since the sequence's
        first frame (ours: the lip part's share of the source's lips and pose cancels; the
        first frame stands for the query's state, so the source should start at rest, as
        words and sentences do). The reference is the first frame after
        :meth:`begin_sequence` or after a new query.

        On the first call for a query it is encoded in one pass with these frames (one Glow
        pass less before the first frame; every layer acts on each sample alone, so the values
        are those of separate passes up to float rounding), and its parts are cached.
        """
        key = self._query_key(query)
        if self._query_cache is None or self._query_cache[0] != key:
            faces, lips = self.encoder.split(self.glow.encode(torch.cat([query, mix])))
            n = query.shape[0]  # (copies: the cache must not hold the chunk's latents)
            self._query_cache = (key, [f[:n].clone() for f in faces],
                                 [m[:n].clone() for m in lips])
            self._reference_lips = None
            lips = [m[n:] for m in lips]
        else:
            _, lips = self.encoder.split(self.glow.encode(mix))
        q_faces, q_lips = self._query_cache[1], self._query_cache[2]
        if not relative:
            z = [f + m for f, m in zip(q_faces, lips, strict=True)]
        else:
            if self._reference_lips is None:
                self._reference_lips = [m[:1].clone() for m in lips]
            z = [f + q + (m - r) for f, q, m, r in
                 zip(q_faces, q_lips, lips, self._reference_lips, strict=True)]
        return self.glow.reverse(z, reconstruct=True)


# -------------------------------------------------------------------------------------------
# Losses (latents per level as [B, T, C, h, h]; each term is a sum over levels of mean squares)

@torch.no_grad()
def split_diagnostics(z: Sequence[Tensor], faces: Sequence[Tensor], lips: Sequence[Tensor]
                      ) -> dict[str, Tensor]:
    """How the split shares the latents' variation, pooled over levels (all [B, T, C, h, h]).

    ``face_tvar``: the face parts' variance over time within a clip, relative to ``z``'s (want
    0); ``lip_tvar``: the same for the lip parts (want 1; 0 means lip = 0, "copy the query");
    ``lip_ivar``: the variance of the lip parts' clip means across clips, relative to ``z``'s
    (want 0; 1 means the lip part carries the identity, lip = z - c, "copy the mix").
    """
    def tvar(x: Tensor) -> Tensor:
        return ((x - x.mean(1, keepdim=True)) ** 2).sum()

    def ivar(x: Tensor) -> Tensor:
        m = x.mean(1)
        return ((m - m.mean(0, keepdim=True)) ** 2).sum()

    zt = sum(tvar(zi) for zi in z)
    zi_ = sum(ivar(zi) for zi in z)
    tiny = torch.finfo(zt.dtype).tiny
    out = {"face_tvar": sum(tvar(f) for f in faces) / (zt + tiny),
           "lip_tvar": sum(tvar(m) for m in lips) / (zt + tiny)}
    if z[0].shape[0] > 1:
        out["lip_ivar"] = sum(ivar(m) for m in lips) / (zi_ + tiny)
    return out


def roll_time(x: Tensor, shifts: Tensor) -> Tensor:
    """out[b, t] = x[b, (t + shifts[b]) % T] for x [B, T, ...] (the thesis's rolled pairs)."""
    b, t = x.shape[:2]
    idx = (torch.arange(t, device=x.device)[None, :] + shifts.to(x.device)[:, None]) % t
    return x[torch.arange(b, device=x.device)[:, None], idx]


def reconstruction_loss(z: Sequence[Tensor], faces: Sequence[Tensor], lips: Sequence[Tensor],
                        shifts: Tensor) -> Tensor:
    """Sequential random-pair reconstruction: another frame's face + this frame's lips ~ z."""
    return sum(F.mse_loss(roll_time(f, shifts) + m, zi)
               for zi, f, m in zip(z, faces, lips, strict=True))


def structural_loss(z: Sequence[Tensor], faces: Sequence[Tensor]) -> Tensor:
    """Structural-perceptual term: each frame's face part close to its clip's mean latent."""
    return sum(F.mse_loss(f, zi.mean(dim=1, keepdim=True).expand_as(f))
               for zi, f in zip(z, faces, strict=True))


def cycle_loss(encoder: FeatureEncoder, faces: Sequence[Tensor], lips: Sequence[Tensor],
               pair_frames: Tensor, partner_faces: Sequence[Tensor] | None = None) -> Tensor:
    """Cycle consistency: the face part of (clip b+1's face at one frame + clip b's lips) is
    that face again. With ``lip = E(z), face = z - lip`` this equals ``E(mix) = lips``.

    ``partner_faces`` (per level [B, C, h, h]): those partner faces computed elsewhere (DDP,
    where clip b+1 of the global batch may sit on another rank); default: from ``faces``.
    """
    total = 0
    for i, (f, m) in enumerate(zip(faces, lips, strict=True)):
        b, t = m.shape[:2]
        if partner_faces is not None:
            face_a = partner_faces[i]
        else:
            other = torch.roll(torch.arange(b, device=f.device), -1)
            face_a = f[other, pair_frames.to(f.device)]  # [B, C, h, h]
        target = face_a[:, None].expand_as(m)
        mix = (target + m).flatten(0, 1)
        face_mix, _ = encoder.split_level(i, mix)
        total = total + F.mse_loss(face_mix, target.flatten(0, 1))
    return total
