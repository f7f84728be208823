"""The pose flow's part of the demo: make the synthetic pose set, train, drive a held-out query
with a held-out driving sequence, draw the transfer grid and evaluate, all through the scripts'
own ``main(argv)``. ``run`` returns ``{"grid", "table", "seconds", ...}``; work already done
(same set, a finished checkpoint) is reused."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.checkpoint import load_checkpoint

from .synthetic import main as synth_main

ROOT = Path(__file__).resolve().parents[1]
RUN = "demo_pose"


@dataclass
class PosePlan:
    size: int
    identities: int
    frames: int
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval_identities: int = 3
    targets: int = 3
    drive_frames: int = 12


# About two minutes on 2 CPU cores: a 32 px warp-residual flow with one header block (the
# anchor's 64 px layout with 16 flows per block is far beyond a demo's budget; the anchor's own
# model, --reference none, draws noise-like faces at this budget: docs/pose_flow.md).
WARP = dict(reference="warp", additive=True, recc_weight=30)
FULL = PosePlan(size=32, identities=16, frames=6,
                model=dict(n_flow=2, n_block=3, n_header=1, hidden=32, **WARP),
                train=dict(iter=300, batch=4, lr=1e-3))
# The longer recipe (bench/pose_flow_seeds.py; docs/pose_flow.md): 16x the demo's identities and
# 20x its iterations, about 18 min a run on 2 cores; the split latents of the self
# reconstruction at their prior means (--recon_temp 0), which keeps the run free of the
# non-finite steps that temperature 0.7's draws caused.
LONG = PosePlan(size=32, identities=256, frames=6,
                model=dict(n_flow=2, n_block=3, n_header=1, hidden=32, **WARP, recon_temp=0),
                train=dict(iter=6000, batch=4, lr=1e-3))
TINY = PosePlan(size=16, identities=3, frames=3, eval_identities=1, targets=2, drive_frames=3,
                model=dict(n_flow=1, n_block=2, n_header=1, hidden=8, **WARP),
                train=dict(iter=2, batch=2, lr=1e-3))


def _cli(name: str):
    spec = importlib.util.spec_from_file_location(f"_pose_demo_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def flags(d: dict) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        if k == "additive":  # a switch: the config's ``affine`` is its negation
            out += ["--additive"] if v else []
        else:
            out += [f"--{k}", str(v)]
    return out


def _matches(saved: dict, plan: PosePlan) -> bool:
    """Whether a checkpoint's model config is this plan's."""
    want = {"img_size": plan.size, **plan.model}
    if "additive" in want:
        want["affine"] = not want.pop("additive")
    return all(saved.get(k) == v for k, v in want.items())


def run(out: Path, result_dir: Path, tiny: bool, say=print) -> dict:
    """Make the set under ``out/pose_synthetic``, train ``out/checkpoint/demo_pose``, write the
    driving outputs, the transfer grid and the evaluation under ``result_dir``. A failing step
    is a ``ValueError`` naming it (the scripts print their own one-line errors)."""
    plan = TINY if tiny else FULL
    t0 = time.perf_counter()
    out, result_dir = Path(out), Path(result_dir)
    data = out / "pose_synthetic"
    ckpt_dir = out / "checkpoint"
    rc = synth_main([str(data), "--identities", str(plan.identities), "--clips", "2",
                     "--frames", str(plan.frames), "--size", str(plan.size),
                     "--eval_identities", str(plan.eval_identities), "--targets",
                     str(plan.targets), "--drive_frames", str(plan.drive_frames)])
    if rc:
        raise ValueError("pose set generation failed")
    ckpt = ckpt_dir / RUN / "last.pt"
    reused = False
    if ckpt.is_file():
        try:
            c = load_checkpoint(ckpt)
            reused = c["step"] >= plan.train["iter"] and _matches(c["config"]["model"], plan)
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply retrained
            reused = False
    if reused:
        say(f"[pose-flow] reused {ckpt}")
    else:
        rc = _cli("train")(["--model", "pose-flow", "-n", RUN, str(data), "--img_size",
                            str(plan.size), *flags(plan.model), *flags(plan.train),
                            "--workers", "0", "--no_progress", "--sample_every",
                            str(plan.train["iter"]), "--checkpoint_dir", str(ckpt_dir),
                            "--result_dir", str(result_dir), "--device", "cpu", "--force"])
        if rc:
            raise ValueError("pose-flow training failed")
    image = data / "image"
    query = sorted((image / "ref_img").glob("*.png"))[0]
    drive = sorted(d for d in (image / "source_img").iterdir() if d.is_dir())[0]
    pose_results = result_dir / "pose-flow"
    common = ["--model", "pose-flow", "--checkpoint", str(ckpt), "--result_dir",
              str(pose_results), "--device", "cpu"]
    test_main = _cli("test")
    if test_main([*common, "--source", str(drive), str(query), "--no_progress",
                  "--out_size", str(4 * plan.size)]):
        raise ValueError("pose-flow driving failed")
    if test_main([*common, "--transfer_grid", str(data / "eval" / "sources"),
                  str(data / "eval" / "targets"), "--out_size", str(4 * plan.size)]):
        raise ValueError("pose-flow transfer grid failed")
    if _cli("evaluate")(["--model", "pose-flow", str(data), "--checkpoint", str(ckpt),
                         "--result_dir", str(result_dir), "--name", RUN, "--device", "cpu"]):
        raise ValueError("pose-flow evaluation failed")
    table = (result_dir / "eval" / RUN / "table.md").read_text()
    video_dir = pose_results / "target_img" / drive.name
    video = next(video_dir.glob("*/video.mp4"), None)
    seconds = time.perf_counter() - t0
    say(f"[pose-flow] {seconds:.0f} s; grid {pose_results / 'transfer_grid' / 'grid.png'}")
    return {"grid": pose_results / "transfer_grid" / "grid.png",
            "table": table.split("\n", 2)[-1].strip(), "seconds": seconds,
            "video": video, "reused": reused, "eval": result_dir / "eval" / RUN}
