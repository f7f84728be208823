"""Closed-form (least-squares) initialisation of AD-flow's linear feature encoders.

Why: the thesis trains the encoders from a random initialisation with Adam. Its structural term
``|face_t - mean_t z|^2`` with ``face = z - E(z)`` asks for ``E(z_t) = z_t - mean_t z``: the lip
part is the frame's deviation from its clip's mean (the motion), the face part the clip's mean
(the identity). That target is linear in ``z``, so for the linear encoder (one ``h*h x h*h`` map
per level, shared by the channels, plus a bias) its ridge-regularised minimiser has a closed
form over the training clips (``--encoder full``: one map over a level's whole latent, with
``x`` every frame's ``C*h*h`` vector; :attr:`FullEncoder.vectors`)::

    W = C_yx (C_xx + lambda I)^-1,   b = mean(y) - W mean(x),   y = x - mean_t x

with ``x`` every (frame, channel) position vector of a level, ``lambda = ridge * tr(C_xx) / P``.
Gradient descent from a random start gets there slowly: the identity part of ``z`` is far larger
than the mouth's motion, so the first thing Adam learns is ``E ~ 0`` (copy the query), and at the
thesis's learning rate it stays near it for a long time (see docs/ad_flow.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from .model import CLOSED_FORM, ADFlow

__all__ = ["LevelStats", "PairStats", "fit_linear_encoders", "install_fit"]


class LevelStats:
    """Running sums of one level's vectors ``x`` [n, P] and targets ``y`` (float64): a
    position vector per (frame, channel) for the thesis's map, a frame's whole latent for
    ``--encoder full``."""

    def __init__(self, p: int) -> None:
        self.n = 0
        self.sx = torch.zeros(p, dtype=torch.float64)
        self.sy = torch.zeros(p, dtype=torch.float64)
        self.sxx = torch.zeros(p, p, dtype=torch.float64)
        self.syx = torch.zeros(p, p, dtype=torch.float64)

    def add_clip(self, x: Tensor) -> None:
        """One clip's vectors of this level ``[T, ..., P]`` (the encoder's ``vectors(z)``)."""
        x = x.detach().double().cpu()  # [T, C, P] or [T, P]
        y = x - x.mean(0, keepdim=True)
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.syx += y.T @ x

    def all_reduce(self, device: torch.device) -> None:
        """Sum these statistics over every rank of the process group."""
        n = torch.tensor([float(self.n)], dtype=torch.float64)
        for t in (n, self.sx, self.sy, self.sxx, self.syx):
            buf = t.to(device)
            torch.distributed.all_reduce(buf)
            t.copy_(buf.cpu())
        self.n = int(round(float(n)))

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """``(W [P, P], b [P])`` of the ridge regression ``y ~ W x + b``."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        cxx = self.sxx / n - torch.outer(mx, mx)
        cyx = self.syx / n - torch.outer(my, mx)
        p = cxx.shape[0]
        lam = ridge * float(torch.trace(cxx)) / p + 1e-12
        w = torch.linalg.solve(cxx + lam * torch.eye(p, dtype=cxx.dtype), cyx.T).T
        return w, my - w @ mx

    def explained(self, w: Tensor, b: Tensor) -> float:
        """1 - residual / total of the fitted target (from the sums; no second pass)."""
        return _explained(self, w, b)


class PairStats:
    """Uncentred running sums of one level's inputs ``x`` and targets ``y`` [n, P] (float64) for
    a map without bias, ``y ~ W x``: what the matched and oracle fits regress."""

    def __init__(self, p: int) -> None:
        self.sxx = torch.zeros(p, p, dtype=torch.float64)
        self.syx = torch.zeros(p, p, dtype=torch.float64)
        self.syy = torch.zeros((), dtype=torch.float64)

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double(), y.double()
        self.sxx += x.T @ x
        self.syx += y.T @ x
        self.syy += (y * y).sum()

    def all_reduce(self, device: torch.device) -> None:
        """Sum these statistics over every rank of the process group."""
        for t in (self.sxx, self.syx, self.syy):
            buf = t.to(device)
            torch.distributed.all_reduce(buf)
            t.copy_(buf.cpu())

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """``(W [P, P], b = 0)``: ``W = S_yx (S_xx + lambda I)^-1``, ``lambda = ridge x
        tr(S_xx) / P``."""
        p = self.sxx.shape[0]
        lam = ridge * float(torch.trace(self.sxx)) / p + 1e-12
        w = torch.linalg.solve(self.sxx + lam * torch.eye(p, dtype=self.sxx.dtype),
                               self.syx.T).T
        return w, torch.zeros(p, dtype=w.dtype)

    def explained(self, w: Tensor, b: Tensor | None = None) -> float:
        """1 - residual / total of ``y`` under ``W`` (from the sums; the bias is 0)."""
        yy = float(self.syy)
        res = yy - 2 * float(torch.sum(w * self.syx)) + float(torch.sum((w @ self.sxx) * w))
        return 1.0 - res / max(yy, 1e-12)


def install_fit(stats: list, levels, ridge: float, world: int, device: torch.device
                ) -> list[float]:
    """Sum ``stats`` (``LevelStats`` or ``PairStats``, one per level) over the ranks, solve
    each and write it into that level's linear encoder; the share explained per level."""
    if world > 1 and torch.distributed.is_initialized():
        for st in stats:
            st.all_reduce(device)
    explained = []
    with torch.no_grad():
        for st, enc in zip(stats, levels, strict=True):
            w, b = st.solve(ridge)
            enc.linear.weight.copy_(w.to(enc.linear.weight))
            enc.linear.bias.copy_(b.to(enc.linear.bias))
            explained.append(st.explained(w, b))
    return explained


def fit_linear_encoders(model: ADFlow, clips: Callable[[], object], ridge: float,
                        max_clips: int = 0, rank: int = 0, world: int = 1,
                        log: Callable[[str], None] | None = None,
                        frames_per_pass: int = 128) -> dict[str, float]:
    """Set every linear encoder of ``model`` to the closed-form minimiser of the structural term.

    ``clips()`` yields clips ``[T, 3, S, S]`` (or ``(clip, label)``) in [-0.5, 0.5]; with
    ``world > 1`` each rank encodes every ``world``-th clip and the sums are all-reduced, so every
    rank ends with the same weights as one process. Returns facts for the log (clips, seconds,
    share of the target's variance the fit explains).
    """
    levels = model.encoder.levels
    if not all(isinstance(m, CLOSED_FORM) for m in levels):
        raise ValueError("--init lstsq needs --encoder linear or full (the closed form is for "
                         "a linear map); use --init random with mlp or conv encoders")
    stats = [LevelStats(m.features) for m in levels]
    device = next(model.encoder.parameters()).device
    t0 = time.time()
    seen = 0
    last_report = t0
    pending: list[Tensor] = []

    def flush() -> None:
        # several clips per Glow pass: far fewer, larger matrix products than clip by clip
        if not pending:
            return
        lengths = [c.shape[0] for c in pending]
        zs = model.encode_frames(torch.cat(pending).to(device))
        for st, enc, z in zip(stats, levels, zs, strict=True):
            for part in torch.split(enc.vectors(z), lengths):
                st.add_clip(part)
        pending.clear()

    for k, item in enumerate(clips()):
        if max_clips and k >= max_clips:
            break
        if k % world != rank:
            continue
        pending.append(item[0] if isinstance(item, (tuple, list)) else item)
        seen += 1
        if sum(c.shape[0] for c in pending) >= frames_per_pass:
            flush()
        if log is not None and time.time() - last_report > 10:
            log(f"[ad-flow] least-squares init: {seen * world} clips encoded "
                f"({time.time() - t0:.0f} s)")
            last_report = time.time()
    flush()
    explained = install_fit(stats, levels, ridge, world, device)
    facts = {"clips": float(seen * world), "seconds": round(time.time() - t0, 2)}
    facts.update({f"explained_l{i}": e for i, e in enumerate(explained)})
    if log is not None:
        log(f"[ad-flow] least-squares init from {seen * world} clips in {facts['seconds']} s; "
            "share of the within-clip variance explained per level: "
            + ", ".join(f"{e:.3f}" for e in explained))
    return facts


def _explained(st: LevelStats, w: Tensor, b: Tensor) -> float:
    """1 - residual / total of the fitted target (from the sums; no second pass)."""
    n = max(st.n, 1)
    syy_trace = float(torch.trace(st.syx))  # sum y.x = sum y.(y + mean) = sum |y|^2 (per clip)
    # residual = sum |y - W x - b|^2 = syy - 2 tr(W^T Syx) - 2 b.sy + tr(W Sxx W^T)
    #            + 2 b.W sx + n |b|^2
    res = (syy_trace - 2 * float(torch.sum(w * st.syx)) - 2 * float(b @ st.sy)
           + float(torch.sum((w @ st.sxx) * w)) + 2 * float(b @ (w @ st.sx)) + n * float(b @ b))
    return 1.0 - res / syy_trace if syy_trace > 0 else float("nan")
