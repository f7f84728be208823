"""Test time of the pose flow: driving a still face with a source sequence (``test.py --model
pose-flow --source NAME QUERY``, through the shared talking-face job) and the pose-transfer grid
(``test.py --model pose-flow --transfer_grid SOURCES_DIR TARGETS_DIR``).

Driving: the query's ``w`` (encoded once, with the query's landmarks), every source frame's
landmarks as the condition, split latents at their prior means (``--temp 0``). ``--retarget``
moves the query's own landmarks by the source's motion relative to its first frame (scaled by
the ratio of inter-ocular distances), so a wide face keeps its outline under a narrow driver.

Landmarks come from ``FRAME.npy`` beside each image (``preprocess.py --landmarks``, or the
synthetic sets), else from dlib; an image with neither is a one-line error naming it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cliargs import MAX_SIZE, add_no_progress, check_fits, error_exit, image_size, nonnegative
from training.registry import load_model
from training.run import resolve_checkpoint

from .data import REASONS, landmark_path, read_landmarks


def add_test_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pose-flow")
    g.add_argument("--retarget", action="store_true",
                   help="move the query's landmarks by the source's motion relative to its "
                        "first frame instead of using the source's landmarks as they are")
    g.add_argument("--temp", type=nonnegative, default=0.0,
                   help="temperature of the split latents (0: their prior means; default 0)")


def landmarks_for(path: Path, what: str) -> np.ndarray:
    """``float32 [68, 2]`` in [0, 1] for the image at ``path``: its ``.npy``, else dlib."""
    from talking.inputs import TalkingError

    lm, reason = read_landmarks(landmark_path(path))
    if lm is not None:
        return lm
    from faces.io import read_image

    from .preprocess import normalised_landmarks

    try:
        image = read_image(path)
    except (OSError, ValueError) as exc:
        raise TalkingError(f"cannot read {what} {path} ({exc})") from None
    detector = _detector()
    found = normalised_landmarks(image, detector)
    if found is None:
        # The narrowest fix: this one image (never its folder, which may be real data). A
        # larger detection width can find a small face in a large image; else nothing can.
        fix = "give an aligned face crop (python preprocess.py PHOTO writes one)"
        width = image.shape[1]
        if width > detector.detect_width:
            fix = (f"try `python preprocess.py --landmarks {path} --detect_width {width}` "
                   f"(writes {landmark_path(path).name} beside it, nothing else), or " + fix)
        raise TalkingError(f"{what} {path}: {REASONS[reason]} and dlib finds no face at "
                           f"--detect_width {detector.detect_width}; {fix}")
    return found


_DET: list = []


def _detector():
    if not _DET:
        from faces.landmarks import LandmarkDetector

        _DET.append(LandmarkDetector())
    return _DET[0]


def inter_ocular(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def retarget(query: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Query landmarks [68, 2] moved by the source's motion: ``q + (s_t - s_0) * iod_q / iod_0``
    for source landmarks [T, 68, 2] -> [T, 68, 2]."""
    scale = inter_ocular(query) / max(inter_ocular(source[0]), 1e-6)
    return query[None] + (source - source[:1]) * scale


def load_for_test(args, device):
    """The model, plus the query's and the source frames' landmarks kept on ``args``."""
    from talking.inputs import resolve_query, resolve_source

    model = load_model(args.checkpoint, device, expect="pose-flow")
    query_path, _ = resolve_query(args.query, args.image_dir)
    source = resolve_source(args.source, args.image_dir)
    frames = source.frames[: args.max_frames] if args.max_frames else source.frames
    q_lm = landmarks_for(query_path, "query")
    src = np.stack([landmarks_for(p, "source frame") for p in frames])
    targets = retarget(q_lm, src) if getattr(args, "retarget", False) else src
    args.pose_state = {"query_lm": q_lm, "targets": targets.astype(np.float32), "cursor": 0,
                       "appearance": None}
    return model


@torch.no_grad()
def generate(model, query: Tensor, mix: Tensor | None, source: Tensor, args) -> Tensor:
    """query [1, 3, S, S] and a chunk of source frames [T, 3, S, S] (in order) -> [T, 3, S, S]:
    the query's appearance (its ``w``, or with a reference the query itself) under each frame's
    (or the retargeted) landmarks."""
    m = model.module if hasattr(model, "module") else model
    st = args.pose_state
    dev = query.device
    if st["appearance"] is None:
        q_lm = torch.from_numpy(st["query_lm"])[None].to(dev)
        st["appearance"] = m.appearance(query, q_lm)
    t = source.shape[0]
    lms = torch.from_numpy(st["targets"][st["cursor"]:st["cursor"] + t]).to(dev)
    if lms.shape[0] != t:
        raise ValueError(f"{t} frames but only {lms.shape[0]} landmark sets left")
    st["cursor"] += t
    app = m.select_appearance(st["appearance"], 0, t)
    return m.render(app, lms, float(getattr(args, "temp", 0.0)))


# ---------------------------------------------------------------------------------------------
# The transfer grid
# ---------------------------------------------------------------------------------------------

def _images_in(folder: Path) -> list[Path]:
    from talking.inputs import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise ValueError(f"{folder}: no images")
    return found


def transfer_grid(model, sources: list[Path], targets: list[Path], device,
                  temperature: float = 0.0, out_size: int | None = None) -> np.ndarray:
    """The anchor's grid: top row blank + targets, then per source: the source and its
    transfers to every target's landmarks. uint8 [H, W, 3]."""
    from talking.inputs import read_rgb
    from talking.job import MIN_TILE, _grid, _upscale, to_tensor, to_uint8

    size = model.img_size
    src_lm = torch.from_numpy(np.stack([landmarks_for(p, "source") for p in sources])).to(device)
    tgt_lm = torch.from_numpy(np.stack([landmarks_for(p, "target") for p in targets])).to(device)
    src = to_tensor([read_rgb(p) for p in sources], size).to(device)
    tgt = to_tensor([read_rgb(p) for p in targets], size).to(device)
    rows = [[np.full((size, size, 3), 255, np.uint8), *to_uint8(tgt)]]
    with torch.no_grad():
        app = model.appearance(src, src_lm)
        for i in range(len(sources)):
            out = model.render(model.select_appearance(app, i, len(targets)), tgt_lm,
                               temperature)
            rows.append([to_uint8(src[i:i + 1])[0], *to_uint8(out)])
    tile = out_size or max(MIN_TILE, size)  # cells a person can see, whatever the model's size
    return _grid([[_upscale(im, tile) for im in row] for row in rows])


def _grid_cli(argv: list[str]) -> int:
    from PIL import Image

    from glow.io import CheckpointError
    from talking.inputs import TalkingError
    from training.distributed import resolve_device

    from .recipe import RECIPE

    p = argparse.ArgumentParser(prog="test.py --model pose-flow --transfer_grid",
                                description="Pose-transfer grid: blank + targets on top, one "
                                            "row per source (its w, each target's landmarks).")
    p.add_argument("--model", default="pose-flow", help="pose-flow")
    p.add_argument("--transfer_grid", nargs=2, metavar=("SOURCES_DIR", "TARGETS_DIR"),
                   required=True, help="folders of source and target faces (landmarks from "
                   "FRAME.npy beside each image, else dlib)")
    p.add_argument("--checkpoint", default=None, help="file, or run name (CHECKPOINT_DIR/NAME/"
                   "last.pt)")
    p.add_argument("--checkpoint_dir", default="checkpoint",
                   help="root of checkpoints (default: checkpoint)")
    p.add_argument("--result_dir", default="result", help="output: RESULT_DIR/transfer_grid/"
                   "NAME.png (default: result)")
    p.add_argument("--name", default="grid", help="file name of the grid (default: grid)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--temp", type=nonnegative, default=0.0, help="split-latent temperature")
    p.add_argument("--out_size", type=image_size, default=None,
                   help=f"each cell's size (default: the model's, at least 128; at most "
                        f"{MAX_SIZE}; the grid must fit "
                        "in memory, checked before it is made)")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    a = p.parse_args(argv)
    from training.cli import check_folder_flags

    try:
        check_folder_flags(a)
        device = resolve_device(a.device)
        model = load_model(resolve_checkpoint(a.checkpoint, a.checkpoint_dir,
                                              RECIPE.DEFAULT_CHECKPOINT), device, expect=RECIPE.NAME)
        srcs, tgts = (_images_in(Path(d)) for d in a.transfer_grid)
        from faces.io import note_non_square

        note_non_square(srcs, "source", print)
        note_non_square(tgts, "target", print)
        if a.out_size:
            cells = (len(srcs) + 1) * (len(tgts) + 1)
            check_fits(cells * a.out_size ** 2 * 3 * 2, f"--out_size {a.out_size} for a grid of "
                       f"{cells} cells", "lower --out_size or give fewer faces")
        grid = transfer_grid(model, srcs, tgts, device, a.temp, a.out_size)
        out = Path(a.result_dir) / "transfer_grid" / f"{a.name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        from faces.io import save_pil

        save_pil(Image.fromarray(grid), out)
    except (ValueError, CheckpointError, TalkingError, OSError) as exc:
        return error_exit(exc)
    print(f"{len(srcs)} sources x {len(tgts)} targets -> {out}")
    return 0


def test_cli(argv: list[str]) -> int:
    """``test.py --model pose-flow ...``: the transfer grid, or the shared driving job."""
    if any(a.split("=")[0] == "--transfer_grid" for a in argv):
        return _grid_cli(argv)
    from talking import add_common_args, run
    from training import registry
    from training.cli import report_errors

    recipe = registry.get("pose-flow")
    parser = argparse.ArgumentParser(
        prog="test.py --model pose-flow",
        description="Drive a query face with a source sequence's pose and expression (or "
                    "--transfer_grid SOURCES_DIR TARGETS_DIR for a pose-transfer grid).")
    parser.add_argument("--model", default="pose-flow")
    add_common_args(parser)
    add_test_args(parser)
    args = parser.parse_args(argv)
    return report_errors(lambda: run(args, recipe), args=args)
