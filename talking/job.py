"""The talking-face job: a query face speaks with a source sequence's mouth motion.

For each source frame: blend the source's mouth box into the query (seamless cloning, or the
source frame itself with ``--no-poisson``), bring it to the model's size, and let the model's
recipe ``generate`` the output, a chunk of ``--batch`` frames at a time. Writes
``RESULT_DIR/target_img/SOURCE/QUERY/{000.png, ..., video.mp4, grid.png}``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from training.distributed import resolve_device

from .inputs import TalkingError, read_rgb, resolve_checkpoint, resolve_query, resolve_source

GRID_FRAMES = 8


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every model (model-specific ones come from ``recipe.add_test_args``)."""
    parser.add_argument("query", metavar="QUERY",
                        help="query face: a name under IMAGE_DIR/ref_img (NAME_256.jpg or .png) "
                             "or an image path")
    parser.add_argument("--source", required=True, metavar="NAME",
                        help="driving frames: IMAGE_DIR/source_img/NAME/ (or a folder path)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="the model's checkpoint: a file, or a run name meaning "
                             "CHECKPOINT_DIR/NAME/last.pt (default: CHECKPOINT_DIR/ and the "
                             "model's thesis file name)")
    parser.add_argument("--image_dir", default="image", help="root of ref_img/ and source_img/ "
                        "(default: image)")
    parser.add_argument("--checkpoint_dir", default="checkpoint",
                        help="root of checkpoints (default: checkpoint)")
    parser.add_argument("--result_dir", default="result",
                        help="root of results; output in RESULT_DIR/target_img/SOURCE/QUERY "
                             "(default: result)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda,"
                        " cuda:N (default: auto)")
    parser.add_argument("--batch", type=int, default=16,
                        help="frames per forward pass (default: 16); the first pass takes "
                             "--first_batch frames so the first frame is written early")
    parser.add_argument("--first_batch", type=int, default=1,
                        help="frames in the first forward pass (default: 1; 0: --batch)")
    parser.add_argument("--out_size", type=int, default=None,
                        help="upscale the written frames and video to this size (default: the "
                             "model's resolution)")
    parser.add_argument("--no-poisson", "--no_poisson", dest="poisson", action="store_false",
                        help="no mouth blending: feed the source frame itself (thesis flag)")
    parser.add_argument("--blend", default="poisson", choices=list(BLENDS[:3]),
                        help="how the source's mouth enters the query: poisson (seamless clone "
                             "after matching the skins' colour by a gain; ours), poisson_plain "
                             "(the plain seamless clone, as the thesis), paste (default: "
                             "poisson)")
    parser.add_argument("--max_frames", type=int, default=None,
                        help="use only the first N source frames")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of video.mp4 (default: the source's fps.txt, else 25)")
    parser.add_argument("--no_progress", dest="progress", action="store_false",
                        help="hide the progress bar")


BLENDS = ("poisson", "poisson_plain", "paste", "none")
"""Mouth-mix methods of :func:`model_inputs` (``none``: the source frame itself)."""


def to_tensor(images: list[np.ndarray], size: int) -> Tensor:
    """uint8 [H, W, 3] images -> float [N, 3, size, size] in [-0.5, 0.5] (thesis transform)."""
    out = []
    for img in images:
        im = Image.fromarray(img)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(out).float().div_(255).sub_(0.5)


def model_inputs(query256: np.ndarray, frames256: list[np.ndarray], size: int,
                 device: torch.device, blend: str = "poisson") -> tuple[Tensor, Tensor]:
    """(source, mix) tensors [T, 3, size, size] in [-0.5, 0.5] for a chunk of source frames.

    ``blend``: "poisson" clones each frame's mouth box into the query (seamless cloning at
    256 px, after a gain matches the source's skin colour to the query's), "poisson_plain" the
    plain seamless clone, "paste" pastes it, "none" feeds the source frame itself (then mix is
    source).
    """
    from faces.blend import mouth_mix

    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    src_t = to_tensor(frames256, size).to(device)
    if blend == "none":
        return src_t, src_t
    mixed = [mouth_mix(query256, f, poisson=blend != "paste", gain=blend == "poisson")
             for f in frames256]
    return src_t, to_tensor(mixed, size).to(device)


def to_uint8(x: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-0.5, 0.5] -> uint8 [N, H, W, 3] (rounded like torchvision's save)."""
    return ((x.detach().float().cpu() + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8) \
        .permute(0, 2, 3, 1).numpy()


def _upscale(img: np.ndarray, size: int | None) -> np.ndarray:
    if not size or img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def _grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of equally sized uint8 images -> one image with white gutters."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = img
    return out


def chunks(n: int, batch: int, first: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` of each forward pass over ``n`` frames: ``first`` frames (when
    ``0 < first < batch``), then ``batch`` at a time. A small first pass puts the first frame on
    disk after one frame's work instead of a whole batch's (``bench/talking_speed.py``)."""
    bounds, start = [], 0
    if 0 < first < batch and n > 0:
        bounds.append((0, min(first, n)))
        start = bounds[0][1]
    bounds += [(s, min(s + batch, n)) for s in range(start, n, batch)]
    return bounds


def run(args: argparse.Namespace, recipe: ModuleType, say=print) -> dict:
    """Run the job for ``args`` (see :func:`add_common_args`) with a model recipe.

    Returns a summary dict (frames, seconds, seconds_per_frame, out_dir, video, grid).
    Raises :class:`TalkingError` or ``glow.CheckpointError`` with one-line messages.
    """
    from lrw.video import write_video

    t0 = time.perf_counter()
    if args.batch < 1:
        raise TalkingError(f"--batch {args.batch}: must be at least 1")
    if getattr(args, "first_batch", 0) < 0:
        raise TalkingError(f"--first_batch {args.first_batch}: must be 0 or more")
    if args.out_size is not None and args.out_size < 1:
        raise TalkingError(f"--out_size {args.out_size}: must be positive")
    query_path, query_name = resolve_query(args.query, args.image_dir)
    source = resolve_source(args.source, args.image_dir)
    frames = source.frames[: args.max_frames] if args.max_frames else source.frames
    fps = args.fps if args.fps else source.fps
    args.checkpoint = str(resolve_checkpoint(args.checkpoint, args.checkpoint_dir,
                                             recipe.DEFAULT_CHECKPOINT))
    device = resolve_device(args.device)

    from glow.io import skip_init

    with skip_init():  # the Glow's weights come from the checkpoint: no random init first
        model = recipe.load_for_test(args, device)
    size = int(recipe.model_size(model))
    needs_mix = getattr(recipe, "NEEDS_MIX", True)

    out_dir = Path(args.result_dir) / "target_img" / source.name / query_name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # frames of an earlier, longer run would linger
        if re.fullmatch(r"\d+\.png", old.name):
            old.unlink()

    query256 = read_rgb(query_path)
    query = to_tensor([query256], size).to(device)
    n = len(frames)
    width = max(3, len(str(n - 1)))
    show = set(np.unique(np.linspace(0, n - 1, min(GRID_FRAMES, n)).round().astype(int)).tolist())
    grid_rows: list[list[np.ndarray]] = [[], [], []]
    video: list[np.ndarray] = []

    bar = None
    if getattr(args, "progress", True):
        from training.progress import progress

        bar = progress(n, f"{source.name} -> {query_name}", unit="frame", file=sys.stderr)
    try:
        for start, stop in chunks(n, args.batch, getattr(args, "first_batch", 0)):
            chunk = [read_rgb(p) for p in frames[start:stop]]
            # --no-poisson is the thesis's flag: no blending, the source frame itself.
            src_t, mix_t = model_inputs(query256, chunk, size, device,
                                        getattr(args, "blend", "poisson")
                                        if needs_mix and args.poisson else "none")
            with torch.inference_mode():
                out = recipe.generate(model, query, mix_t, src_t, args)
            out8 = to_uint8(out)
            for k, img in enumerate(out8):
                i = start + k
                img_out = _upscale(img, args.out_size)
                Image.fromarray(img_out).save(out_dir / f"{i:0{width}d}.png")
                video.append(img_out)
                if i in show:
                    grid_rows[0].append(to_uint8(src_t[k:k + 1])[0])
                    grid_rows[1].append(to_uint8(mix_t[k:k + 1])[0])
                    grid_rows[2].append(img)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()

    video_path = write_video(out_dir / "video.mp4", video, fps)
    grid_path = out_dir / "grid.png"
    Image.fromarray(_upscale_grid(grid_rows, args.out_size)).save(grid_path)
    seconds = time.perf_counter() - t0
    summary = {"frames": n, "seconds": seconds, "seconds_per_frame": seconds / n,
               "out_dir": str(out_dir), "video": str(video_path), "grid": str(grid_path),
               "fps": fps, "size": size}
    say(f"{n} frames in {seconds:.1f} s ({seconds / n:.3f} s/frame, {size} px, "
        f"{fps:g} fps video) -> {out_dir}")
    return summary


def _upscale_grid(rows: list[list[np.ndarray]], size: int | None) -> np.ndarray:
    return _grid([[_upscale(img, size) for img in row] for row in rows])
