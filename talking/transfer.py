"""``test.py --model content-ae``: the transfer grid, single transfers, interpolation.

  python test.py --model content-ae --checkpoint glasses DATA
  python test.py --model content-ae --checkpoint checkpoint/glasses/last.pt --a me.jpg --b you.jpg
  python test.py --model content-ae --checkpoint glasses DATA --interpolate 8
  python test.py --model content-ae --data ./bald --out ./bald_eval --checkpoint ...  (original)

Outputs in OUT (default RESULT_DIR/transfer/NAME):
  grid.png       row 0: a blank tile, then B_1..B_n; row i: A_i, then Dec(E1(B_j) ⊕ E2(A_i));
                 last row: a blank tile, then the removals Dec(E1(A_i) ⊕ 0), i = 1..n
  cells/A{i}_B{j}.png, removal/A{i}.png   each cell of the grid (1-based)
  transfer.png, removal.png, pair.png     with --a/--b: B with A's attribute, A without it,
                                          and [A, B, transfer, removal] side by side
  interpolation.png                       with --interpolate K: row j is B_j, then K steps
                                          from A_1's specific code to A_2's
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from cliargs import MAX_GRID, add_no_progress, grid_count, whole
from content_ae.data import find_split, split_paths
from faces.io import note_non_square
from lrw.datasets import load_image
from lrw.imageio import save_image
from training import registry
from training.checkpoint import load_checkpoint
from training.cli import report_errors
from training.distributed import resolve_device
from training.recipe import Recipe
from training.run import Run, resolve_checkpoint


def load_images(paths: list[Path], size: int, n: int, say=print) -> tuple[Tensor, int]:
    """The first ``n`` readable images as ``[k, 3, S, S]`` in ``[-1, 1]``, and how many
    unreadable ones were skipped."""
    out, skipped = [], 0
    note_non_square(paths[:n], "image", say)
    for p in paths:
        if len(out) == n:
            break
        try:
            out.append(load_image(p, size) * 2)
        except ValueError as exc:
            skipped += 1
            if skipped == 1:
                say(f"warning: {exc}; skipped (further ones counted)")
    if not out:
        raise ValueError(f"{paths[0].parent}: none of its images can be read")
    return torch.stack(out), skipped


GRID_TILE = 128
"""Smallest tile side of ``grid.png`` in pixels (smaller models' tiles are enlarged)."""


def _save(x: Tensor, path: Path, nrow: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(((x.float().cpu() + 1) / 2).clamp(0, 1), path, nrow=nrow, padding=2)


@torch.no_grad()
def write_grid(recipe: Recipe, model: nn.Module, a: Tensor, b: Tensor, out: Path) -> Path:
    """The grid described in the module docstring, and each of its cells."""
    n = a.shape[0]
    grid = recipe.transfer_grid(model, a, b)
    removed = recipe.remove(model, a)
    rows = torch.cat([grid, torch.full_like(b[:1], -1.0), removed])
    for i in range(n):
        for j in range(n):
            _save(grid[(i + 1) * (n + 1) + 1 + j], out / "cells" / f"A{i + 1}_B{j + 1}.png")
        _save(removed[i], out / "removal" / f"A{i + 1}.png")
    # the grid at a size a person can see: tiles of at least GRID_TILE px (pixel repetition;
    # the cells keep the model's size)
    k = max(1, -(-GRID_TILE // rows.shape[-1]))
    _save(rows.repeat_interleave(k, 2).repeat_interleave(k, 3), out / "grid.png", nrow=n + 1)
    return out / "grid.png"


def job_parser(script: str, doc: str, argv: list[str]) -> tuple[argparse.ArgumentParser, Recipe]:
    """``SCRIPT --model MODEL``'s parser (MODEL from ``argv``, else content-ae), described by
    ``doc``'s first paragraph, the rest its epilog; and the model's recipe."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default="content-ae")
    model = pre.parse_known_args(argv)[0].model
    p = argparse.ArgumentParser(prog=f"{script} --model {model}", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=model, help=model)
    return p, registry.get(model)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    p, recipe = job_parser("test.py", __doc__, argv)
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="A/B set (testA/ testB/ when present, else trainA/ trainB/)")
    p.add_argument("--data", dest="data_flag", metavar="DATA", help="the same (the original's "
                   "spelling)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run name")
    p.add_argument("--out", help="output folder (default: RESULT_DIR/transfer/NAME)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="which split of DATA to show (falls back to train when DATA has no "
                        "test split; default: test)")
    p.add_argument("--n_display", type=grid_count, default=8, help="faces per side (default: 8)")
    p.add_argument("--a", metavar="IMAGE", help="single transfer: the face with the attribute")
    p.add_argument("--b", metavar="IMAGE", help="single transfer: the face to receive it")
    p.add_argument("--interpolate", type=whole(0, MAX_GRID - 1), default=0, metavar="K",
                   help="also write K steps between two specific codes (A_1 to A_2; 0: none; at most 255)")
    recipe.add_test_args(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--checkpoint_dir", default="checkpoint", help="root of checkpoints")
    p.add_argument("--result_dir", default="result", help="root of results")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    return p


def load(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, str | None]:
    """The model at ``--checkpoint`` (a file, or a run name meaning CHECKPOINT_DIR/NAME/last.pt)
    in eval mode on ``device`` with the model's test flags applied, and its run name."""
    recipe = registry.get(args.model)
    path = resolve_checkpoint(args.checkpoint, args.checkpoint_dir, recipe.DEFAULT_CHECKPOINT)
    if not path.is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: neither a file nor a run in "
                         f"{args.checkpoint_dir}/ (expected "
                         f"{Run(args.checkpoint, args.checkpoint_dir).last}); train one with "
                         f"train.py --model {recipe.NAME} -n NAME DATA")
    ckpt = load_checkpoint(path, expect_model=recipe.NAME)
    return recipe.from_checkpoint(ckpt, path, args).to(device).eval(), \
        ckpt["config"].get("train", {}).get("name")


def run(args: argparse.Namespace, say=print) -> dict:
    device = resolve_device(args.device)
    recipe = registry.get(args.model)
    model, name = load(args, device)
    name = name or Path(args.checkpoint).stem
    out = Path(args.out) if args.out else Path(args.result_dir) / "transfer" / name
    size = recipe.model_size(model)
    result: dict = {"out": out}
    if (args.a is None) != (args.b is None):
        raise ValueError("--a and --b go together (the face with the attribute and the one to "
                         "receive it)")
    if args.a is not None:
        a = (load_image(args.a, size) * 2)[None].to(device)
        b = (load_image(args.b, size) * 2)[None].to(device)
        with torch.no_grad():
            t, r = recipe.transfer(model, a, b), recipe.remove(model, a)
        _save(t, out / "transfer.png")
        _save(r, out / "removal.png")
        _save(torch.cat([a, b, t, r]), out / "pair.png", nrow=4)
        say(f"transfer: {out / 'transfer.png'}\nremoval: {out / 'removal.png'}")
        result["transfer"] = out / "transfer.png"
    data = args.data or args.data_flag
    if data is None:
        if args.a is None:
            raise ValueError("give DATA (an A/B set) or --a IMAGE --b IMAGE")
        return result
    split = find_split(data, args.split)
    paths_a, paths_b = split_paths(data, split)
    n = min(args.n_display, len(paths_a), len(paths_b))
    a, skip_a = load_images(paths_a, size, n, say)
    b, skip_b = load_images(paths_b, size, n, say)
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n].to(device), b[:n].to(device)
    result["grid"] = write_grid(recipe, model, a, b, out)
    result["skipped"] = skip_a + skip_b
    say(f"grid ({split} split, {n} x {n}): {result['grid']}"
        + (f" ({skip_a + skip_b} unreadable images skipped)" if skip_a + skip_b else ""))
    if args.interpolate:
        tiles = recipe.interpolate(model, a, b, args.interpolate)
        _save(tiles, out / "interpolation.png", nrow=args.interpolate + 1)
        result["interpolation"] = out / "interpolation.png"
        say(f"interpolation: {out / 'interpolation.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return report_errors(lambda: run(args), args=args)
