"""The metrics papers in this field report, beside this project's own.

Built in (no weights beyond dlib's, which ship in ``face_recognition_models``):

* ``csim_dlib``: identity similarity, the cosine of dlib's 128-D face descriptors (dlib's
  ResNet, *not* ArcFace: labelled dlib-CSIM) of the output and the identity reference (the
  query; for a pose transfer the source face), on :data:`CSIM_FRAMES` evenly spaced frames of
  each sequence. Higher is more the same person. It measures identity only: copying the query
  scores 1, above the truth (whose mouth differs).
* ``lmd``: landmark distance on the mouth (dlib points 48-67), ``akd``: average keypoint
  distance over all 68 points; both the mean point-to-point distance between the output's
  landmarks and the ground truth's, in pixels at :data:`SCORE_SIZE` (256) px.
* ``sharp``: sharpness, the variance of the Laplacian (OpenCV's 3 x 3 kernel) of the grey
  mouth box at the model's size, in 8-bit units squared. Higher is sharper. It measures blur
  only: copying the query is as sharp as the truth, so it cannot rank the truth above that
  baseline; read it beside the others.
* ``ms_ssim``: multi-scale SSIM (Wang, Simoncelli and Bovik 2003: 5 scales, an 11 x 11
  Gaussian window of sigma 1.5, weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333, K1 0.01,
  K2 0.03, 2 x 2 average pooling between scales) against the truth, on both images enlarged
  to 256 px (bicubic; the smallest scale is then 16 px).
* ``jitter_err``: temporal error, the mean absolute difference between the output's
  frame-to-frame change and the truth's (``[0, 1]`` units at the model's size): a still
  sequence scores the truth's own motion, a flickering one more.

From local files (no download; each column is absent, not zero, without its file):

* ``lpips``: LPIPS (Zhang et al. 2018) against the truth, ``--lpips FILE``: a ``torch.save``d
  dict ``{"net": "alex" | "vgg16", "backbone": torchvision's ``features`` state dict,
  "heads": the five linear heads (``lin0.model.1.weight`` ... as the LPIPS release names
  them)}`` (:class:`LPIPS`);
* ``csim_arcface``: cosine of ArcFace embeddings, ``--arcface FILE``: a TorchScript network
  ``[B, 3, 112, 112]`` RGB in ``[-1, 1]`` -> ``[B, D]`` (:class:`Embedder`);
* ``lse_c``/``lse_d``: SyncNet lip-sync confidence and distance, ``--syncnet FILE``
  (:mod:`evaluation.syncnet`): needs the source's audio (a real source given as a video file
  with sound); without any, no column and a one-line note.

dlib on 32-64 px model outputs finds no face and places no reliable landmark: every dlib
metric here looks at the output and the truth enlarged to :data:`SCORE_SIZE` px (bicubic), with
the face box of the aligned crop (``faces.metrics.ALIGNED_FACE_BOX_256``), as the real-sequence
metrics do.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faces.metrics import aligned_descriptor, aligned_landmarks
from faces.parallel import Later, thread_map
from lrw.synthetic import SyntheticSet
from talking.inputs import read_rgb, resolve_source
from training.progress import progress as make_bar

from .metrics import mouth_crop, upscale
from .models import BASELINE_COPY, like_model_input, run_sequence
from .syncnet import SyncNet

__all__ = ["SCORE_SIZE", "Embedder", "FieldNets", "FieldScorer", "LPIPS", "cosine",
           "jitter_error", "laplacian_sharpness", "ms_ssim"]

SCORE_SIZE = 256
CSIM_FRAMES = 4
"""dlib-CSIM: frames per sequence whose descriptor is computed (evenly spaced)."""
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class NetFileError(ValueError):
    """A metric network file is missing or unusable; one line naming the flag."""


# -- no weights ---------------------------------------------------------------------------------


def laplacian_sharpness(image: np.ndarray) -> float:
    """Variance of the 3 x 3 Laplacian of the grey mouth box (``faces.blend.mouth_box``) of a
    uint8 RGB image [S, S, 3]."""
    grey = cv2.cvtColor(np.ascontiguousarray(mouth_crop(image)), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F, ksize=1).var())


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_parts(x: np.ndarray, y: np.ndarray, win: np.ndarray, luminance: bool = True
                ) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of float64 images [H, W, C] in [0, 255]
    (separable Gaussian filtering, 'valid' region only, per channel). ``luminance=False``:
    the contrast-structure term only (the SSIM is NaN), all that MS-SSIM's finer scales use."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    r = len(win) // 2
    # the five local moments in one separable filtering pass over 5 * C channels ('constant'
    # borders; only the valid region is kept, so the border rule does not matter), then
    # channels first, so that the arithmetic below runs over contiguous planes
    maps = np.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    blurred = cv2.sepFilter2D(maps, cv2.CV_64F, win, win, borderType=cv2.BORDER_CONSTANT)
    mx, my, bxx, byy, bxy = np.split(
        np.ascontiguousarray(blurred[r:-r, r:-r].transpose(2, 0, 1)), 5)
    mxx, myy, mxy = mx * mx, my * my, mx * my
    cs = (2 * (bxy - mxy) + c2) / ((bxx - mxx) + (byy - myy) + c2)
    if not luminance:
        return float("nan"), float(cs.mean())
    ssim = (2 * mxy + c1) / (mxx + myy + c1) * cs
    return float(ssim.mean()), float(cs.mean())


def _halve(t: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling of [H, W, C] (an odd last row/column dropped)."""
    h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
    t = t[:h, :w]
    return (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]) / 4


def ms_ssim(reference: np.ndarray, image: np.ndarray, size: int | None = SCORE_SIZE) -> float:
    """Multi-scale SSIM (module docstring) of two uint8 RGB images, both enlarged to
    ``size`` first (``size=None``: as they are; they must be at least 176 px)."""
    x = (upscale(reference, size) if size else np.asarray(reference)).astype(np.float64)
    y = (upscale(image, size) if size else np.asarray(image)).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if min(x.shape[:2]) < 11 * 2 ** (len(MS_WEIGHTS) - 1):
        raise ValueError(f"MS-SSIM needs images of at least 176 px, got {x.shape[:2]}")
    win = _gaussian()
    values = []
    last = len(MS_WEIGHTS) - 1
    for i in range(len(MS_WEIGHTS)):
        ssim, cs = _ssim_parts(x, y, win, luminance=i == last)
        values.append(ssim if i == last else cs)
        if i < last:
            x, y = _halve(x), _halve(y)
    # a negative term at a scale means no similarity there (clamped, as common implementations)
    return float(np.prod(np.maximum(values, 0.0) ** np.asarray(MS_WEIGHTS)))


def jitter_error(frames: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute difference between the frame-to-frame changes of ``frames`` and of
    ``truth`` (uint8 [T, S, S, 3]), in ``[0, 1]`` units; ``NaN`` under two frames."""
    if len(frames) < 2:
        return float("nan")
    d_out = np.diff(frames.astype(np.float32) / 255, axis=0)
    d_true = np.diff(truth.astype(np.float32) / 255, axis=0)
    return float(np.abs(d_out - d_true).mean())


# -- from files ---------------------------------------------------------------------------------


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the layers LPIPS reads: after these indices of torchvision's ``features``
LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg16": (3, 8, 15, 22, 29)}


def _features(net: str) -> nn.Sequential:
    # deferred: torchvision.models costs 1.6-3 s at start-up (python -X importtime); only
    # --lpips needs it
    if net == "alex":
        from torchvision.models import alexnet  # deferred: as said above

        return alexnet().features[: LPIPS_TAPS[net][-1] + 1]
    from torchvision.models.vgg import cfgs, make_layers  # deferred: as said above

    return make_layers(cfgs["D"])[: LPIPS_TAPS[net][-1] + 1]


class LPIPS(nn.Module):
    """LPIPS distance from a local file (module docstring): unit-normalised features of five
    backbone layers, squared differences weighted by non-negative linear heads, averaged over
    space, summed over layers. Inputs RGB uint8 or floats in [0, 1]."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise NetFileError(f"--lpips {path}: no such file (a torch.save'd dict with 'net', "
                               "'backbone' and 'heads'; docs/evaluate.md says how to make it)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net = state["net"]
            self.features = _features(net).eval().requires_grad_(False)
            self.features.load_state_dict({k.removeprefix("features."): v for k, v in
                                           state["backbone"].items()
                                           if int(k.removeprefix("features.").split(".")[0])
                                           <= LPIPS_TAPS[net][-1]})
            heads = [state["heads"][f"lin{i}.model.1.weight"].float() for i in range(5)]
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            raise NetFileError(f"--lpips {path}: not an LPIPS file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        except Exception as exc:  # noqa: BLE001 - an unpickling failure is one line too
            raise NetFileError(f"--lpips {path}: unreadable ({exc})") from None
        self.heads = [h.reshape(1, -1, 1, 1) for h in heads]
        self.taps = LPIPS_TAPS[net]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _feats(self, x: Tensor) -> list[Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """LPIPS [N] between uint8 batches ``a``, ``b`` [N, S, S, 3] (at least 32 px: smaller
        ones are enlarged to 64 first, bicubic)."""
        x, y = (_to_float(t) for t in (a, b))
        if x.shape[-1] < 32:
            x = F.interpolate(x, size=64, mode="bicubic", align_corners=False).clamp(0, 1)
            y = F.interpolate(y, size=64, mode="bicubic", align_corners=False).clamp(0, 1)
        total = torch.zeros(x.shape[0])
        for fx, fy, w in zip(self._feats(x), self._feats(y), self.heads, strict=True):
            total += ((fx - fy) ** 2 * w).sum(1).mean((1, 2))
        return total.numpy()


def _to_float(images: np.ndarray) -> Tensor:
    # a copy (torch.tensor): the frames may be a read-only view, which from_numpy warns about
    t = torch.tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return t / 255 if images.dtype == np.uint8 else t


class Embedder(nn.Module):
    """A TorchScript face-embedding network (ArcFace-style) from ``--arcface FILE``:
    ``[B, 3, 112, 112]`` RGB in [-1, 1] -> ``[B, D]``; embeddings are unit-normalised."""

    def __init__(self, path: str | Path, flag: str = "--arcface", size: int = 112) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise NetFileError(f"{flag} {path}: no such file (a TorchScript face-embedding "
                               "network: torch.jit.save of a traced or scripted model)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001
            raise NetFileError(f"{flag} {path}: not a TorchScript file ({exc})") from None
        self.size = size

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Unit embeddings [N, D] of uint8 RGB images [N, S, S, 3]."""
        x = _to_float(images) * 2 - 1
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.net(x).float().flatten(1), dim=1).numpy()


@dataclass
class FieldNets:
    """The optional networks (``None`` when their flag is not given) and notes for the table."""

    lpips: LPIPS | None = None
    arcface: Embedder | None = None
    syncnet: object | None = None  # evaluation.syncnet.SyncNet
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, lpips: str | None, arcface: str | None, syncnet: str | None) -> FieldNets:
        nets = cls(LPIPS(lpips) if lpips else None, Embedder(arcface) if arcface else None)
        if syncnet:
            nets.syncnet = SyncNet(syncnet)
        return nets


# -- per frame, with dlib ----------------------------------------------------------------------


# values already measured in this process, by the content of the images they were measured
# on: dlib's landmarks and descriptors, and MS-SSIM. The baselines' frames (copying the query,
# the mouth blend) are the same for every model evaluated on a set, so a second evaluation in
# one process (make demo's AD-flow, then MI-flow) measures them once; so is the identity
# reference, which is the query itself
_MEMO: dict[tuple, object] = {}
_ALIGNED = {"lm": functools.partial(aligned_landmarks, size=SCORE_SIZE),
            "desc": functools.partial(aligned_descriptor, size=SCORE_SIZE)}
_MEMO_MAX = 16384  # entries (the largest, a descriptor, is 1 KB): cleared when full


def _key(kind: str, images: Sequence[np.ndarray]) -> tuple[str, str]:
    h = hashlib.sha1()
    for im in images:
        im = np.ascontiguousarray(im)
        h.update(f"{im.shape}{im.dtype.str}".encode())
        h.update(im.tobytes())
    return kind, h.hexdigest()


def _remember(key: tuple[str, str], value) -> None:
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = value


def _copy(value):
    return value.copy() if isinstance(value, np.ndarray) else value


def _memo_map(kind: str, groups: Sequence[Sequence[np.ndarray]], compute) -> list:
    """``[compute(*g) for g in groups]``, or each value from an earlier call on images of the
    same content (array values come back as copies); the values not yet known are computed
    in threads (``faces.parallel``; each exactly as alone), each content once."""
    keys = [_key(kind, g) for g in groups]
    known = {k: _MEMO[k] for k in keys if k in _MEMO}
    todo = {k: g for k, g in zip(keys, groups, strict=True) if k not in known}
    values = thread_map(lambda g: compute(*(np.ascontiguousarray(im) for im in g)),
                        list(todo.values()))
    for k, v in zip(todo, values, strict=True):
        _remember(k, v)
        known[k] = v
    return [_copy(known[k]) for k in keys]


class FieldScorer:
    """Every field metric of one output sequence against its truth and identity reference.

    ``dlib=False`` leaves the dlib columns out (``--no_dlib_metrics``)."""

    def __init__(self, nets: FieldNets | None = None, dlib: bool = True) -> None:
        self.nets = nets or FieldNets()
        self.dlib = dlib

    @staticmethod
    def _dlib(kind: str, image: np.ndarray) -> Later:
        """dlib's landmarks (``kind="lm"``) or descriptor (``"desc"``) of a model-size image
        enlarged to ``SCORE_SIZE``, remembered by content, computed in the helper process
        (``faces.parallel``: dlib holds the GIL, so it runs beside this process's work)."""
        key = _key(kind, [image])
        if key not in _MEMO:
            _remember(key, Later(_ALIGNED[kind], np.ascontiguousarray(image)))
        return _MEMO[key]

    def references(self, truth: np.ndarray, identity: np.ndarray) -> dict:
        """What every system's sequence is compared with: the truth's landmarks and the
        identity reference's descriptor and embedding (computed once per pair; dlib's values
        as :class:`faces.parallel.Later`)."""
        ref: dict = {"truth": truth}
        if self.dlib:
            ref["lm"] = [self._dlib("lm", t) for t in truth]
            ref["desc"] = self._dlib("desc", identity)
        if self.nets.arcface is not None:
            ref["emb"] = self.nets.arcface.embed(identity[None])[0]
        return ref

    def score(self, frames: np.ndarray, ref: dict, constant: bool = False) -> dict[str, list]:
        """Per-frame values ``{column: [values]}`` of ``frames`` [T, S, S, 3] (``constant``:
        every frame is the same image, measured once)."""
        return resolve(self.score_later(frames, ref, constant))

    def score_later(self, frames: np.ndarray, ref: dict, constant: bool = False) -> dict:
        """:meth:`score` with dlib's columns still being computed: those are functions that
        return their lists (:func:`resolve` calls them), so that the next sequences can be
        scored meanwhile."""
        truth = ref["truth"]
        n = len(frames)
        out: dict = {}
        if self.dlib:  # first, so that the helper starts on them at once
            lms = [self._dlib("lm", frames[0])] * n if constant else \
                [self._dlib("lm", f) for f in frames]
            # identity barely changes within a sequence, and dlib's descriptor is the cost
            # (about 0.1 s a frame): CSIM_FRAMES evenly spaced frames per sequence
            pick = [0] if constant else _spread(n, CSIM_FRAMES)
            descs = [self._dlib("desc", frames[i]) for i in pick]
            ref_lm, ref_desc = ref["lm"], ref["desc"]

            def distances(points: slice) -> Callable[[], list[float]]:
                return lambda: [_point_distance(a.get(), b.get(), points)
                                for a, b in zip(lms, ref_lm, strict=True)]

            out["lmd"] = distances(slice(48, 68))
            out["akd"] = distances(slice(0, 68))
            out["csim_dlib"] = lambda: [cosine(d.get(), ref_desc.get()) for d in descs] * (
                n if constant else 1)
        out |= {
            "ms_ssim": _memo_map("ms_ssim", list(zip(truth, frames, strict=True)), ms_ssim),
            "sharp": [laplacian_sharpness(frames[0])] * n if constant
            else [laplacian_sharpness(f) for f in frames],
            "jitter_err": [jitter_error(frames, truth)]}
        if self.nets.lpips is not None:
            out["lpips"] = list(self.nets.lpips.distance(frames, truth))
        if self.nets.arcface is not None:
            emb = self.nets.arcface.embed(frames[:1] if constant else frames)
            sims = emb @ ref["emb"]
            out["csim_arcface"] = [float(sims[0])] * n if constant else [float(s) for s in sims]
        return {k: out[k] for k in _COLUMN_ORDER if k in out}


_COLUMN_ORDER = ("ms_ssim", "sharp", "jitter_err", "lmd", "akd", "csim_dlib", "lpips",
                 "csim_arcface")


def resolve(values: dict) -> dict[str, list]:
    """A :meth:`FieldScorer.score_later` result with every column's values in place."""
    return {k: v() if callable(v) else v for k, v in values.items()}


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced indices of ``range(n)``."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _point_distance(a: np.ndarray | None, b: np.ndarray | None, points: slice) -> float:
    if a is None or b is None:
        return float("nan")
    return float(np.linalg.norm(np.asarray(a)[points] - np.asarray(b)[points], axis=1).mean())


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine similarity of two descriptors (``NaN`` when either is ``None``)."""
    if a is None or b is None:
        return float("nan")
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def pool(per_frame: Sequence[dict[str, list]]) -> dict[str, float]:
    """Means over every frame (over every sequence for ``jitter_err``) of several
    :meth:`FieldScorer.score` results; NaNs (no face) left out."""
    keys = dict.fromkeys(k for d in per_frame for k in d)
    out = {}
    for k in keys:
        vals = np.asarray([v for d in per_frame for v in d.get(k, [])], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if vals.size else float("nan")
    return out


def evaluate_synthetic_field(root: str | Path, systems, size: int, scorer: FieldScorer,
                             device="cpu", batch: int = 16, pairs: int | None = None,
                             seq_frames: int | None = None, blend: str = "poisson",
                             progress: bool = True) -> dict[str, dict[str, float]]:
    """The field metrics of every system and both baselines on the query x source pairs of a
    synthetic talking-face set (the same pairs, frames and truth as
    ``evaluation.synthetic.evaluate_synthetic``): ``{label: {column: value}}``. The identity
    reference is the query as the model sees it."""
    syn = SyntheticSet.load(root)
    todo = list(itertools.product(syn.query_names, syn.source_names))[:pairs or None]
    acc: dict[str, list[dict]] = {}
    bar = None
    if progress:
        bar = make_bar(len(todo), f"field metrics {Path(root).name}", unit="pair",
                       file=sys.stderr)
    try:
        for q, s in todo:  # dlib's columns run in the helper process meanwhile
            source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
            paths = source.frames[:seq_frames] if seq_frames else source.frames
            frames = [read_rgb(p) for p in paths]
            query = read_rgb(syn.query_path(q))
            outs = run_sequence(query, frames, size, systems, device, batch, blend)
            truth = np.stack([like_model_input(syn.ground_truth(q, s, t, 256), size)
                              for t in range(len(frames))])
            ref = scorer.references(truth, like_model_input(query, size))
            for lab, seq in outs.items():
                acc.setdefault(lab, []).append(scorer.score_later(
                    seq, ref, constant=lab == BASELINE_COPY))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {lab: pool([resolve(d) for d in v]) for lab, v in acc.items()}
