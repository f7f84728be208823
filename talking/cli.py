"""The logic of ``test.py`` (the thesis's script name, kept for users), importable as
``talking.cli``: ``test.py`` at the top level shadows the standard library's ``test`` package, so
nothing should have to import it. The recipe names the job (``TEST_JOB``, ``TRANSFER_GRID``);
the job owns the command line and calls the recipe's test-time hooks.
"""

from __future__ import annotations

import argparse
import sys

from training import registry
from training.cli import report_errors

from . import pose_grid, transfer
from .job import add_common_args, run

USAGE = """Make a query face talk with a source sequence's mouth motion (AD-flow, MI-flow), or
drive it with the source's pose and expression (pose-flow; --transfer_grid SOURCES_DIR
TARGETS_DIR for its pose-transfer grid).

Examples:
  python test.py --model ad-flow --source ellen obama
  python test.py --model ad-flow --source ellen obama --checkpoint ad \\
      --glow checkpoint/faces64/last.pt
  python test.py --model ad-flow --source ellen photo.jpg --out_size 256 --max_frames 50

Output: RESULT_DIR/target_img/SOURCE/QUERY/000.png ..., video.mp4, grid.png.
Use `python test.py --model NAME --help` to list that model's flags.
"""


def build_parser(model: str) -> argparse.ArgumentParser:
    recipe = registry.get(model)
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="test.py", description=USAGE.split("\n\n")[0],
        epilog=USAGE.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=model, choices=registry.names(),
                        help=f"which model (default: ad-flow; now: {model})")
    add_common_args(parser)
    recipe.add_test_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default="ad-flow")
    known, _ = pre.parse_known_args(argv)
    try:
        recipe = registry.get(known.model)
        if recipe.TEST_JOB == "transfer":
            return transfer.main(argv)
        if any(a.split("=")[0] == "--transfer_grid" for a in argv):
            if not recipe.TRANSFER_GRID:
                raise ValueError(f"--transfer_grid: model '{known.model}' has no transfer grid "
                                 "(pose-flow has one)")
            return pose_grid.main(argv)
        if not recipe.GENERATES:
            raise ValueError(f"model '{known.model}' has no talking-face generation")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args = build_parser(known.model).parse_args(argv)
    return report_errors(lambda: run(args, recipe), args=args)


