"""Face attributes (glasses, baldness, beard) drawn over :mod:`synthface.face`, with exact answers.

An attribute is an *overlay*: a colour image and an alpha map computed from the identity's
geometry (eye positions, head and face outline) and the attribute's own parameters (shape,
colour, tint, thickness). :func:`render_with` composites it over ``render(identity, NEUTRAL,
size)``, so every pixel outside the overlay's support is exactly the attribute-free face. That
makes a set/subset pair with exact ground truth:

* ``A_i`` = identity ``i`` with attribute ``attr_i``; its removal's answer is ``A_i`` without it;
* the transfer of ``A_i``'s attribute onto ``B_j`` has the answer ``render_with(B_j, attr_i)``:
  the same glasses, fitted to ``B_j``'s eyes.

:func:`write_attribute_set` writes ``OUT/{trainA,trainB,testA,testB}/NNNNN.png`` and
``OUT/manifest.json`` (identities and attributes, from which :func:`transfer_truth` and
:func:`removal_truth` re-render the answers); train and test identities are disjoint.

    python -m synthface.attributes OUT --kind glasses --size 64
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cliargs import MAX_SIZE, add_no_progress, image_size, positive_int, seed
from faces.io import save_pil

from .face import NEUTRAL, Identity, _cover, _ellipse, _grid, render, round4, sample_identity
from .output import replacing

__all__ = [
    "KINDS",
    "Attribute",
    "overlay",
    "region",
    "render_with",
    "inputs",
    "read_manifest",
    "removal_truth",
    "sample_attribute",
    "transfer_truth",
    "truth_region",
    "write_attribute_set",
]

KINDS = ("glasses", "bald", "beard")
GLASSES_SHAPES = ("round", "square", "aviator")
RGB = tuple[float, float, float]

_FRAME_COLOURS = np.array([(0.05, 0.05, 0.05), (0.55, 0.12, 0.10), (0.10, 0.20, 0.55),
                           (0.75, 0.62, 0.25), (0.85, 0.85, 0.88)])
_BEARD_COLOURS = np.array([(0.08, 0.07, 0.07), (0.25, 0.16, 0.10), (0.45, 0.30, 0.18),
                           (0.62, 0.28, 0.12), (0.60, 0.60, 0.60)])


@dataclass(frozen=True)
class Attribute:
    """One attribute instance. ``kind`` in :data:`KINDS`; ``shape`` for glasses (round, square,
    aviator); ``colour`` of the frame/beard RGB 0..1; ``tint`` lens opacity (0 clear .. 0.7 dark);
    ``scale`` size relative to the identity's eyes / face; ``thickness`` of the frame (units of
    the image size)."""

    kind: str
    shape: str = "round"
    colour: RGB = (0.05, 0.05, 0.05)
    tint: float = 0.15
    scale: float = 1.0
    thickness: float = 0.012

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Attribute:
        d = dict(d)
        d["colour"] = tuple(float(c) for c in d["colour"])
        return cls(**d)


def sample_attribute(rng: np.random.Generator, kind: str) -> Attribute:
    """Draw one attribute of ``kind`` (values rounded to 4 decimals, reproducible from JSON)."""
    if kind not in KINDS:
        raise ValueError(f"unknown attribute kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "glasses":
        c = np.clip(_FRAME_COLOURS[int(rng.integers(len(_FRAME_COLOURS)))]
                    + rng.normal(0, 0.03, 3), 0, 1)
        dark = rng.uniform() < 0.25
        return Attribute("glasses", GLASSES_SHAPES[int(rng.integers(len(GLASSES_SHAPES)))],
                         tuple(round4(v) for v in c),
                         tint=round4(rng.uniform(0.55, 0.75) if dark else rng.uniform(0.05, 0.2)),
                         scale=round4(rng.uniform(0.95, 1.2)),
                         thickness=round4(rng.uniform(0.008, 0.016)))
    if kind == "beard":
        c = np.clip(_BEARD_COLOURS[int(rng.integers(len(_BEARD_COLOURS)))]
                    + rng.normal(0, 0.03, 3), 0, 1)
        return Attribute("beard", "full", tuple(round4(v) for v in c), tint=round4(rng.uniform(0.8, 0.95)),
                         scale=round4(rng.uniform(0.9, 1.1)), thickness=0.0)
    return Attribute("bald", "bald", (1.0, 1.0, 1.0), tint=round4(rng.uniform(0.0, 0.08)),
                     scale=round4(rng.uniform(0.95, 1.05)), thickness=0.0)


# --------------------------------------------------------------------------------------------
# Overlays: (colour [S, S, 3], alpha [S, S]) in float, alpha 0 outside the attribute
# --------------------------------------------------------------------------------------------

def _rounded_box(y, x, cy, cx, a, b, radius) -> np.ndarray:
    """Signed distance to a box of half sizes ``a`` (x), ``b`` (y) with rounded corners."""
    qx = np.abs(x - cx) - (a - radius)
    qy = np.abs(y - cy) - (b - radius)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _segment(y, x, y0, x0, y1, x1) -> np.ndarray:
    """Distance to the segment (x0, y0)-(x1, y1)."""
    px, py = x - x0, y - y0
    vx, vy = x1 - x0, y1 - y0
    t = np.clip((px * vx + py * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
    return np.sqrt((px - t * vx) ** 2 + (py - t * vy) ** 2)


def _glasses(ident: Identity, attr: Attribute, S: int):
    y, x = _grid(S)
    colour = np.zeros((S, S, 3))
    alpha = np.zeros((S, S))
    frame = np.asarray(attr.colour, dtype=float)
    lens_col = frame * 0.3  # tinted lenses darken towards the frame colour
    half = attr.thickness / 2
    a = max(ident.eye_w * 1.55, 0.055) * attr.scale  # lens half width
    b = a * (0.78 if attr.shape != "aviator" else 0.92)
    outer_x = []
    for side in (-1.0, 1.0):
        cx = 0.5 + side * ident.eye_dx
        cy = ident.eye_y + (0.006 if attr.shape == "aviator" else 0.0)
        if attr.shape == "round":
            d = _ellipse(y, x, cy, cx, a, b)
        elif attr.shape == "square":
            d = _rounded_box(y, x, cy, cx, a, b * 0.9, 0.3 * b)
        else:  # aviator: a drop, wider at the top outer corner
            d = _ellipse(y, x, cy, cx, a, np.where(y > cy, b * 1.1, b * 0.8),
                         angle=side * 0.12)
        lens = _cover(d, S)
        ring = _cover(np.abs(d) - half, S)
        # lens tint first, the frame over it
        alpha_l = attr.tint * lens
        colour = colour * (1 - alpha_l[..., None]) + lens_col * alpha_l[..., None]
        alpha = alpha + alpha_l * (1 - alpha)
        colour = colour * (1 - ring[..., None]) + frame * ring[..., None]
        alpha = alpha + ring * (1 - alpha)
        outer_x.append(cx + side * a)
    # bridge between the lenses and temples out to the face edge
    by = ident.eye_y - 0.25 * b
    bars = [_segment(y, x, by, 0.5 - ident.eye_dx + a * 0.95, by, 0.5 + ident.eye_dx - a * 0.95)]
    for side, ox in zip((-1.0, 1.0), outer_x, strict=True):
        edge = 0.5 + side * (ident.face_ax + 0.005)
        if side * (edge - ox) > 0:
            bars.append(_segment(y, x, ident.eye_y - 0.2 * b, ox, ident.eye_y - 0.3 * b, edge))
    for d in bars:
        cov = _cover(d - half * 0.8, S)
        colour = colour * (1 - cov[..., None]) + frame * cov[..., None]
        alpha = alpha + cov * (1 - alpha)
    # colour is premultiplied by alpha above; un-premultiply for compositing
    with np.errstate(invalid="ignore", divide="ignore"):
        colour = np.where(alpha[..., None] > 0, colour / alpha[..., None], 0.0)
    return colour, alpha


def _bald(ident: Identity, attr: Attribute, S: int):
    y, x = _grid(S)
    cy, ax, ay = ident.face_cy, ident.face_ax, ident.face_ay
    # The scalp: the head outline the renderer draws hair into, above the brows.
    head = _ellipse(y, x, cy - 0.005, 0.5, (ax + 0.018) * attr.scale, ay + 0.022)
    top = ident.eye_y - ident.brow_gap - 0.045
    d = np.maximum(head, y - top)
    alpha = _cover(d, S)
    skin = np.asarray(ident.skin, dtype=float)
    rr = np.sqrt(((x - 0.5) / ax) ** 2 + ((y - cy) / ay) ** 2)
    shade = (1.02 - 0.14 * np.clip(rr, 0, 1.2) ** 3)[..., None]
    shine = np.exp(-(((x - 0.47) / 0.06) ** 2 + ((y - (cy - ay + 0.06)) / 0.03) ** 2))[..., None]
    colour = np.clip(skin * shade + attr.tint * 4 * shine * (1 - skin), 0, 1)
    return colour, alpha


def _beard(ident: Identity, attr: Attribute, S: int):
    y, x = _grid(S)
    cy, ax, ay = ident.face_cy, ident.face_ax, ident.face_ay
    t = np.clip((y - cy) / ay, 0.0, 1.0)
    ax_eff = ax * (1.0 - ident.chin * t**2)
    d_face = _ellipse(y, x, cy, 0.5, ax_eff + 0.006, (ay + 0.012) * attr.scale)
    mouth = _ellipse(y, x, 160 / 256, 0.5, 0.105, 0.05)  # keep the lips visible
    d = np.maximum(np.maximum(d_face, ident.nose_y + 0.03 - y), -mouth)
    alpha = attr.tint * _cover(d, S)
    col = np.asarray(attr.colour, dtype=float)
    tex = (0.9 + 0.1 * np.sin(x * 230.0) * np.sin(y * 190.0 + 3 * np.sin(x * 40)))[..., None]
    return np.clip(col * tex, 0, 1), alpha


def overlay(ident: Identity, attr: Attribute, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(colour [S, S, 3], alpha [S, S])`` floats of ``attr`` fitted to ``ident``."""
    fn = {"glasses": _glasses, "bald": _bald, "beard": _beard}.get(attr.kind)
    if fn is None:
        raise ValueError(f"unknown attribute kind {attr.kind!r}")
    return fn(ident, attr, int(size))


def region(ident: Identity, attr: Attribute, size: int) -> np.ndarray:
    """Bool ``[S, S]``: where the overlay touches the face (alpha > 0)."""
    return overlay(ident, attr, size)[1] > 0


def render_with(ident: Identity, attr: Attribute | None, size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]``: ``render(ident, NEUTRAL, size)`` with ``attr`` composited over it.

    Pixels where the overlay's alpha is 0 equal the attribute-free render exactly.
    """
    base = render(ident, NEUTRAL, size)
    if attr is None:
        return base
    colour, alpha = overlay(ident, attr, size)
    a = alpha[..., None]
    out = base / 255.0 * (1 - a) + colour * a
    out = np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
    return np.where(a > 0, out, base)


# --------------------------------------------------------------------------------------------
# The A/B set
# --------------------------------------------------------------------------------------------

def _identity(rng: np.random.Generator) -> Identity:
    ident = sample_identity(rng)
    # A bald head shows no baldness attribute and no hair-coloured contrast: give it hair.
    return replace(ident, hair_style="short") if ident.hair_style == "bald" else ident


def write_attribute_set(out: str | Path, kind: str = "glasses", size: int = 64,
                        n_train_a: int = 300, n_train_b: int = 300, n_test_a: int = 8,
                        n_test_b: int = 8, seed: int = 0) -> Path:
    """Write the A/B set (see the module docstring); returns ``out/manifest.json``.

    An attribute set already in ``out`` is replaced whole once the new one is complete (no
    stale image of a larger earlier set stays); any other non-empty folder is refused
    (:func:`synthface.output.replacing`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown attribute kind {kind!r}; choose one of {', '.join(KINDS)}")
    if size < 16:
        raise ValueError(f"size {size} is too small; use at least 16")
    final = Path(out)
    with replacing(final, _is_attribute_set, "synthetic attribute set") as tmp:
        _write(tmp, kind, size, n_train_a, n_train_b, n_test_a, n_test_b, seed)
    return final / "manifest.json"


def _is_attribute_set(out: Path) -> bool:
    try:
        read_manifest(out)
    except (ValueError, AttributeError):
        return False
    return True


def _write(out: Path, kind: str, size: int, n_train_a: int, n_train_b: int, n_test_a: int,
           n_test_b: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = {"trainA": n_train_a, "trainB": n_train_b, "testA": n_test_a, "testB": n_test_b}
    manifest = {"format": "synthface-attributes", "version": 1, "kind": kind, "size": size,
                "seed": seed, "sets": {}}
    for split, n in counts.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for k in range(n):
            ident = _identity(rng)
            attr = sample_attribute(rng, kind) if split.endswith("A") else None
            name = f"{k:05d}.png"
            save_pil(Image.fromarray(render_with(ident, attr, size)), folder / name)
            items.append({"file": f"{split}/{name}", "identity": ident.to_dict(),
                          "attribute": attr.to_dict() if attr else None})
        manifest["sets"][split] = items
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest(root: str | Path) -> dict:
    """The set's manifest; one-line ``ValueError`` when missing or not ours."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        if root.is_dir() and any(root.iterdir()):  # real faces, or anything else: never write
            new = root.with_name(root.name + "_synthetic")  # the generator into it
            raise ValueError(f"{path}: no manifest, so {root} is not a synthetic set (real "
                             "faces have no exact answers to score against); write one into a "
                             f"new folder: python -m synthface.attributes {new}")
        raise ValueError(f"{path}: no manifest; make the set with python -m synthface.attributes "
                         f"{root}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc}); rewrite the set") from None
    if data.get("format") != "synthface-attributes":
        raise ValueError(f"{path}: not a synthetic attribute set manifest")
    return data


def _entry(manifest: dict, split: str, i: int) -> tuple[Identity, Attribute | None]:
    item = manifest["sets"][split][i]
    attr = Attribute.from_dict(item["attribute"]) if item["attribute"] else None
    return Identity.from_dict(item["identity"]), attr


def inputs(manifest: dict, split: str = "test", size: int | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(A images, B images)`` of ``split``, uint8 ``[S, S, 3]``, rendered at ``size``
    (default: the set's) exactly as the files were written."""
    size = size or manifest["size"]
    out = []
    for side in ("A", "B"):
        out.append([render_with(*_entry(manifest, f"{split}{side}", k), size)
                    for k in range(len(manifest["sets"][f"{split}{side}"]))])
    return out[0], out[1]


def transfer_truth(manifest: dict, i: int, j: int, split: str = "test",
                   size: int | None = None) -> np.ndarray:
    """uint8 ``[S, S, 3]``: ``B_j`` wearing ``A_i``'s attribute (the exact transfer answer)."""
    _, attr = _entry(manifest, f"{split}A", i)
    ident_b, _ = _entry(manifest, f"{split}B", j)
    return render_with(ident_b, attr, size or manifest["size"])


def removal_truth(manifest: dict, i: int, split: str = "test",
                  size: int | None = None) -> np.ndarray:
    """uint8 ``[S, S, 3]``: ``A_i`` without its attribute (the exact removal answer)."""
    ident, _ = _entry(manifest, f"{split}A", i)
    return render_with(ident, None, size or manifest["size"])


def truth_region(manifest: dict, i: int, j: int | None = None, split: str = "test",
                 size: int | None = None) -> np.ndarray:
    """Bool ``[S, S]``: the region of ``A_i``'s attribute fitted to ``B_j`` (``j=None``: to
    ``A_i`` itself)."""
    _, attr = _entry(manifest, f"{split}A", i)
    ident = _entry(manifest, f"{split}B", j)[0] if j is not None else \
        _entry(manifest, f"{split}A", i)[0]
    return region(ident, attr, size or manifest["size"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m synthface.attributes",
        description="Write a synthetic set/subset pair (A has the attribute) with exact answers "
                    "for every transfer and removal.")
    p.add_argument("out", metavar="OUT", help="output folder (trainA/ trainB/ testA/ testB/, "
                   "manifest.json): new or empty, or an attribute set (replaced once the new "
                   "one is complete); any other folder is refused")
    p.add_argument("--kind", default="glasses", choices=KINDS, help="attribute (default: glasses)")
    p.add_argument("--size", type=image_size, default=64,
                   help=f"image size in pixels, 16 to {MAX_SIZE} (default: 64)")
    p.add_argument("--train_a", type=positive_int, default=300, help="training faces with the attribute")
    p.add_argument("--train_b", type=positive_int, default=300, help="training faces without it")
    p.add_argument("--test_a", type=positive_int, default=8, help="held-out faces with the attribute")
    p.add_argument("--test_b", type=positive_int, default=8, help="held-out faces without it")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    args = p.parse_args(argv)
    try:
        path = write_attribute_set(args.out, args.kind, args.size, args.train_a, args.train_b,
                                   args.test_a, args.test_b, args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path.parent} ({args.kind}, {args.size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
