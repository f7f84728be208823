"""``test.py --model pose-flow --transfer_grid SOURCES_DIR TARGETS_DIR``: the pose-transfer grid.
Top row blank + targets, then per source: the source and its transfers to every target's
landmarks (the recipe's ``transfer_poses``). Landmarks come from ``FRAME.npy`` beside each
image, else dlib (``pose_flow.driving.landmarks_for``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cliargs import MAX_SIZE, add_no_progress, check_fits, error_exit, image_size, nonnegative
from faces.io import note_non_square, save_pil
from glow.io import CheckpointError
from pose_flow.driving import add_mirror_arg, landmarks_for
from training import registry
from training.cli import check_folder_flags
from training.distributed import resolve_device
from training.recipe import Recipe
from training.run import resolve_checkpoint

from .inputs import IMAGE_EXTENSIONS, read_rgb
from .job import MIN_TILE, _grid, _upscale, to_tensor, to_uint8


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise ValueError(f"{folder}: no images")
    return found


def transfer_grid(recipe: Recipe, model, sources: list[Path], targets: list[Path], device,
                  temperature: float = 0.0, out_size: int | None = None,
                  mirror: bool = False) -> np.ndarray:
    """The anchor's grid: top row blank + targets, then per source: the source and its
    transfers to every target's landmarks. uint8 [H, W, 3]."""
    size = model.img_size
    src_lm = torch.from_numpy(np.stack([landmarks_for(p, "source") for p in sources])).to(device)
    tgt_lm = torch.from_numpy(np.stack([landmarks_for(p, "target") for p in targets])).to(device)
    src = to_tensor([read_rgb(p) for p in sources], size).to(device)
    tgt = to_tensor([read_rgb(p) for p in targets], size).to(device)
    out = recipe.transfer_poses(model, src, src_lm, tgt_lm, temperature, mirror)
    rows = [[np.full((size, size, 3), 255, np.uint8), *to_uint8(tgt)]]
    rows += [[to_uint8(src[i:i + 1])[0], *to_uint8(out[i])] for i in range(len(sources))]
    tile = out_size or max(MIN_TILE, size)  # cells a person can see, whatever the model's size
    return _grid([[_upscale(im, tile) for im in row] for row in rows])


def main(argv: list[str]) -> int:
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
    add_mirror_arg(p)
    p.add_argument("--out_size", type=image_size, default=None,
                   help=f"each cell's size (default: the model's, at least 128; at most "
                        f"{MAX_SIZE}; the grid must fit "
                        "in memory, checked before it is made)")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    a = p.parse_args(argv)
    try:
        check_folder_flags(a)
        recipe = registry.get(a.model)
        device = resolve_device(a.device)
        model = registry.load_model(resolve_checkpoint(a.checkpoint, a.checkpoint_dir,
                                                       recipe.DEFAULT_CHECKPOINT), device,
                                    expect=recipe.NAME)
        srcs, tgts = (_images_in(Path(d)) for d in a.transfer_grid)
        note_non_square(srcs, "source", print)
        note_non_square(tgts, "target", print)
        if a.out_size:
            cells = (len(srcs) + 1) * (len(tgts) + 1)
            check_fits(cells * a.out_size ** 2 * 3 * 2, f"--out_size {a.out_size} for a grid of "
                       f"{cells} cells", "lower --out_size or give fewer faces")
        grid = transfer_grid(recipe, model, srcs, tgts, device, a.temp, a.out_size, a.mirror)
        out = Path(a.result_dir) / "transfer_grid" / f"{a.name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_pil(Image.fromarray(grid), out)
    except (ValueError, CheckpointError, OSError) as exc:
        return error_exit(exc)
    print(f"{len(srcs)} sources x {len(tgts)} targets -> {out}")
    return 0
