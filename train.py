#!/usr/bin/env python
"""Train a model (Glow, AD-flow, MI-flow) on a folder of frames.

Examples:
  python train.py --model glow -n faces64 DATA_DIR
  python train.py --model glow -n tiny DATA_DIR --img_size 32 --n_flow 8 --n_block 3 --iter 2000
  python train.py --model ad-flow -n ad DATA_DIR --glow checkpoint/faces64/last.pt
  torchrun --nproc_per_node 2 train.py --model glow -n ddp DATA_DIR     # DistributedDataParallel
  python train.py --model glow -n faces64 DATA_DIR --resume            # continue a run

Use `python train.py --model NAME --help` to list that model's flags.
"""

from __future__ import annotations

import sys

from training.allocator import maybe_use_jemalloc

if __name__ == "__main__":
    maybe_use_jemalloc()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from cliargs import error_exit  # noqa: E402
from glow.io import CheckpointError  # noqa: E402
from training import registry  # noqa: E402
from training.cli import (  # noqa: E402
    apply_config,
    checkpoint_values,
    given_dests,
    plain_warnings,
    read_config_file,
)
from training.config import TrainConfig, add_dataclass_args, check_fields, from_args  # noqa: E402
from training.loop import TrainingStopped, train, validate_train  # noqa: E402
from training.run import Run  # noqa: E402


def build_parser(model: str) -> argparse.ArgumentParser:
    recipe = registry.get(model)
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="train.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", metavar="DATA_DIR", nargs="?", default=None,
                        help="folder of training frames: any folder of images, searched "
                             "recursively (Glow, MI-flow; when DATA_DIR/train exists only it is "
                             "used), or an LRW-style DATA/train/WORD/WORD_ID_FF.jpg tree; may "
                             "come from --config, or with --resume from the checkpoint")
    parser.add_argument("--model", default=model, choices=registry.names(),
                        help=f"which model to train (default: glow; now: {model})")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="validate and print the resolved configuration, then exit")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of flags (flat 'lr: 0.001' keys, or a run's "
                             "resolved result/sample_NAME/config.json); flags on the command "
                             "line override it")
    add_dataclass_args(parser, TrainConfig, "training", defaults=recipe.TRAIN_DEFAULTS)
    add_dataclass_args(parser, recipe.Config, f"model: {model}")
    return parser


def _heldout_scorer(data_dir: Path, device):
    """AD-flow's and MI-flow's held-out diagnostics on a synthetic set (evaluation's scorer)."""
    # deferred: scikit-image and scipy.stats, ~2 s of --help (python -X importtime)
    from evaluation.synthetic import heldout_scorer

    return heldout_scorer(data_dir, device)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    try:
        file_values = read_config_file(known.config) if known.config else {}
        model = known.model or file_values.get("model") or "glow"
        recipe = registry.get(model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    argv = recipe.translate_argv(argv)  # a recipe's own aliases (e.g. an original's flags)
    parser = build_parser(model)
    args = parser.parse_args(argv)

    try:
        given = given_dests(parser, argv)
        file_values.pop("model", None)
        given |= apply_config(parser, args, file_values, given, f"--config {known.config}")
        if args.resume:  # flags given nowhere continue the saved run's
            source = Run(args.name, args.checkpoint_dir, args.result_dir).resume_source()
            saved = checkpoint_values(source) if source is not None else {}
            dests = {a.dest for a in parser._actions}
            apply_config(parser, args, {k: v for k, v in saved.items() if k in dests}, given,
                         "the checkpoint")
        tcfg = from_args(TrainConfig, args)
        mcfg = from_args(recipe.Config, args)
        check_fields(tcfg)
        check_fields(mcfg)
        validate_train(tcfg)
        recipe.validate(mcfg)
        if args.data_dir is None:
            raise ValueError("give DATA_DIR, the folder of training frames (or data_dir in "
                             "--config FILE)")
        if args.dry_run:
            print(json.dumps({"model": model, "data_dir": args.data_dir,
                              "train": dataclasses.asdict(tcfg),
                              "model_config": dataclasses.asdict(mcfg)}, indent=2))
            return 0
        data_dir = Path(args.data_dir)
        if not data_dir.exists():
            raise ValueError(f"{data_dir}: no such folder (give the folder of training frames)")
        with plain_warnings():
            summary = train(recipe, mcfg, tcfg, data_dir, heldout=_heldout_scorer)
    # an OSError: a full disk, a file where a folder belongs, no permission
    except (ValueError, CheckpointError, TrainingStopped, OSError) as exc:
        return error_exit(exc)
    if summary.get("interrupted"):
        return 130
    last = summary.get("last", {})
    if last:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                            if k not in ("step", "time", "lr", "skipped") and isinstance(v, float))
        print(f"done: {summary['step']} iterations in {summary['seconds']} s; {figures}")
    print(f"checkpoint: {summary['checkpoint']}\nsamples, log, loss curve: {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
