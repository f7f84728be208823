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

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import faces.io
from cliargs import (
    MAX_SIZE,
    add_no_progress,
    check_fits,
    image_size,
    nonnegative_int,
    positive,
    positive_int,
)
from faces.blend import mouth_mix
from faces.io import ImageReadError, write_image
from faces.paste import PasteRegion, paste_back
from glow.io import skip_init
from lrw.video import VideoWriter, has_audio
from training.cli import claim_output
from training.distributed import resolve_device
from training.precision import add_precision_args, apply_precision, resolve_precision
from training.progress import progress
from training.recipe import Recipe
from training.run import resolve_checkpoint

from .inputs import TalkingError, load_alignment, read_rgb, resolve_query, resolve_source

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
    parser.add_argument("--batch", type=positive_int, default=16,
                        help="frames per forward pass (default: 16); the first pass takes "
                             "--first_batch frames so the first frame is written early")
    parser.add_argument("--first_batch", type=nonnegative_int, default=1,
                        help="frames in the first forward pass (default: 1; 0: --batch)")
    parser.add_argument("--paste_back", default="region", choices=PASTE_BACK,
                        help="region (default): in the region the model changes (the mouth "
                             "with a margin; pose-flow: the face) the model's change to its "
                             "input is upsampled and added to that input at the query's own "
                             "resolution (the talking models' input is the mouth mix, made at "
                             "256 px; pose-flow's the query), feathered; every other pixel is "
                             "the query's; query: the same, but the change is added to the "
                             "query; replace: the region's pixels are the model's, upsampled "
                             "and colour-matched (the mouth blend's gain); none: the model's "
                             "frame as it is")
    parser.add_argument("--full_frame", action="store_true",
                        help="paste back into the original photo the query was aligned from "
                             "(the alignment record NAME_256.json that `preprocess.py PHOTO` "
                             "writes): frames at the photo's size")
    parser.add_argument("--out_size", type=image_size, default=None,
                        help="resize the written frames and video so that their longer side "
                             "is this (default: the query's size with --paste_back region, "
                             f"the model's with none; at most {MAX_SIZE}, and a frame and the "
                             "grid at that size must fit in memory, which is checked before "
                             "the first is made)")
    parser.add_argument("--no-poisson", "--no_poisson", dest="poisson", action="store_false",
                        help="no mouth blending: feed the source frame itself (thesis flag)")
    parser.add_argument("--blend", default="poisson", choices=list(BLENDS[:3]),
                        help="how the source's mouth enters the query: poisson (seamless clone "
                             "after matching the skins' colour by a gain; ours), poisson_plain "
                             "(the plain seamless clone, as the thesis), paste (default: "
                             "poisson)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace RESULT_DIR/target_img/SOURCE/QUERY when it holds another "
                             "model's or checkpoint's output (default: refuse)")
    parser.add_argument("--max_frames", type=positive_int, default=None,
                        help="use only the first N source frames (default: all)")
    parser.add_argument("--audio", default=None, metavar="FILE",
                        help="sound for video.mp4 (any file with an audio track), trimmed or "
                             "padded to the video's length (default: a video source's own "
                             "sound)")
    parser.add_argument("--fps", type=positive, default=None,
                        help="frame rate of video.mp4 (default: the source's fps.txt, else 25)")
    add_no_progress(parser, "hide the progress bar")
    add_precision_args(parser)


PASTE_BACK = ("region", "query", "replace", "none")
MIN_TILE = 128  # grid tiles are at least this many pixels, so a person can see the mouth

BLENDS = ("poisson", "poisson_plain", "paste", "none")
"""Mouth-mix methods of :func:`model_inputs` (``none``: the source frame itself)."""


def paste_inputs(paste: str, query_seen: np.ndarray, query256: np.ndarray,
                 mix_seen: np.ndarray | None = None, mix256: np.ndarray | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(reference, reference_offset)`` of :func:`faces.paste.paste_back` for one frame.

    ``paste``: one of :data:`PASTE_BACK` but ``none``. ``query_seen``/``mix_seen``: the query and
    the mouth mix as the model saw them (uint8, the model's size); ``query256``/``mix256``: the
    same at 256 px. ``region`` adds the model's change to its input at full resolution: the mix
    when the model was fed one (``mix_seen`` given), else the query; ``query`` adds it to the
    query; ``replace`` pastes the model's pixels (no reference).
    """
    if paste == "replace":
        return None, None
    if paste == "region" and mix_seen is not None:
        return mix_seen, mix256.astype(np.float32) - query256.astype(np.float32)
    return query_seen, None


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
                 device: torch.device, blend: str = "poisson",
                 mixes256: list[np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
    """(source, mix) tensors [T, 3, size, size] in [-0.5, 0.5] for a chunk of source frames.

    ``blend``: "poisson" clones each frame's mouth box into the query (seamless cloning at
    256 px, after a gain matches the source's skin colour to the query's), "poisson_plain" the
    plain seamless clone, "paste" pastes it, "none" feeds the source frame itself (then mix is
    source). ``mixes256``: when given, the 256 px mixes are appended to it (the source
    frames themselves for "none").
    """
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    src_t = to_tensor(frames256, size).to(device)
    if blend == "none":
        if mixes256 is not None:
            mixes256.extend(frames256)
        return src_t, src_t
    mixed = [mouth_mix(query256, f, poisson=blend != "paste", gain=blend == "poisson")
             for f in frames256]
    if mixes256 is not None:
        mixes256.extend(mixed)
    return src_t, to_tensor(mixed, size).to(device)


def to_uint8(x: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-0.5, 0.5] -> uint8 [N, H, W, 3] (rounded like torchvision's save)."""
    return ((x.detach().float().cpu() + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8) \
        .permute(0, 2, 3, 1).numpy()


def _upscale(img: np.ndarray, size: int | None) -> np.ndarray:
    """``img`` resized (bicubic) so that its longer side is ``size`` (aspect kept)."""
    if not size:
        return img
    h, w = img.shape[:2]
    if max(h, w) == size:
        return img
    k = size / max(h, w)
    new = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(img).resize(new, Image.BICUBIC))


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


def run(args: argparse.Namespace, recipe: Recipe, say=print) -> dict:
    """Run the job for ``args`` (see :func:`add_common_args`) with a model recipe.

    Returns a summary dict (frames, seconds, seconds_per_frame, out_dir, video, grid, fps,
    size: the model's, frame_size: ``(w, h)`` of the written frames).
    Raises :class:`TalkingError` or ``glow.CheckpointError`` with one-line messages.
    Frames are written under a temporary name and renamed, the video under a temporary name
    and moved into place at the end: an interrupted job leaves whole frames and no video.
    """
    t0 = time.perf_counter()
    if args.batch < 1:
        raise TalkingError(f"--batch {args.batch}: must be at least 1")
    if getattr(args, "first_batch", 0) < 0:
        raise TalkingError(f"--first_batch {args.first_batch}: must be 0 or more")
    if args.out_size is not None and args.out_size < 1:
        raise TalkingError(f"--out_size {args.out_size}: must be positive")
    paste = getattr(args, "paste_back", "region")
    full_frame = bool(getattr(args, "full_frame", False))
    if full_frame and paste == "none":
        raise TalkingError("--full_frame pastes the face back into the photo: it needs "
                           "--paste_back region (the default), query or replace")
    query_path, query_name = resolve_query(args.query, args.image_dir)
    photo, crop_to_photo = (None, None)
    if full_frame:
        photo, crop_to_photo = load_alignment(query_path)
    source = resolve_source(args.source, args.image_dir,
                            progress=getattr(args, "progress", True), say=say)
    frames = source.frames[: args.max_frames] if args.max_frames else source.frames
    args.query_path, args.frames = query_path, frames  # for a recipe reading files beside them
    fps = args.fps if args.fps else source.fps
    audio = source.audio
    if getattr(args, "audio", None):
        audio = Path(args.audio)
        if not audio.is_file():
            raise TalkingError(f"--audio {audio}: no such file")
        if not has_audio(audio):
            raise TalkingError(f"--audio {audio}: the file has no audio track")
    elif source.video is not None and audio is None:
        say(f"note: {source.video} has no sound track; the video is silent")
    if audio is not None and audio == source.audio and args.fps and \
            abs(args.fps - source.fps) > 1e-3:
        say(f"note: --fps {args.fps:g} differs from the source's {source.fps:g} fps, so its "
            "sound would not match the picture; the video is silent")
        audio = None
    args.checkpoint = str(resolve_checkpoint(args.checkpoint, args.checkpoint_dir,
                                             recipe.DEFAULT_CHECKPOINT))
    device = resolve_device(args.device)
    precision = resolve_precision(getattr(args, "precision", "auto"), device)

    with skip_init():  # the Glow's weights come from the checkpoint: no random init first
        model = recipe.load_for_test(args, device)
    apply_precision(model, precision, device, getattr(args, "tf32", True))
    size = int(recipe.model_size(model))
    if args.out_size:  # a frame, its resized copies and the grid's tiles at --out_size
        check_fits((3 * GRID_FRAMES + 4) * args.out_size ** 2 * 3,
                   f"--out_size {args.out_size} (a frame and the {3 * GRID_FRAMES}-tile grid at "
                   "that size)", "lower --out_size")
    needs_mix = recipe.NEEDS_MIX
    region = PasteRegion.named(recipe.PASTE_REGION)

    out_dir = Path(args.result_dir) / "target_img" / source.name / query_name
    claim_output(out_dir, {"model": recipe.NAME,
                           "checkpoint": str(Path(args.checkpoint).resolve())},
                 getattr(args, "overwrite", False),
                 "give --result_dir DIR to keep both (e.g. one per model)", say)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # frames of an earlier, longer run would linger
        if re.fullmatch(r"\d+\.png", old.name) or old.name in ("video.mp4", "grid.png"):
            old.unlink()

    query256 = read_rgb(query_path)
    query_full = read_rgb(query_path, None)
    for what, path, (h, w) in (("query", query_path, query_full.shape[:2]),
                               ("source", frames[0], _image_size(frames[0]))):
        if h != w:  # said once per job, not per frame
            say(f"note: the {what} {path} is {w}x{h}, not square: the model sees it stretched "
                "to a square (align it with preprocess.py for an undistorted face)")
    picture = photo if full_frame else query_full
    query = to_tensor([query256], size).to(device)
    query_seen = to_uint8(query)[0]  # the query as the model sees it (--paste_back query)
    n = len(frames)
    width = max(3, len(str(n - 1)))
    show = set(np.unique(np.linspace(0, n - 1, min(GRID_FRAMES, n)).round().astype(int)).tolist())
    grid_rows: list[list[np.ndarray]] = [[], [], []]
    tile = max(MIN_TILE, args.out_size or (max(query_full.shape[:2]) if paste != "none"
                                           else size))
    writer = VideoWriter(out_dir / "video.mp4", fps, audio_from=audio)
    frame_size = None

    bar = None
    if getattr(args, "progress", True):
        bar = progress(n, f"{source.name} -> {query_name}", unit="frame", file=sys.stderr)
    recipe.begin_sequence(model, args)
    try:
        for start, stop in chunks(n, args.batch, getattr(args, "first_batch", 0)):
            chunk = [read_rgb(p) for p in frames[start:stop]]
            mixes256: list[np.ndarray] = []
            # --no-poisson is the thesis's flag: no blending, the source frame itself.
            fed_mix = needs_mix and args.poisson
            src_t, mix_t = model_inputs(query256, chunk, size, device,
                                        getattr(args, "blend", "poisson")
                                        if fed_mix else "none", mixes256)
            with torch.inference_mode():
                out = recipe.generate(model, query, mix_t, src_t, args)
            out8 = to_uint8(out)
            mix8 = to_uint8(mix_t) if fed_mix and recipe.builds_on_mix(args) else None
            for k, img in enumerate(out8):
                i = start + k
                if paste != "none":
                    ref, offset = paste_inputs(paste, query_seen, query256,
                                               None if mix8 is None else mix8[k], mixes256[k])
                    frame = paste_back(picture, img, region, crop_to_photo, reference=ref,
                                       reference_offset=offset)
                    shown = frame if not full_frame else paste_back(
                        query_full, img, region, reference=ref, reference_offset=offset)
                else:
                    frame = shown = img
                frame = _upscale(frame, args.out_size)
                frame_size = frame.shape[1], frame.shape[0]
                write_image(out_dir / f"{i:0{width}d}.png", frame)
                writer.write(frame)
                if i in show:
                    grid_rows[0].append(chunk[k])
                    grid_rows[1].append(mixes256[k])
                    grid_rows[2].append(shown)
            if bar is not None:
                bar.update(len(chunk))
        video_path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()

    grid_path = write_image(out_dir / "grid.png", _grid([[_upscale(_square(img), tile)
                                                          for img in row] for row in grid_rows]))
    seconds = time.perf_counter() - t0
    summary = {"frames": n, "seconds": seconds, "seconds_per_frame": seconds / n,
               "out_dir": str(out_dir), "video": str(video_path), "grid": str(grid_path),
               "fps": fps, "size": size, "frame_size": frame_size,
               "audio": audio is not None, "source_video": source.video}
    fw, fh = frame_size
    sound = ", with the source's sound" if audio is not None else ""
    say(f"{n} frames in {seconds:.1f} s ({seconds / n:.3f} s/frame, model {size} px, frames "
        f"{fw}x{fh}, {fps:g} fps video{sound}) -> {out_dir}")
    return summary


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file's header (nothing decoded; EXIF orientation applied,
    as the frames are read)."""
    try:
        w, h = faces.io.image_size(path)
    except ImageReadError as exc:
        raise TalkingError(str(exc)) from None
    return h, w


def _square(img: np.ndarray) -> np.ndarray:
    """A grid tile: ``img`` as it is when square, else centre-cropped to a square."""
    h, w = img.shape[:2]
    if h == w:
        return img
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y:y + s, x:x + s]
