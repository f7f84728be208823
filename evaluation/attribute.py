"""``evaluate.py --model content-ae --checkpoint PATH SYNTH_ROOT``: scores against exact answers.

SYNTH_ROOT is a set written by ``python -m synthface.attributes`` (its ``manifest.json`` holds
every identity and attribute). On the held-out split (identities training never saw), every
``A_i`` with every ``B_j`` is rendered at the model's size and compared with the exact answers:

* transfer ``Dec(E1(B_j) ⊕ E2(A_i))`` vs ``B_j`` wearing ``A_i``'s attribute: PSNR and SSIM of
  the whole image, PSNR inside the attribute region (does the attribute arrive?) and outside it
  (is the person kept?), and the *outside cost*: how many dB of whole-image PSNR the changes
  outside the region lose (PSNR with the outside put back exactly, minus PSNR as it is; the
  copy baseline's is 0, the ``--mask`` target is <= 1 dB);
* removal ``Dec(E1(A_i) ⊕ 0)`` vs ``A_i`` without its attribute: PSNR, SSIM, region PSNR.

Baselines beside the model: copying the target unchanged (``B_j`` for a transfer, ``A_i`` for a
removal) and pasting the donor's attribute region naively (``B_j`` with ``A_i``'s pixels inside
the region its attribute covers on ``A_i``). PSNRs are pooled (one MSE over all pairs, 8-bit
units); identical images count as :data:`evaluation.metrics.PSNR_CAP` dB. Outputs in
``RESULT_DIR/eval/NAME/``: ``table.md``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cliargs import add_no_progress, nonnegative_int
from synthface.attributes import inputs, read_manifest, removal_truth, transfer_truth, truth_region
from talking.transfer import job_parser, load
from training import registry
from training.cli import claim_output, report_errors
from training.distributed import resolve_device
from training.recipe import Recipe
from training.run import Run

from .html import Section, command_line, write_html
from .metrics import PSNR_CAP, psnr_from_mse, ssim
from .visuals import comparison_grid

EXAMPLES = 8
"""Transfers shown side by side in ``report.html``."""


class _Pool:
    """Squared errors (whole, inside, outside a region) and SSIMs, pooled over pairs."""

    def __init__(self) -> None:
        self.sse = {"all": 0.0, "in": 0.0, "out": 0.0}
        self.n = {"all": 0, "in": 0, "out": 0}
        self.ssims: list[float] = []

    def add(self, truth: np.ndarray, image: np.ndarray, region: np.ndarray) -> None:
        err = (truth.astype(np.float64) - image.astype(np.float64)) ** 2  # [S, S, 3]
        for key, sel in (("all", np.ones_like(region)), ("in", region), ("out", ~region)):
            self.sse[key] += float(err[sel].sum())
            self.n[key] += int(sel.sum()) * 3
        self.ssims.append(ssim(truth, image))

    def psnr(self, key: str) -> float:
        return psnr_from_mse(self.sse[key] / self.n[key]) if self.n[key] else float("nan")

    def outside_cost(self) -> float:
        """dB of whole-image PSNR lost to changes outside the region: PSNR with the outside
        put back exactly (the answer equals the target there) minus the PSNR as it is; 0 for
        an untouched outside, whatever the region holds. The ``--mask`` target is <= 1 dB."""
        if not self.n["all"] or not self.sse["in"]:
            return float("nan")
        untouched = psnr_from_mse(self.sse["in"] / self.n["all"])
        return untouched - self.psnr("all")

    def summary(self) -> dict:
        return {"psnr": self.psnr("all"), "ssim": float(np.mean(self.ssims)),
                "region_psnr": self.psnr("in"), "outside_psnr": self.psnr("out"),
                "outside_cost_db": self.outside_cost()}


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[3, S, S]`` in ``[-1, 1]`` -> uint8 ``[S, S, 3]`` (what a written PNG holds)."""
    x = ((x.float().cpu().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0


def evaluate_set(recipe: Recipe, model: nn.Module, root: str | Path, device: torch.device,
                 split: str = "test", max_pairs: int = 0,
                 examples: dict[str, list] | None = None) -> dict:
    """``{system: {"transfer": {...}, "removal": {...}}}`` (see the module docstring).

    ``examples``: when given, the first :data:`EXAMPLES` transfers are appended to it, one
    uint8 image per row label (the answer, the model, both baselines), for the report."""
    manifest = read_manifest(root)
    if not manifest["sets"].get(f"{split}A") or not manifest["sets"].get(f"{split}B"):
        raise ValueError(f"{root}: the manifest has no {split}A/{split}B faces; write the set "
                         "with --test_a and --test_b above 0")
    size = recipe.model_size(model)
    imgs_a, imgs_b = inputs(manifest, split, size)
    a = torch.stack([_to_tensor(x) for x in imgs_a]).to(device)
    b = torch.stack([_to_tensor(x) for x in imgs_b]).to(device)
    pools = {s: {"transfer": _Pool(), "removal": _Pool()}
             for s in ("model", "copy target", "paste region")}
    with torch.no_grad():
        removed = recipe.remove(model, a)
        pairs = 0
        for i in range(len(imgs_a)):
            donor_region = truth_region(manifest, i, None, split, size)
            # past --max_pairs only the removal is scored: no more donors' transfers are made
            n_b = len(imgs_b) if not max_pairs else min(len(imgs_b), max(max_pairs - pairs, 0))
            t = recipe.transfer(model, a[i:i + 1].expand_as(b), b) if n_b else None
            for j in range(n_b):
                pairs += 1
                truth = transfer_truth(manifest, i, j, split, size)
                reg = truth_region(manifest, i, j, split, size)
                pasted = np.where(donor_region[..., None], imgs_a[i], imgs_b[j])
                pools["model"]["transfer"].add(truth, _to_uint8(t[j]), reg)
                pools["copy target"]["transfer"].add(truth, imgs_b[j], reg)
                pools["paste region"]["transfer"].add(truth, pasted, reg)
                if examples is not None and pairs <= EXAMPLES:
                    for lab, img in (("exact answer", truth), ("model", _to_uint8(t[j])),
                                     ("baseline: copy target", imgs_b[j]),
                                     ("baseline: paste region", pasted),
                                     ("donor A", imgs_a[i])):
                        examples.setdefault(lab, []).append(img)
            truth = removal_truth(manifest, i, split, size)
            pools["model"]["removal"].add(truth, _to_uint8(removed[i]), donor_region)
            pools["copy target"]["removal"].add(truth, imgs_a[i], donor_region)
    out = {s: {k: p.summary() for k, p in v.items() if p.ssims} for s, v in pools.items()}
    out["_info"] = {"pairs": pairs, "a": len(imgs_a), "b": len(imgs_b), "size": size,
                    "kind": manifest["kind"], "split": split, **recipe.transfer_info(model)}
    return out


def table(metrics: dict) -> str:
    """Markdown table of :func:`evaluate_set`'s figures."""
    head = ("| system | transfer PSNR dB | transfer SSIM | attribute-region PSNR dB | "
            "outside-region PSNR dB | outside cost dB | removal PSNR dB | removal SSIM |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, d=2):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        return "exact" if d == 2 and v >= PSNR_CAP else f"{v:.{d}f}"

    for name, m in metrics.items():
        if name.startswith("_"):
            continue
        t, r = m.get("transfer", {}), m.get("removal", {})
        lines.append(f"| {name} | {f(t.get('psnr'))} | {f(t.get('ssim'), 4)} | "
                     f"{f(t.get('region_psnr'))} | {f(t.get('outside_psnr'))} | "
                     f"{f(t.get('outside_cost_db'), 3)} | "
                     f"{f(r.get('psnr'))} | {f(r.get('ssim'), 4)} |")
    return "\n".join(lines)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    p, recipe = job_parser("evaluate.py", __doc__, argv)
    p.add_argument("root", metavar="SYNTH_ROOT", help="a set from python -m synthface.attributes")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run name")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="which faces (default: test, identities training never saw)")
    p.add_argument("--max_pairs", type=nonnegative_int, default=0, help="at most this many transfer pairs "
                   "(0: every A with every B)")
    p.add_argument("--name", help="output name (default: the run name)")
    p.add_argument("--overwrite", action="store_true", help="replace RESULT_DIR/eval/NAME when "
                   "it holds an evaluation of another checkpoint or set (default: refuse)")
    recipe.add_test_args(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--checkpoint_dir", default="checkpoint", help="root of checkpoints")
    p.add_argument("--result_dir", default="result", help="root of results")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    return p


def run(args: argparse.Namespace, say=print) -> dict:
    read_manifest(args.root)  # not a synthetic set: say so before loading the model
    device = resolve_device(args.device)
    recipe = registry.get(args.model)
    model, run_name = load(args, device)
    examples: dict[str, list] = {}
    name = args.name or run_name or recipe.NAME
    out = Path(args.result_dir) / "eval" / name
    claim_output(out, {"model": recipe.NAME, "checkpoint": str(Path(args.checkpoint).resolve()),
                       "data": str(Path(args.root).resolve()), "split": args.split},
                 args.overwrite, "give --name NEW to keep both", say)
    metrics = evaluate_set(recipe, model, args.root, device, args.split, args.max_pairs, examples)
    out.mkdir(parents=True, exist_ok=True)
    text = table(metrics)
    info = metrics["_info"]
    (out / "table.md").write_text(
        f"{info['kind']}, {info['split']} split, {info['a']} A x {info['b']} B faces at "
        f"{info['size']} px"
        + (f", mask power {info['mask_power']:g}" if info.get("mask_power") is not None else "")
        + (", gated by the donor's own mask" if info.get("donor_mask") else "")
        + f"\n\n{text}\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = _html(out, name, examples, args)
    say(text)
    say(f"table: {out / 'table.md'}\nmetrics: {out / 'metrics.json'}\nreport: {report}")
    return {"metrics": metrics, "table": text, "out": out, "html": report}


def _html(out: Path, name: str, examples: dict[str, list], args: argparse.Namespace) -> Path:
    """``report.html``: the table, the first transfers beside the answer and both baselines
    (tiles of at least 128 px), the training curves."""
    sections = [Section("Scores", (out / "table.md").read_text())]
    if examples:
        order = ["donor A", "baseline: copy target", "exact answer", "model",
                 "baseline: paste region"]
        grid = comparison_grid({lab: np.stack(examples[lab]) for lab in order},
                               out / "compare_grid.png", columns=EXAMPLES)
        sections.append(Section(
            "Transfers beside the answer and the baselines",
            "Columns: the first transfers (donor A_i's attribute onto target B_j); rows: the "
            "donor, the target (= copying it, a baseline), the exact answer, the model, "
            "pasting the donor's region (a baseline). Tiles enlarged by pixel repetition.",
            [(grid, "transfers")]))
    run_dir = Run(name, result_dir=args.result_dir).samples
    curves = [(run_dir / "loss.png", "loss curves")] if (run_dir / "loss.png").is_file() else []
    grid_png = Path(args.result_dir) / "transfer" / name / "grid.png"
    if grid_png.is_file():
        curves.insert(0, (grid_png, "test.py's transfer grid"))
    if curves:
        sections.append(Section("Transfer grid and training", "", curves))
    return write_html(out, f"{args.model} evaluation: {name}", sections,
                      getattr(args, "command", None))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.command = command_line("evaluate.py", argv)
    return report_errors(lambda: run(args), args=args)
