"""The logic of ``test.py`` (the thesis's script name, kept for users), importable as
``talking.cli``: ``test.py`` at the top level shadows the standard library's ``test`` package, so
nothing should have to import it. A recipe with its own test job (``test_cli(argv)``) gets the
whole argv.
"""

from __future__ import annotations

import argparse
import sys

USAGE = """Make a query face talk with a source sequence's mouth motion (AD-flow, MI-flow).

Examples:
  python test.py --model ad-flow --source ellen obama
  python test.py --model ad-flow --source ellen obama --checkpoint ad \\
      --glow checkpoint/faces64/last.pt
  python test.py --model ad-flow --source ellen photo.jpg --out_size 256 --max_frames 50

Output: RESULT_DIR/target_img/SOURCE/QUERY/000.png ..., video.mp4, grid.png.
Use `python test.py --model NAME --help` to list that model's flags.
"""


def build_parser(model: str) -> argparse.ArgumentParser:
    from talking import add_common_args
    from training import registry

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
        from training import registry

        recipe = registry.get(known.model)
        code = recipe.test_cli(argv)  # a recipe with its own test job (e.g. a transfer grid)
        if code is not None:
            return int(code)
        if not recipe.GENERATES:
            raise ValueError(f"model '{known.model}' has no talking-face generation")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args = build_parser(known.model).parse_args(argv)

    from talking import run
    from training.cli import report_errors

    return report_errors(lambda: run(args, recipe), args=args)


