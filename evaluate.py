#!/usr/bin/env python
"""Evaluate a trained model: bits/dim, PSNR/SSIM on the synthetic set, lip sync and identity on
real sequences; or put several evaluations side by side.

Examples:
  python evaluate.py --model ad-flow --checkpoint checkpoint/ad/last.pt demo_data/synthetic
  python evaluate.py --model mi-flow --checkpoint mi demo_data/synthetic --pairs 2
  python evaluate.py --model glow --checkpoint checkpoint/glow/last.pt LRW_FOLDER --max_frames 256
  python evaluate.py --model ad-flow --checkpoint ad --real ../faces --seq_frames 50
  python evaluate.py --model ad-flow --checkpoint ad --source ellen --query obama
  python evaluate.py --compare ad mi

DATA is a synthetic set's root (lrw.synthetic: PSNR/SSIM against its exact ground truth, and
bits/dim of its held-out identities) or any folder of frames (bits/dim only; an LRW-style
folder's test/ or val/ split when present). Output: RESULT_DIR/eval/NAME/table.md,
metrics.csv, metrics.png, details.csv. See docs/evaluate.md for every metric.
"""

from __future__ import annotations

import sys

from training.allocator import maybe_use_jemalloc

if __name__ == "__main__":
    maybe_use_jemalloc()

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cliargs import add_no_progress, nonnegative_int, positive_int, seed  # noqa: E402
from evaluation import pose  # noqa: E402
from evaluation.html import command_line, compare_report, talking_report  # noqa: E402
from evaluation.likelihood import bits_per_dim_over, heldout_frames  # noqa: E402
from evaluation.models import (  # noqa: E402
    BASELINE_BLEND,
    BASELINE_COPY,
    load_for_evaluation,
    pasted_label,
    run_sequence,
)
from evaluation.report import compare_runs, format_table, write_report  # noqa: E402
from evaluation.syncnet import audio_mfcc, sync_scores  # noqa: E402
from evaluation.visuals import real_rows, synthetic_rows  # noqa: E402
from faces.io import image_size  # noqa: E402
from talking.inputs import (  # noqa: E402
    available_queries,
    available_sources,
    read_rgb,
    resolve_query,
    resolve_source,
)
from training import registry  # noqa: E402
from training.cli import claim_output, report_errors  # noqa: E402
from training.distributed import resolve_device  # noqa: E402
from training.precision import (  # noqa: E402
    add_precision_args,
    apply_precision,
    precision_name,
    resolve_precision,
)
from training.registry import DEFAULT_MODEL as MODELS_DEFAULT  # noqa: E402
from training.run import Run, resolve_checkpoint  # noqa: E402

# evaluation.metrics (and .synthetic, .real, .field_metrics and the attribute job, which
# import it) loads scikit-image's metrics and with them scipy.stats: ~2 s more before
# `evaluate.py --help` answers (python -X importtime), so the jobs import them when they run.


def build_parser(model: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="evaluate.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", metavar="DATA",
                        help="synthetic set roots and/or folders of held-out frames")
    parser.add_argument("--model", default=model or MODELS_DEFAULT, choices=registry.names(),
                        help=f"which model (default: {MODELS_DEFAULT})")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="the model's checkpoint: a file, or a run name meaning "
                             "CHECKPOINT_DIR/NAME/last.pt (required unless --compare)")
    parser.add_argument("--name", default=None,
                        help="output folder name under RESULT_DIR/eval (default: the "
                             "checkpoint's run name, or compare_RUN1_RUN2 with --compare)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace RESULT_DIR/eval/NAME when it holds an evaluation of another "
                             "checkpoint or other data (default: refuse; give --name NEW)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", default=None,
                        help="merge RESULT_DIR/eval/RUN/metrics.csv of several runs into one "
                             "table and chart (no model is loaded)")
    parser.add_argument("--result_dir", default="result", help="root of results (default: "
                        "result)")
    parser.add_argument("--checkpoint_dir", default="checkpoint",
                        help="root of checkpoints, for run names (default: checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N "
                        "(default: auto)")
    parser.add_argument("--batch", type=positive_int, default=16, help="frames per forward pass "
                        "(default: 16)")
    parser.add_argument("--blend", default="poisson",
                        choices=["poisson", "poisson_plain", "paste"],
                        help="the mouth mix given to the models and scored as the blend "
                             "baseline on the synthetic set (as test.py --blend; default: "
                             "poisson, gain-matched)")
    parser.add_argument("--paste_back", default="region", choices=["region", "query", "none"],
                        help="synthetic: also score what test.py writes, pasted back at 256 px "
                             "against the 256 px truth, beside the query and the mouth blend at "
                             "256 px (rows '@256 px'), as test.py --paste_back does it: region "
                             "(default; the model's change added to its input at 256 px, the "
                             "mouth mix for the talking models) or query (added to the query); "
                             "none: the model's size only")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the dequantisation noise for bits/dim (default: 0)")
    add_precision_args(parser)  # --precision, --no_tf32 (as test.py)
    g = parser.add_argument_group("what is scored")
    g.add_argument("--max_frames", type=nonnegative_int, default=512,
                   help="bits/dim: at most N frames per DATA folder, evenly spaced "
                        "(default: 512; 0: all)")
    g.add_argument("--pairs", type=positive_int, default=None,
                   help="synthetic: the first N query x source pairs (default: all)")
    g.add_argument("--seq_frames", type=positive_int, default=None,
                   help="synthetic and real: the first N frames of each source (default: all)")
    g.add_argument("--source", action="append", default=None, metavar="NAME",
                   help="real: a driving sequence IMAGE_DIR/source_img/NAME (repeatable)")
    g.add_argument("--query", action="append", default=None, metavar="NAME",
                   help="real: a query IMAGE_DIR/ref_img/NAME_256.* (repeatable; default: all)")
    g.add_argument("--image_dir", default="image",
                   help="real: root of ref_img/ and source_img/ for --source (default: image)")
    g.add_argument("--real", default=None, metavar="DIR",
                   help="real: a folder holding ref_img/ and source_img/; every source (or "
                        "--source) with every query (or --query)")
    g.add_argument("--face_box", choices=["aligned", "detect"], default="aligned",
                   help="real: how dlib finds the face in generated frames: the aligned crop's "
                        "box (default; they are aligned crops) or its detector")
    f = parser.add_argument_group(
        "the field's metrics (docs/evaluate.md; each column is absent, not zero, when its "
        "file is not given; nothing is downloaded)")
    f.add_argument("--no_field_metrics", dest="field_metrics", action="store_false",
                   help="skip the built-in ones: MS-SSIM, dlib-CSIM, LMD, AKD, sharpness "
                        "(variance of the Laplacian on the mouth box), jitter error")
    f.add_argument("--lpips", metavar="FILE", default=None,
                   help="LPIPS from a local file: {'net': 'alex'|'vgg16', 'backbone': "
                        "torchvision features state dict, 'heads': lin0..lin4}")
    f.add_argument("--arcface", metavar="FILE", default=None,
                   help="ArcFace CSIM from a TorchScript embedding network "
                        "([B,3,112,112] in [-1,1] -> [B,D])")
    f.add_argument("--syncnet", metavar="FILE", default=None,
                   help="SyncNet LSE-C/LSE-D from a TorchScript file (forward_lip, "
                        "forward_aud); needs the source's sound: a video file with sound as "
                        "--source (without: no column and a one-line note)")
    add_no_progress(parser)
    if model is not None:
        registry.get(model).add_test_args(parser)
        if any("--mode" in a.option_strings for a in parser._actions):
            parser.set_defaults(mode=None)  # None: every mode
    return parser


def run_name(checkpoint: Path) -> str:
    """``checkpoint/NAME/last.pt`` -> NAME; ``.../NAME/step_0001000.pt`` ->
    NAME_step_0001000; any other file -> its stem."""
    stem = checkpoint.stem
    if stem == "last" and checkpoint.parent.name:
        return checkpoint.parent.name
    if stem.startswith("step_") and checkpoint.parent.name:
        return f"{checkpoint.parent.name}_{stem}"
    return stem


def _weighted(rows_list: list[dict[str, dict]], count: str) -> dict[str, dict]:
    """Merge per-system rows of several data sets, means weighted by ``count``."""
    out: dict[str, dict] = {}
    for rows in rows_list:
        for lab, row in rows.items():
            cur = out.setdefault(lab, {})
            n_old, n_new = cur.get(count, 0), row.get(count, 0)
            for k, v in row.items():
                if k == count or k == "no_face":
                    cur[k] = cur.get(k, 0) + v
                elif n_old + n_new:
                    cur[k] = (cur.get(k, 0.0) * n_old + v * n_new) / (n_old + n_new)
    return out


def evaluate(args: argparse.Namespace, say=print) -> dict:
    """Run the evaluation described by ``args``; returns ``{"rows", "paths", "out_dir"}``.

    Raises ``ValueError``/``CheckpointError`` with one-line messages.
    """
    # deferred: scikit-image and scipy.stats, ~2 s of start-up (see the note at the top)
    from evaluation import field_metrics, metrics, real, synthetic

    if not args.checkpoint:
        raise ValueError("--checkpoint is required (or use --compare RUN RUN ...)")
    if not (args.data or args.source or args.real):
        raise ValueError("nothing to evaluate: give DATA (a synthetic set or a folder of "
                         "frames), --source NAME or --real DIR")
    for d in args.data:
        if not Path(d).is_dir():
            raise ValueError(f"{d}: no such folder (DATA is a synthetic set's root or a folder "
                             "of frames)")
    image_dir = Path(args.real) if args.real else Path(args.image_dir)
    sources = list(args.source or [])
    if args.real:
        if not (image_dir / "ref_img").is_dir() or not (image_dir / "source_img").is_dir():
            raise ValueError(f"--real {image_dir}: expected ref_img/ and source_img/ in it")
        sources = sources or available_sources(image_dir)
    queries = list(args.query or [])
    if sources and not queries:
        queries = available_queries(image_dir)
        if not queries:
            raise ValueError(f"no query face in {image_dir}/ref_img")

    # refused before any work
    nets = field_metrics.FieldNets.load(args.lpips, args.arcface, args.syncnet)
    recipe = registry.get(args.model)
    ckpt = resolve_checkpoint(args.checkpoint, args.checkpoint_dir, recipe.DEFAULT_CHECKPOINT)
    args.checkpoint = str(ckpt)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    ev = load_for_evaluation(args.model, args, device)
    apply_precision(ev.model, precision, device, args.tf32)
    mode = getattr(args, "mode", None)
    if mode:  # an explicit --mode keeps that mode only
        ev.systems = [s for s in ev.systems if s.label.endswith(f"({mode})")] or ev.systems
    name = args.name or run_name(ckpt)
    out_dir = Path(args.result_dir) / "eval" / name
    claim_output(out_dir, {"model": args.model, "checkpoint": str(Path(ckpt).resolve()),
                           "data": [str(Path(d).resolve()) for d in args.data],
                           "sources": sources, "queries": queries,
                           "images": str(image_dir.resolve()) if sources else None},
                 args.overwrite, "give --name NEW to keep both", say)
    say(f"[{args.model}] {ckpt}: {ev.size} px, evaluating into {out_dir}")

    labels = [s.label for s in ev.systems] or [args.model]
    rows: dict[str, dict] = {lab: {} for lab in labels}
    details: list[dict] = []
    header = [f"model: {args.model}, checkpoint {ckpt}, {ev.size} x {ev.size} px, "
              f"{precision_name(precision)} (--precision {args.precision})",
              *ev.notes]

    if ev.density is not None and args.data:
        paths, wheres = [], []
        for d in args.data:
            p, where = heldout_frames(d, args.max_frames or None)
            paths += p
            wheres.append(where)
        bpd, n = bits_per_dim_over(ev.bits_per_dim, paths, ev.size, ev.n_bits, args.batch,
                                   args.seed, device, args.progress)
        if n == 0:  # an empty score is a failed job, not a table of NaN
            raise ValueError(f"{', '.join(map(str, args.data))}: none of the {len(paths)} image "
                             "files could be read, nothing was scored; give a folder of "
                             "readable frames")
        for lab in labels:
            rows[lab].update(bpd=bpd, bpd_frames=n)
        header.append(f"bits/dim: {n} frames of {'; '.join(wheres)}, {ev.n_bits}-bit, "
                      f"seeded dequantisation (seed {args.seed})")

    synthetic_sets = [d for d in args.data if synthetic.is_synthetic(d)]
    if synthetic_sets:
        per_set = []
        for root in synthetic_sets:
            r, det = synthetic.evaluate_synthetic(root, ev.systems, ev.size, device, args.batch,
                                        args.pairs, args.seq_frames, args.progress, args.blend,
                                        paste=args.paste_back != "none" and args.paste_back)
            per_set.append(r)
            details += det
        merged = _weighted(per_set, "frames")
        for lab, row in merged.items():
            rows.setdefault(lab, {}).update(row)
        header.append(
            f"synthetic: {', '.join(synthetic_sets)}; {merged[BASELINE_COPY]['frames']} frames per "
            f"system ({'first ' + str(args.pairs) if args.pairs else 'all'} query x source "
            f"pairs); ground truth = query identity with the source frame's mouth, resized like "
            f"the model input; SSIM window {metrics.SSIM_WINDOW}x{metrics.SSIM_WINDOW} uniform, "
            f"per channel, data_range 255; PSNR of identical images capped at "
            f"{metrics.PSNR_CAP:g} dB")
        if args.paste_back != "none":
            into = ("its input at 256 px (the mouth mix made at 256 px for a model fed one)"
                    if args.paste_back == "region" else "the query at 256 px")
            header.append(
                "rows '@256 px': what test.py writes, scored at 256 px against the 256 px "
                f"truth: each model pasted back (--paste_back {args.paste_back}: its change "
                f"added to {into}), the query itself and the mouth blend made at 256 px; dPSNR "
                f"against the query at 256 px; mouth states read back from the frames brought "
                f"to {ev.size} px")
        header += _field_metrics(args, nets, ev, synthetic_sets, per_set, rows, device)
    if sources:
        firsts = [resolve_query(q, image_dir)[0] for q in queries]
        firsts += [resolve_source(s, image_dir).frames[0] for s in sources]
        for path in firsts:  # said once per file, not per frame
            w, h = image_size(path)
            if w != h:
                say(f"note: {path} is {w}x{h}, not square: the models see it stretched to a "
                    "square (align it with preprocess.py for an undistorted face)")
        r, det = real.evaluate_real(image_dir, sources, queries, ev.systems, ev.size, device,
                               args.batch, args.seq_frames, args.face_box == "detect",
                               args.progress, args.field_metrics)
        details += det
        if all(row["no_face"] >= row["real_frames"] for row in r.values()):
            raise ValueError(f"{image_dir}: no face found in any frame of "
                             f"{', '.join(sources)} with {', '.join(queries)}, nothing was "
                             "scored; give aligned face crops (preprocess.py --source NAME)")
        for lab, row in r.items():
            rows.setdefault(lab, {}).update(row)
        header.append(f"real: {image_dir}, sources {', '.join(sources)}; queries "
                      f"{', '.join(queries)}; generated faces found by the "
                      f"{'detector' if args.face_box == 'detect' else 'aligned crop box'}")
    if nets.syncnet is not None:
        header.append(_lip_sync(args, nets.syncnet, ev, image_dir, sources, queries, rows,
                                device))

    order = labels + [lab for lab in (BASELINE_COPY, BASELINE_BLEND) if lab in rows]
    order += [pasted_label(lab) for lab in order if pasted_label(lab) in rows]
    table_rows = [{"system": lab, **rows[lab]} for lab in order if rows[lab]]
    if not table_rows:
        raise ValueError("nothing was scored (a Glow alone is scored by bits/dim on DATA)")
    title = f"Evaluation of {name} ({args.model})"
    paths = write_report(out_dir, table_rows, title, header, details)
    paths["html"] = _html(args, ev, out_dir, title, paths["table"], synthetic_sets, sources,
                          queries, image_dir, ckpt, device)
    say("\n" + format_table(table_rows))
    say(f"table: {paths['table']}\ncsv: {paths['csv']}\nchart: {paths['chart']}\n"
        f"report: {paths['html']}")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"rows": table_rows, "paths": paths, "out_dir": out_dir}


def _field_metrics(args, nets, ev, synthetic: list[str], per_set: list[dict], rows: dict,
                   device) -> list[str]:
    """The field's metrics (``evaluation.field_metrics``) of every system and baseline on the
    synthetic sets, merged into ``rows`` (frame-weighted over sets); returns header lines."""
    # deferred: scikit-image and scipy.stats, ~2 s of start-up (see the note at the top)
    from evaluation import field_metrics as fm

    if not (args.field_metrics or nets.lpips or nets.arcface):
        return []
    scorer = fm.FieldScorer(nets, dlib=args.field_metrics)
    scored = []
    for root, base in zip(synthetic, per_set, strict=True):
        r = fm.evaluate_synthetic_field(root, ev.systems, ev.size, scorer, device, args.batch,
                                        args.pairs, args.seq_frames, args.blend, args.progress)
        scored.append({lab: {**v, "frames": base[lab]["frames"]} for lab, v in r.items()})
    for lab, row in _weighted(scored, "frames").items():
        rows.setdefault(lab, {}).update({k: v for k, v in row.items() if k != "frames"})
    lines = []
    if args.field_metrics:
        lines.append(
            f"field metrics: MS-SSIM (5 scales, 11x11 Gaussian sigma 1.5) on output and truth "
            f"enlarged to {fm.SCORE_SIZE} px; dlib (68 landmarks, face descriptor) on frames "
            f"enlarged to {fm.SCORE_SIZE} px with the aligned face box (dlib finds no face at the "
            f"model's size); LMD/AKD in px at {fm.SCORE_SIZE} against the truth's landmarks; "
            f"dlib-CSIM against the query on {fm.CSIM_FRAMES} frames per sequence; sharpness = "
            "variance of the Laplacian of the grey mouth box at the model's size")
    if nets.lpips:
        lines.append(f"LPIPS: {args.lpips}")
    if nets.arcface:
        lines.append(f"ArcFace CSIM: {args.arcface}")
    return lines


def _lip_sync(args, net, ev, image_dir: Path, sources: list[str], queries: list[str],
              rows: dict, device) -> str:
    """LSE-C/LSE-D (``evaluation.syncnet``) of every system and baseline on the real sources
    that have sound (a video file as --source), means over pairs into ``rows``; returns the
    table's one-line note."""
    scored: dict[str, list[tuple[float, float]]] = {}
    with_audio = []
    for name in sources:
        src = resolve_source(name, image_dir)
        if src.audio is None:
            continue
        with_audio.append(src.name)
        mfcc = audio_mfcc(src.audio)
        paths = src.frames[:args.seq_frames] if args.seq_frames else src.frames
        frames = [read_rgb(p) for p in paths]
        for q in queries:
            qpath, _ = resolve_query(q, image_dir)
            outs = run_sequence(read_rgb(qpath), frames, ev.size, ev.systems, device,
                                args.batch)
            for lab, seq in outs.items():  # the copy baseline: the query, still
                scored.setdefault(lab, []).append(sync_scores(net, seq, mfcc, src.fps))
    if not with_audio:
        return ("LSE-C/LSE-D: not computed: --syncnet needs the source's audio and no source "
                "here has any (synthetic sets and frame folders are silent; give a video file "
                "with sound as --source)")
    for lab, vals in scored.items():
        arr = np.asarray(vals, dtype=np.float64)
        ok = ~np.isnan(arr).any(1)
        if ok.any():
            rows.setdefault(lab, {}).update(lse_c=float(arr[ok, 0].mean()),
                                            lse_d=float(arr[ok, 1].mean()))
    silent = len(sources) - len(with_audio)
    return (f"LSE-C/LSE-D: SyncNet {args.syncnet} on the sound of {', '.join(with_audio)}"
            + (f"; {silent} source(s) without sound left out" if silent else ""))


def _html(args, ev, out_dir: Path, title: str, table: Path, synthetic: list[str],
          sources: list[str], queries: list[str], image_dir: Path, ckpt: Path, device) -> Path:
    """``report.html`` beside ``table.md``: the table, the first pair side by side with the
    baselines (grid and video), the charts and the checkpoint's training curves."""
    example = None
    if ev.systems and synthetic:
        example = synthetic_rows(synthetic[0], ev.systems, ev.size, device, args.batch,
                                 args.seq_frames, args.blend,
                                 args.paste_back != "none" and args.paste_back)
    elif ev.systems and sources:
        example = real_rows(image_dir, sources[0], queries[0], ev.systems, ev.size, device,
                            args.batch, args.seq_frames)
    run = Run.of_checkpoint(ckpt, args.result_dir).samples
    return talking_report(out_dir, title, table, getattr(args, "command", None), example,
                          [run] if run.is_dir() else [])


def compare(args: argparse.Namespace, say=print) -> dict:
    eval_root = Path(args.result_dir) / "eval"
    name = args.name or "compare_" + "_".join(args.compare)
    rows, paths = compare_runs(eval_root, args.compare, eval_root / name)
    paths["html"] = compare_report(eval_root / name, paths["table"],
                                   [eval_root / run for run in args.compare],
                                   getattr(args, "command", None))
    say(format_table(rows, ("run", "system")))
    say(f"table: {paths['table']}\ncsv: {paths['csv']}\nchart: {paths['chart']}\n"
        f"report: {paths['html']}")
    return {"rows": rows, "paths": paths, "out_dir": eval_root / name}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default=MODELS_DEFAULT)
    pre.add_argument("--compare", nargs="+", default=None)
    known, _ = pre.parse_known_args(argv)
    try:
        job = registry.get(known.model).EVAL_JOB if known.compare is None else "talking"
        if job == "attribute":
            from evaluation import attribute  # deferred: scipy.stats, as the note at the top says

            return attribute.main(argv)
        if job == "pose":
            return pose.main(argv)
    except ValueError as exc:
        if known.compare is None:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        known.model = None
    args = build_parser(known.model if known.compare is None else None).parse_args(argv)
    args.command = command_line("evaluate.py", argv)
    return report_errors(lambda: compare(args) if args.compare else evaluate(args), args=args)


if __name__ == "__main__":
    sys.exit(main())
