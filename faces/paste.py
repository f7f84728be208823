"""Paste-back: a face generated at a model's size composited into a full-resolution picture.

The models work at their own size (32 or 64 px); people watch the query (256 px, or the original
photo). Only the region the model is meant to change (the talking models: the mouth box the mix
replaced, with a margin; the pose flow: the face) is taken from the generated frame, blended in
with a feathered mask; every pixel where the mask is 0 is the picture's own, exactly. Inside,
either the model's *change* (its frame minus its input as it saw it, ``reference``) is
upsampled and added to that input at full resolution, which keeps the input's own detail
wherever the model changed nothing, or the model's pixels themselves are upsampled and matched
in colour to the picture by the per-channel gain the mouth blend uses
(:func:`faces.blend.gain_match`; ``--paste_back replace``).

The talking models are fed the mouth mix (the query with the source's mouth blended in), so
their input at full resolution is the mix made at 256 px: ``reference_offset`` (that mix minus
the query) carries it, and a model that changes nothing gives back exactly the 256 px blend
(``test.py --paste_back region``, the default). On the demo's held-out frontal pairs at 256 px
(seed 0) that scores +5.07 dB over copying the query against +0.72 dB when the change is added
to the query instead (``--paste_back query``) and +4.59 dB for the blend alone: the blend's
full-resolution mouth plus the model's low-resolution correction.

Geometry is said once, in "crop pixels at 256": the aligned crop's frame
(``faces.align``: mouth centre at (128, 160)). A picture is tied to that frame by an affine map
``crop256 -> picture`` (a plain resize for the query itself, the inverse of the alignment's
similarity transform for the original photo).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from faces.blend import MOUTH_BOX_256, gain_match

__all__ = ["FACE_BOX_256", "REGIONS", "PasteRegion", "crop_to_picture", "paste_back",
           "region_mask_256"]

FACE_BOX_256 = (36, 248, 40, 216)
"""The face in a 256 px aligned crop, ``(top, bottom, left, right)``: brows to chin, cheek to
cheek (the mouth centre is at (128, 160), the mouth 43 px wide)."""

MOUTH_MARGIN_256 = 14
"""Margin around the mouth box, in crop pixels at 256: the lips and the skin they move."""

FEATHER_256 = 10
"""Width of the mask's ramp from 1 to 0, in crop pixels at 256 (inside the region)."""

REGIONS = ("mouth", "face")


class PasteRegion:
    """A region of the aligned crop (``box``, in crop pixels at 256, end exclusive) with the
    width of its feathered edge."""

    def __init__(self, box: tuple[int, int, int, int], feather: float = FEATHER_256) -> None:
        self.box = tuple(int(v) for v in box)
        self.feather = float(feather)

    @classmethod
    def named(cls, name: str) -> PasteRegion:
        """``"mouth"``: the mouth box with :data:`MOUTH_MARGIN_256`; ``"face"``: the face."""
        if name == "mouth":
            t, b, left, r = MOUTH_BOX_256
            m = MOUTH_MARGIN_256
            return cls((t - m, b + m, left - m, r + m))
        if name == "face":
            return cls(FACE_BOX_256, feather=2 * FEATHER_256)
        raise ValueError(f"unknown paste region {name!r}; choose one of {', '.join(REGIONS)}")


def region_mask_256(region: PasteRegion, scale: int = 1) -> np.ndarray:
    """``float32 [256*scale, 256*scale]``: 1 inside ``region.box`` shrunk by the feather, a
    smooth (cosine) ramp to 0 at the box's edge, 0 outside."""
    n = 256 * scale
    top, bottom, left, right = (v * scale for v in region.box)
    f = max(region.feather * scale, 1.0)
    centres = np.arange(n, dtype=np.float64) + 0.5

    def ramp(lo: float, hi: float) -> np.ndarray:
        d = np.minimum(centres - lo, hi - centres)  # distance inside the interval
        t = np.clip(d / f, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(math.pi * t)

    return (ramp(top, bottom)[:, None] * ramp(left, right)[None, :]).astype(np.float32)


def crop_to_picture(crop_to_photo: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The ``[2, 3]`` affine map from crop pixels at 256 to a picture's pixels.

    ``crop_to_photo``: that map for an original photo (the inverse of the alignment's
    similarity transform), or ``None`` for the query itself: a plain resize of the 256 frame to
    the picture's ``(height, width)`` (pixel centres kept aligned, as resizes do).
    """
    if crop_to_photo is not None:
        return np.asarray(crop_to_photo, dtype=np.float64).reshape(2, 3)
    h, w = shape
    sx, sy = w / 256.0, h / 256.0
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ∘ b`` of two ``[2, 3]`` affine maps (apply ``b`` first)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def _model_to_crop(size: int) -> np.ndarray:
    """Pixels of a ``size`` x ``size`` model frame -> crop pixels at 256 (centres aligned)."""
    k = 256.0 / size
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5]])


def paste_back(picture: np.ndarray, generated: np.ndarray, region: PasteRegion,
               crop_to_photo: np.ndarray | None = None, gain: bool = True,
               reference: np.ndarray | None = None,
               reference_offset: np.ndarray | None = None) -> np.ndarray:
    """``picture`` with ``generated``'s ``region`` composited in.

    Args:
        picture: ``uint8 [H, W, 3]``, the query at its own resolution or the original photo.
        generated: ``uint8 [S, S, 3]``, the model's frame, which shows the aligned crop.
        region: what is taken from ``generated`` (:meth:`PasteRegion.named`).
        crop_to_photo: ``[2, 3]`` map from crop pixels at 256 to ``picture`` pixels, for an
            original photo (see :func:`crop_to_picture`); ``None``: ``picture`` is the crop.
        gain: scale ``generated`` per channel so that the ring just outside the region has the
            picture's mean colour there (the mouth blend's colour matching).
        reference: ``uint8 [S, S, 3]``, the picture as the model saw it; when given, only the
            model's change (``generated - reference``) is upsampled and added to the picture
            inside the region (no gain: the change carries no colour cast of its own).
        reference_offset: ``[256, 256, 3]`` (crop frame at 256 px), with ``reference`` only: how
            the model's input at full resolution differs from ``picture`` (the talking models:
            the 256 px mouth mix minus the 256 px query). Added inside the region with the
            model's change, so that region shows the model's input at full resolution plus the
            model's change to it.

    Returns a new ``uint8 [H, W, 3]``; every pixel where the mask is 0 (outside the region)
    equals ``picture``'s.
    """
    picture = np.asarray(picture)
    generated = np.asarray(generated)
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"picture must be uint8 [H, W, 3], got {picture.dtype} {picture.shape}")
    if generated.dtype != np.uint8 or generated.ndim != 3 or generated.shape[2] != 3:
        raise ValueError(f"generated must be uint8 [S, S, 3], got {generated.dtype} "
                         f"{generated.shape}")
    h, w = picture.shape[:2]
    to_pic = crop_to_picture(crop_to_photo, (h, w))
    gen_to_pic = _compose(to_pic, _model_to_crop(generated.shape[0]))
    # The work happens on the region's bounding box in the picture only.
    t, b, left, r = region.box
    corners = np.array([[left - 0.5, t - 0.5], [r - 0.5, t - 0.5], [left - 0.5, b - 0.5],
                        [r - 0.5, b - 0.5]])
    pts = corners @ to_pic[:, :2].T + to_pic[:, 2]
    x0 = max(int(math.floor(pts[:, 0].min())) - 2, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 3, w)
    y0 = max(int(math.floor(pts[:, 1].min())) - 2, 0)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 3, h)
    out = picture.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    pw, ph = x1 - x0, y1 - y0
    base = picture[y0:y1, x0:x1]
    if reference_offset is not None and reference is None:
        raise ValueError("reference_offset needs reference (the model's input as it saw it)")
    if reference is not None:
        change = generated.astype(np.float32) - np.asarray(reference, np.float32)
        change_up = cv2.warpAffine(change, _compose(shift, gen_to_pic), (pw, ph),
                                   flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        if reference_offset is not None:
            offset = np.asarray(reference_offset, np.float32)
            if offset.shape != (256, 256, 3):
                raise ValueError(f"reference_offset must be [256, 256, 3], got {offset.shape}")
            change_up += cv2.warpAffine(offset, _compose(shift, to_pic), (pw, ph),
                                        flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        up = np.clip(base.astype(np.float32) + change_up, 0, 255)
        gain = False
    else:
        up = cv2.warpAffine(generated, _compose(shift, gen_to_pic), (pw, ph),
                            flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    # The mask is drawn at 4x in the crop frame, then mapped like the frame.
    mask_scale = 4
    mask_hi = region_mask_256(region, mask_scale)
    hi_to_crop = np.array([[1 / mask_scale, 0.0, 0.5 / mask_scale - 0.5],
                           [0.0, 1 / mask_scale, 0.5 / mask_scale - 0.5]])
    mask = cv2.warpAffine(mask_hi, _compose(shift, _compose(to_pic, hi_to_crop)), (pw, ph),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask[mask < 1e-3] = 0.0
    if gain:
        inside = mask > 0
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        ring &= ~inside
        if not ring.any():  # the region fills the picture: match over the feathered band
            ring = inside & (mask < 1)
        if ring.any():
            up = gain_match(up, base, ring)
    m = mask[..., None]
    blended = base.astype(np.float32) * (1 - m) + up.astype(np.float32) * m
    patch = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    patch[mask == 0] = base[mask == 0]
    out[y0:y1, x0:x1] = patch
    return out
