"""``evaluate.py --model pose-flow``: pose transfer against exact ground truth, and driving on
real sequences.

Synthetic set (``pose_flow.synthetic``): every held-out source identity re-posed to every
held-out target's pose and mouth, scored against that identity rendered at that pose (the true
answer). The condition given to every system is the answer's exact landmarks (the target pose in
the source's face shape). Systems: the pose flow; *copy* (the source unchanged); *warp* (the
source warped by the landmark motion, a piecewise-affine warp over a triangulation of the 68
points plus the image border; with ``--reference warp`` also the model's own torch warp, the
residual flow's starting point). Metrics: PSNR / SSIM / L1 against the truth; landmark error (dlib
landmarks of the output vs dlib landmarks of the truth, in inter-ocular units: the detector's
bias on drawn faces cancels); identity distance (dlib face descriptors of output and source).
Driving (``--no_drive`` skips it): every held-out source driven by the set's driving sequences as
``test.py --retarget`` drives it, frame by frame against ``pose_flow.synthetic.driven_truth`` (the
source at its own pose and mouth moved by the driver's change since its first frame): the flow,
its own warp and copying the query, PSNR / SSIM / L1.

Real sequences (``--source NAME --query NAME``): the query driven by the source's landmarks;
landmark error of the output against the driving landmarks, identity distance to the query.

Output: ``RESULT_DIR/eval/NAME/table.md``, ``metrics.csv``, ``details.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from cliargs import add_no_progress, error_exit, positive_int
from faces.io import read_image
from faces.landmarks import LandmarkDetector
from faces.metrics import recognizer
from glow.io import CheckpointError
from pose_flow.data import read_landmarks
from pose_flow.driving import add_mirror_arg, inter_ocular, landmarks_for, retarget
from pose_flow.recipe import RECIPE
from pose_flow.synthetic import driven_truth, is_pose_set
from synthface.pose import render_posed
from talking.inputs import read_rgb, resolve_query, resolve_source
from talking.job import to_uint8
from training import registry
from training.cli import check_folder_flags, claim_output
from training.distributed import resolve_device
from training.run import Run, resolve_checkpoint

from .html import Section, command_line, write_html
from .visuals import comparison_grid

COLUMNS = (("psnr", "PSNR dB ↑", 2), ("ssim", "SSIM ↑", 4), ("l1", "L1 ↓", 4),
           ("lm_err", "landmark err ↓", 4), ("id_dist", "identity dist ↓", 3),
           # the field's metrics (evaluation.field_metrics; docs/pose_flow.md)
           ("ms_ssim", "MS-SSIM ↑", 4), ("lpips", "LPIPS ↓", 4), ("akd", "AKD px ↓", 2),
           ("lmd", "LMD px ↓", 2), ("csim_dlib", "dlib-CSIM ↑", 4),
           ("csim_arcface", "ArcFace CSIM ↑", 4), ("sharp_face", "sharpness ↑", 1),
           ("pairs", "pairs", 0))
SIZE_FOR_DLIB = 256
REFERENCE_ROW = "warp source (the flow's own warp)"


def piecewise_affine_warp(image: np.ndarray, src_lm: np.ndarray, dst_lm: np.ndarray) -> np.ndarray:
    """Warp uint8 ``image`` [S, S, 3] so landmarks ``src_lm`` (x, y in 0..1) move to ``dst_lm``;
    the border (corners and edge midpoints) stays fixed."""
    # deferred: scikit-image adds 0.9 s and scipy.stats (.metrics, .field_metrics) 1.3-2.3 s
    # to evaluate.py --model pose-flow --help (timed after the script's own imports)
    from skimage.transform import PiecewiseAffineTransform, warp

    s = image.shape[0]
    border = np.array([[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5]])
    src = np.concatenate([src_lm, border]) * s
    dst = np.concatenate([dst_lm, border]) * s
    # output coordinates -> input coordinates
    if hasattr(PiecewiseAffineTransform, "from_estimate"):
        tform = PiecewiseAffineTransform.from_estimate(dst, src)
    else:  # scikit-image < 0.26
        tform = PiecewiseAffineTransform()
        tform.estimate(dst, src)
    out = warp(image, tform, order=1, mode="edge", preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _box(lm01: np.ndarray, size: int) -> tuple[float, float, float, float]:
    """A dlib-like face box from landmarks: x over the jaw, y from the brows to the chin."""
    p = lm01 * size
    left, right = p[:, 0].min(), p[:, 0].max()
    top, bottom = p[17:27, 1].min(), p[:, 1].max()
    pad = 0.05 * (right - left)
    return (left - pad, top - pad, right + pad, bottom + pad)


class FaceScorer:
    """dlib landmarks and descriptors inside boxes given by known landmarks (no detection: the
    HOG detector misses small and drawn faces)."""

    def __init__(self) -> None:
        self.det = LandmarkDetector()
        self.rec = recognizer()

    @staticmethod
    def _big(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (SIZE_FOR_DLIB, SIZE_FOR_DLIB), interpolation=cv2.INTER_CUBIC)

    def landmarks(self, image: np.ndarray, box_lm: np.ndarray) -> np.ndarray:
        """dlib's 68 points in 0..1 of ``image``, predicted inside the box of ``box_lm``."""
        big = self._big(image)
        return self.det.landmarks_in_box(big, _box(box_lm, SIZE_FOR_DLIB)) / SIZE_FOR_DLIB

    def descriptor(self, image: np.ndarray, box_lm: np.ndarray) -> np.ndarray:
        big = self._big(image)
        shape = self.det.dlib_shape(big, _box(box_lm, SIZE_FOR_DLIB))
        return np.asarray(self.rec.compute_face_descriptor(big, shape))


def landmark_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance between landmark sets [68, 2], in units of ``b``'s inter-ocular
    distance."""
    return float(np.linalg.norm(a - b, axis=1).mean() / max(inter_ocular(b), 1e-9))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _to_t(imgs: list[np.ndarray], device) -> torch.Tensor:
    return (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255 - 0.5).to(device)


EXAMPLES = 8
"""Pairs shown side by side in ``report.html``."""


def sharpness(image: np.ndarray) -> float:
    """Variance of the 3 x 3 Laplacian of the grey image (the whole face: a pose moves the
    mouth, so no fixed mouth box), 8-bit units squared."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=1).var())


def field_values(img: np.ndarray, truth: np.ndarray, src: np.ndarray, nets=None,
                 lm: np.ndarray | None = None, ref_lm: np.ndarray | None = None,
                 desc: np.ndarray | None = None, src_desc: np.ndarray | None = None) -> dict:
    """The field's metrics of one transfer ``img`` against its exact answer ``truth`` and its
    source face ``src`` (identity): MS-SSIM (both enlarged to 256 px), sharpness, and with
    dlib's landmarks (0..1 units) and descriptors AKD and LMD (px at 256) and dlib-CSIM; with
    ``nets`` (``evaluation.field_metrics.FieldNets``) LPIPS and ArcFace CSIM."""
    from .field_metrics import SCORE_SIZE, ms_ssim  # deferred: scipy.stats, see above

    d = {"ms_ssim": ms_ssim(truth, img), "sharp_face": sharpness(img)}
    if lm is not None and ref_lm is not None:
        dist = np.linalg.norm((lm - ref_lm) * SCORE_SIZE, axis=1)
        d["akd"], d["lmd"] = float(dist.mean()), float(dist[48:68].mean())
    if desc is not None and src_desc is not None:
        d["csim_dlib"] = float(desc @ src_desc / max(np.linalg.norm(desc) *
                                                     np.linalg.norm(src_desc), 1e-12))
    if nets is not None and nets.lpips is not None:
        d["lpips"] = float(nets.lpips.distance(img[None], truth[None])[0])
    if nets is not None and nets.arcface is not None:
        e = nets.arcface.embed(np.stack([img, src]))
        d["csim_arcface"] = float(e[0] @ e[1])
    return d


def evaluate_synthetic(model, root: Path, device, scorer: FaceScorer | None,
                       pairs: int | None = None, examples: dict[str, list] | None = None,
                       nets=None, mirror: bool = False) -> tuple[list[dict], list[dict]]:
    """(rows per system, one detail row per system and pair) on a pose set at ``root``;
    ``mirror``: the model's row is its mirror-averaged rendering (``--mirror``,
    :func:`model_row`).

    ``examples``: when given, the first :data:`EXAMPLES` pairs' images are appended to it per
    row label (the source, the exact answer, every system), for the report."""
    from .metrics import psnr, ssim  # deferred: scipy.stats, see piecewise_affine_warp

    man = json.loads((root / "manifest.json").read_text())
    size = model.img_size
    jobs = [(s, t) for s in man["sources"] for t in man["targets"]][:pairs]
    details: list[dict] = []
    for s, t in jobs:
        src_path = root / "eval" / "sources" / f"{s}.png"
        truth_path = root / "eval" / "truth" / s / f"{t}.png"
        src = _resize(read_image(src_path), size)
        truth = _resize(read_image(truth_path), size)
        lm_s, _ = read_landmarks(src_path.with_suffix(".npy"))
        lm_t, _ = read_landmarks(truth_path.with_suffix(".npy"))
        x = _to_t([src], device)
        ls_t = torch.from_numpy(lm_s)[None].to(device)
        lt_t = torch.from_numpy(lm_t)[None].to(device)
        with torch.no_grad():
            out = model.transfer(x, ls_t, lt_t, mirror=mirror)
        outputs = {model_row(mirror): to_uint8(out)[0], "copy source": src,
                   "warp source": piecewise_affine_warp(src, lm_s, lm_t)}
        if getattr(model, "reference", "none") != "none":
            # the flow's own starting point: what the flow adds is its row minus this one
            outputs[REFERENCE_ROW] = to_uint8(model.warp_reference(x, ls_t, lt_t))[0]
        if examples is not None and len(examples.get("exact answer", [])) < EXAMPLES:
            for lab, img in (("exact answer", truth), *outputs.items()):
                examples.setdefault(lab, []).append(img)
        ref_lm = scorer.landmarks(truth, lm_t) if scorer else None
        src_desc = scorer.descriptor(src, lm_s) if scorer else None
        for name, img in outputs.items():
            d = {"system": name, "source": s, "target": t, "psnr": psnr(truth, img),
                 "ssim": ssim(truth, img),
                 "l1": float(np.abs(truth.astype(float) - img.astype(float)).mean() / 255)}
            lm = desc = None
            if scorer:
                lm, desc = scorer.landmarks(img, lm_t), scorer.descriptor(img, lm_t)
                d["lm_err"] = landmark_error(lm, ref_lm)
                d["id_dist"] = float(np.linalg.norm(desc - src_desc))
            d.update(field_values(img, truth, src, nets, lm, ref_lm, desc, src_desc))
            details.append(d)
    return _summarise(details), details


def model_row(mirror: bool = False) -> str:
    """The model's row in a pose evaluation: ``pose-flow``, or ``pose-flow (--mirror)``."""
    return RECIPE.NAME + (" (--mirror)" if mirror else "")


def driven_rows(mirror: bool = False) -> dict[str, str]:
    """Rows of the driving evaluation (:func:`evaluate_driving`) by role."""
    return {"model": f"driven: {RECIPE.NAME} (--retarget{' --mirror' if mirror else ''})",
            "own_warp": "driven: its own warp (--retarget)",
            "copy": "driven: copy the query"}


DRIVEN = driven_rows()
"""Rows of the driving evaluation without ``--mirror``."""


def evaluate_driving(model, root: Path, device, mirror: bool = False) -> list[dict]:
    """One detail row per system and driven frame: every held-out source of the pose set at
    ``root`` driven, as ``test.py --source DRIVE SOURCE --retarget`` drives it (the source's
    landmarks moved by the driver's landmark motion since its first frame), by every driving
    sequence of the set, against :func:`pose_flow.synthetic.driven_truth` (its pose fitted to
    the retargeted landmarks) rendered at the model's size. Frames where the driver's landmarks
    are those of its first frame (no motion: the answer is the source itself) are not scored.
    ``mirror``: the model's frames are mirror-averaged (``--mirror``)."""
    from .metrics import psnr, ssim  # deferred: scipy.stats, see piecewise_affine_warp

    man = json.loads((root / "manifest.json").read_text())
    size = model.img_size
    rows = driven_rows(mirror)
    details: list[dict] = []
    for s in man["sources"]:
        src_path = root / "eval" / "sources" / f"{s}.png"
        src = _resize(read_image(src_path), size)
        lm_q, _ = read_landmarks(src_path.with_suffix(".npy"))
        x = _to_t([src], device)
        ls_t = torch.from_numpy(lm_q)[None].to(device)
        for drive, seq in man.get("drives", {}).items():
            folder = root / "image" / "source_img" / drive
            lms = np.stack([read_landmarks(folder / f"{k:03d}.npy")[0] for k in range(len(seq))])
            targets = retarget(lm_q, lms).astype(np.float32)
            for t in range(1, len(seq)):
                if np.abs(lms[t] - lms[0]).max() < 1e-6:
                    continue
                truth = render_posed(*driven_truth(man, s, drive, t, targets[t]), size)[0]
                lt_t = torch.from_numpy(targets[t])[None].to(device)
                with torch.no_grad():
                    outputs = {rows["model"]: to_uint8(model.transfer(x, ls_t, lt_t,
                                                                      mirror=mirror))[0],
                               rows["copy"]: src}
                    if getattr(model, "reference", "none") != "none":
                        outputs[rows["own_warp"]] = to_uint8(
                            model.warp_reference(x, ls_t, lt_t))[0]
                for name, img in outputs.items():
                    details.append({
                        "system": name, "source": s, "target": f"{drive}/{t:03d}",
                        "psnr": psnr(truth, img), "ssim": ssim(truth, img),
                        "l1": float(np.abs(truth.astype(float) - img.astype(float)).mean() / 255)})
    return details


def _summarise(details: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(d["system"] for d in details):
        ds = [d for d in details if d["system"] == name]
        row = {"system": name, "pairs": len(ds)}
        for key, _, _ in COLUMNS[:-1]:
            vals = [d[key] for d in ds if key in d and math.isfinite(d[key])]
            if vals:
                row[key] = float(np.mean(vals))
        rows.append(row)
    return rows


def evaluate_real(model, args, device, scorer: FaceScorer) -> tuple[list[dict], list[dict]]:
    """Drive each --query with each --source; dlib landmark and identity metrics."""
    size = model.img_size
    details = []
    for qname in args.query:
        qpath, _ = resolve_query(qname, args.image_dir)
        q256 = read_rgb(qpath)
        q_lm = landmarks_for(qpath, "query")
        q_desc = scorer.descriptor(q256, q_lm)
        with torch.no_grad():
            app = model.appearance(_to_t([_resize(q256, size)], device),
                                   torch.from_numpy(q_lm)[None].to(device), args.mirror)
        for sname in args.source:
            src = resolve_source(sname, args.image_dir)
            frames = src.frames[: args.seq_frames] if args.seq_frames else src.frames
            lms = np.stack([landmarks_for(p, "source frame") for p in frames])
            targets = retarget(q_lm, lms) if args.retarget else lms
            for i in range(0, len(frames), args.batch):
                tl = torch.from_numpy(targets[i:i + args.batch].astype(np.float32)).to(device)
                with torch.no_grad():
                    out = model.render(model.select_appearance(app, 0, tl.shape[0]), tl)
                for k, img in enumerate(to_uint8(out)):
                    tgt = targets[i + k]
                    details.append({
                        "system": model_row(args.mirror) + (" (retarget)" if args.retarget
                                                            else ""),
                        "source": sname, "target": qname, "frame": i + k,
                        "lm_err": landmark_error(scorer.landmarks(img, tgt), tgt),
                        "id_dist": float(np.linalg.norm(scorer.descriptor(img, tgt) - q_desc))})
    return _summarise(details), details


def format_table(rows: list[dict]) -> str:
    keys = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| system | " + " | ".join(h for _, h, _ in keys) + " |",
             "|---|" + "|".join("---:" for _ in keys) + "|"]
    for r in rows:
        cells = [("" if k not in r else (f"{r[k]:.{dg}f}" if dg else str(int(r[k]))))
                 for k, _, dg in keys]
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(out: Path, rows: list[dict], details: list[dict], title: str,
          notes: list[str] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"- {n}\n" for n in notes)
    (out / "table.md").write_text(f"# {title}\n\n{format_table(rows)}\n"
                                  + (f"\n{lines}" if lines else ""))
    for name, data in (("metrics.csv", rows), ("details.csv", details)):
        keys = list(dict.fromkeys(k for d in data for k in d))
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(data)
    return out / "table.md"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"evaluate.py --model {RECIPE.NAME}",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("data", nargs="*", metavar="POSE_SET", help="synthetic pose-set roots")
    p.add_argument("--model", default=RECIPE.NAME, help=f"{RECIPE.NAME} (this evaluation)")
    p.add_argument("--checkpoint", required=True, help="file, or run name (CHECKPOINT_DIR/"
                   "NAME/last.pt)")
    p.add_argument("--checkpoint_dir", default="checkpoint",
                   help="root of checkpoints, for run names (default: checkpoint)")
    p.add_argument("--result_dir", default="result", help="root of results (default: result)")
    p.add_argument("--name", default=None, help="output folder under RESULT_DIR/eval "
                   "(default: the checkpoint's run name)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--pairs", type=positive_int, default=None, help="synthetic: first N source x target "
                   "pairs (default: all)")
    p.add_argument("--no_dlib", dest="dlib", action="store_false",
                   help="skip the dlib landmark and identity metrics")
    p.add_argument("--source", action="append", default=None, help="real: a driving sequence "
                   "IMAGE_DIR/source_img/NAME (repeatable)")
    p.add_argument("--query", action="append", default=None, help="real: a query (repeatable)")
    p.add_argument("--image_dir", default="image",
                   help="real: root of ref_img/ and source_img/ (default: image)")
    p.add_argument("--seq_frames", type=positive_int, default=None, help="real: first N frames")
    p.add_argument("--overwrite", action="store_true", help="replace RESULT_DIR/eval/NAME when "
                   "it holds an evaluation of another checkpoint or data (default: refuse)")
    p.add_argument("--retarget", action="store_true", help="real: retarget the landmarks")
    add_mirror_arg(p)
    p.add_argument("--no_drive", dest="drive", action="store_false",
                   help="synthetic: skip the driving rows (each held-out source driven by the "
                        "set's driving sequences with --retarget, against the exact answer)")
    p.add_argument("--batch", type=positive_int, default=16, help="real: frames per pass (default: 16)")
    p.add_argument("--lpips", metavar="FILE", default=None,
                   help="LPIPS against the exact answer, from a local file (as evaluate.py's; "
                        "docs/evaluate.md); without it the column is absent")
    p.add_argument("--arcface", metavar="FILE", default=None,
                   help="ArcFace CSIM to the source face, from a TorchScript embedding network; "
                        "without it the column is absent")
    p.add_argument("--syncnet", metavar="FILE", default=None,
                   help="accepted for symmetry: pose sets have no audio, so no LSE column "
                        "(a one-line note says so)")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    a = p.parse_args(argv)
    try:
        check_folder_flags(a)
        if not a.data and not (a.source and a.query):
            raise ValueError("give a pose set (python -m pose_flow.synthetic OUT) or --source "
                             "NAME --query NAME")
        for d in a.data:
            if not is_pose_set(d):
                raise ValueError(f"{d}: not a pose set (no pose manifest.json); make one with "
                                 "`python -m pose_flow.synthetic OUT`")
        from .field_metrics import FieldNets  # deferred: scipy.stats, see piecewise_affine_warp

        nets = FieldNets.load(a.lpips, a.arcface, a.syncnet)
        device = resolve_device(a.device)
        recipe = registry.get(a.model)
        ckpt = resolve_checkpoint(a.checkpoint, a.checkpoint_dir, recipe.DEFAULT_CHECKPOINT)
        name = a.name or (ckpt.parent.name if ckpt.name == "last.pt" else ckpt.stem)
        claim_output(Path(a.result_dir) / "eval" / name,
                     {"model": RECIPE.NAME, "checkpoint": str(ckpt.resolve()),
                      "data": [str(Path(d).resolve()) for d in a.data],
                      "sources": a.source, "queries": a.query}, a.overwrite,
                     "give --name NEW to keep both")
        model = registry.load_model(ckpt, device, expect=recipe.NAME)
        scorer = FaceScorer() if a.dlib or a.source else None
        rows, details = [], []
        examples: dict[str, list] = {}
        for d in a.data:
            r, dt = evaluate_synthetic(model, Path(d), device, scorer, a.pairs,
                                       examples if d == a.data[0] else None, nets, a.mirror)
            rows += r
            details += dt
            if a.drive:
                dt = evaluate_driving(model, Path(d), device, a.mirror)
                rows += _summarise(dt)
                details += dt
        if a.source and a.query:
            r, dt = evaluate_real(model, a, device, scorer)
            rows += r
            details += dt
        notes = ["field metrics: MS-SSIM on output and answer enlarged to 256 px; AKD (68 "
                 "points) and LMD (mouth, 48-67) in px at 256 between dlib's landmarks of "
                 "output and answer; dlib-CSIM (cosine of dlib descriptors, not ArcFace) to the "
                 "source face; sharpness = variance of the Laplacian of the whole grey face; "
                 "no temporal jitter (single images)"]
        if a.syncnet:
            notes.append("LSE-C/LSE-D: not computed: --syncnet needs audio and pose sets have "
                         "none")
        table = write(Path(a.result_dir) / "eval" / name, rows, details,
                      f"{RECIPE.NAME} evaluation: {name}", notes)
        report = _html(table.parent, name, examples, a, ckpt, argv)
    except (ValueError, CheckpointError, OSError) as exc:
        return error_exit(exc)
    print(format_table(rows))
    print(f"-> {table}\nreport: {report}")
    return 0


def _html(out: Path, name: str, examples: dict[str, list], a: argparse.Namespace, ckpt: Path,
          argv: list[str]) -> Path:
    """``report.html`` beside ``table.md``: the table, the first pairs beside the exact answer
    and the baselines (tiles of at least 128 px), the run's training curves."""
    sections = [Section("Scores", (out / "table.md").read_text().split("\n", 1)[-1])]
    if examples:
        order = ["copy source", "exact answer",
                 *(k for k in examples if k not in ("copy source", "exact answer"))]
        grid = comparison_grid({lab: np.stack(examples[lab]) for lab in order},
                               out / "compare_grid.png", columns=EXAMPLES)
        sections.append(Section(
            "Pose transfers beside the answer and the baselines",
            "Columns: the first source x target pairs; rows: the source (= copying it, a "
            "baseline), the exact answer, then each system. Tiles enlarged by pixel "
            "repetition.", [(grid, "pose transfers")]))
    run_dir = Run.of_checkpoint(ckpt, a.result_dir).samples
    media = [(run_dir / n, f"{n} of {run_dir.name}") for n in ("loss.png", "diagnostics.png")
             if (run_dir / n).is_file()]
    if media:
        sections.append(Section("Training", "", media))
    return write_html(out, f"{RECIPE.NAME} evaluation: {name}", sections,
                      command_line("evaluate.py", argv))
