"""A synthetic pose set with exact landmarks and the exact answer of every pose transfer.

``python -m pose_flow.synthetic OUT [--identities 24 --clips 2 --frames 8 --size 64 ...]``
writes (faces from :mod:`synthface`, posed by :mod:`synthface.pose`)::

    OUT/train/idNNN/clipMM/FFF.png (+ FFF.npy)   training identities, random pose and mouth
    OUT/eval/sources/evNN.png (+ .npy)           held-out identities, one source frame each
    OUT/eval/targets/tNN.png (+ .npy)            held-out target identities at target poses
    OUT/eval/truth/evNN/tNN.png (+ .npy)         identity evNN at target tNN's pose and mouth:
                                                 the true answer of that transfer
    OUT/image/ref_img/evNN_SIZE.png (+ .npy)     the sources again, as test.py queries
    OUT/image/source_img/driveNN/000.png (+ .npy, fps.txt)  driving sequences: a held-out
                                                 identity turning, tilting and talking
    OUT/manifest.json                            seed, identities, every pose and mouth

Landmarks are ``float32 [68, 2]`` ``(x, y)`` in 0..1, exact for the drawn face. Held-out
identities never appear in ``train/``. Re-running with the same options reuses the set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cliargs import add_no_progress, model_size, nonnegative_int, positive_int, seed
from faces.io import write_image
from synthface.face import Identity, MouthState, sample_identity
from synthface.landmarks import face_landmarks
from synthface.output import replacing
from synthface.pose import HeadPose, pose_map, render_posed, sample_pose

from .preprocess import save_landmarks

FORMAT = "flowdisentangle-pose-synthetic/1"
FPS = 25


@dataclass
class PoseSetConfig:
    """Options of ``python -m pose_flow.synthetic`` (see ``--help``)."""

    out: str
    identities: int = 24
    clips: int = 2
    frames: int = 8
    size: int = 64
    eval_identities: int = 4
    targets: int = 4
    drive: int = 1
    drive_frames: int = 16
    seed: int = 0

    def key(self) -> dict:
        d = asdict(self)
        d.pop("out")
        return d


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _mouth(rng: np.random.Generator) -> MouthState:
    return MouthState(round(float(rng.uniform(0, 1) ** 1.5), 4), round(float(rng.uniform(-1, 1)), 4))


def _write(path: Path, ident: Identity, mouth: MouthState, pose: HeadPose, size: int) -> None:
    img, lm = render_posed(ident, mouth, pose, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, img)  # temporary name + rename, as every frame writer
    save_landmarks(path.with_suffix(".npy"), lm)


def _frame(ident: str, mouth: MouthState, pose: HeadPose) -> dict:
    return {"identity": ident, "mouth": [mouth.open, mouth.width], "pose": pose.to_dict()}


def build_manifest(cfg: PoseSetConfig) -> dict:
    for name in ("identities", "clips", "frames", "size", "eval_identities", "targets"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if cfg.identities < 2:
        raise ValueError("--identities must be at least 2 (the quadruplet loss needs two)")
    ids: dict[str, dict] = {}
    names = {"train": [f"id{i:03d}" for i in range(cfg.identities)],
             "eval": [f"ev{i:02d}" for i in range(cfg.eval_identities)],
             "target": [f"tg{i:02d}" for i in range(cfg.targets)],
             "drive": [f"dr{i:02d}" for i in range(cfg.drive)]}
    for stream, group in enumerate(("train", "eval", "target", "drive"), start=1):
        for i, n in enumerate(names[group]):
            ids[n] = sample_identity(_rng(cfg.seed, stream, i)).to_dict()
    train = []
    for i, n in enumerate(names["train"]):
        for c in range(cfg.clips):
            rng = _rng(cfg.seed, 10, i, c)
            train.append({"folder": f"train/{n}/clip{c:02d}", "frames": [
                _frame(n, _mouth(rng), sample_pose(rng)) for _ in range(cfg.frames)]})
    sources = {n: _frame(n, _mouth(_rng(cfg.seed, 11, i)),
                         sample_pose(_rng(cfg.seed, 12, i), 0.5))
               for i, n in enumerate(names["eval"])}
    targets = {f"t{i:02d}": _frame(n, _mouth(_rng(cfg.seed, 13, i)),
                                   sample_pose(_rng(cfg.seed, 14, i)))
               for i, n in enumerate(names["target"])}
    drives = {}
    for i, n in enumerate(names["drive"]):
        rng = _rng(cfg.seed, 15, i)
        ph = rng.uniform(0, 2 * math.pi, 3)
        seq = []
        for t in range(cfg.drive_frames):
            u = t / max(cfg.drive_frames - 1, 1)
            pose = HeadPose(yaw=round(0.45 * math.sin(2 * math.pi * u + ph[0]), 4),
                            roll=round(0.15 * math.sin(2 * math.pi * u + ph[1]), 4),
                            scale=1.0, tx=round(0.03 * math.sin(2 * math.pi * u + ph[2]), 4))
            mouth = MouthState(round(0.5 + 0.5 * math.sin(6 * math.pi * u), 4), 0.0)
            seq.append(_frame(n, mouth, pose))
        drives[f"drive{i:02d}"] = seq
    manifest = {"format": FORMAT, "config": cfg.key(), "identities": ids, "groups": names,
                "train": train, "sources": sources, "targets": targets, "drives": drives}
    return json.loads(json.dumps(manifest))


def _get(m: dict, frame: dict, override_identity: str | None = None):
    ident = Identity.from_dict(m["identities"][override_identity or frame["identity"]])
    return ident, MouthState(*frame["mouth"]), HeadPose.from_dict(frame["pose"])


def driven_truth(m: dict, source: str, drive: str, t: int,
                 landmarks: np.ndarray | None = None) -> tuple[Identity, MouthState, HeadPose]:
    """What ``test.py --source DRIVE SOURCE --retarget`` should draw at frame ``t``: held-out
    identity ``source`` with its own mouth moved by the driver's mouth change since its first
    frame (opening and width added, kept in range), at its own pose moved by the driver's pose
    change (yaw, roll, translation added, scale multiplied). ``--retarget`` moves landmarks in
    the image plane, which a turned head does not follow exactly; given the retargeted
    ``landmarks`` [68, 2], the pose is instead the one whose exact landmarks fit them best
    (least squares from that start), so the answer matches the condition every system gets."""
    q = m["sources"][source]
    ident, mouth_q, pose_q = _get(m, q)
    seq = m["drives"][drive]
    _, m0, p0 = _get(m, seq[0])
    _, mt, pt = _get(m, seq[t])
    pose = HeadPose(yaw=float(np.clip(pose_q.yaw + pt.yaw - p0.yaw, -0.9, 0.9)),
                    roll=pose_q.roll + pt.roll - p0.roll,
                    scale=pose_q.scale * pt.scale / p0.scale,
                    tx=pose_q.tx + pt.tx - p0.tx, ty=pose_q.ty + pt.ty - p0.ty)
    mouth = MouthState(float(np.clip(mouth_q.open + mt.open - m0.open, 0, 1)),
                       float(np.clip(mouth_q.width + mt.width - m0.width, -1, 1)))
    if landmarks is not None:
        pose = fit_pose(ident, mouth, landmarks, pose)
    return ident, mouth, pose


def fit_pose(ident: Identity, mouth: MouthState, landmarks: np.ndarray,
             start: HeadPose) -> HeadPose:
    """The pose whose exact landmarks of ``ident`` with ``mouth`` are nearest ``landmarks``
    [68, 2] in [0, 1] (least squares from ``start``; |yaw| kept below 0.95)."""
    from scipy.optimize import least_squares  # deferred: only the driving evaluation needs it

    frontal = face_landmarks(ident, mouth)
    target = np.asarray(landmarks, dtype=np.float64)

    def residual(v: np.ndarray) -> np.ndarray:
        pose = HeadPose(yaw=v[0], roll=v[1], scale=v[2], tx=v[3], ty=v[4])
        return (pose_map(frontal, ident, pose) - target).ravel()

    v0 = np.array([start.yaw, start.roll, start.scale, start.tx, start.ty])
    lo = np.array([-0.95, -np.pi / 2, 0.5, -0.5, -0.5])
    hi = np.array([0.95, np.pi / 2, 2.0, 0.5, 0.5])
    v = least_squares(residual, np.clip(v0, lo + 1e-6, hi - 1e-6), bounds=(lo, hi)).x
    return HeadPose(*(round(float(x), 6) for x in v))


def generate(cfg: PoseSetConfig, force: bool = False, log=print) -> dict:
    """Write the set (or reuse it when ``OUT/manifest.json`` has the same options).

    A pose set made with other options is replaced whole once the new one is complete
    (:func:`synthface.output.replacing`); any other non-empty folder is refused, never
    written into."""
    final = Path(cfg.out)
    manifest = build_manifest(cfg)
    mpath = final / "manifest.json"
    if not force and mpath.is_file():
        try:
            if json.loads(mpath.read_text()).get("config") == manifest["config"]:
                log(f"{final}: pose set up to date")
                return manifest
        except (ValueError, AttributeError):
            pass
    with replacing(final, is_pose_set, "pose set") as out:
        _write_set(manifest, out, cfg)
    n = sum(len(c["frames"]) for c in manifest["train"])
    log(f"{final}: {n} training frames of {cfg.identities} identities, "
        f"{len(manifest['sources'])} x {len(manifest['targets'])} transfers with ground truth")
    return manifest


def _write_set(manifest: dict, out: Path, cfg: PoseSetConfig) -> None:
    mpath = out / "manifest.json"
    size = cfg.size
    for clip in manifest["train"]:
        for k, fr in enumerate(clip["frames"]):
            _write(out / clip["folder"] / f"{k:03d}.png", *_get(manifest, fr), size)
    for s, fr in manifest["sources"].items():
        _write(out / "eval" / "sources" / f"{s}.png", *_get(manifest, fr), size)
        _write(out / "image" / "ref_img" / f"{s}_{size}.png", *_get(manifest, fr), size)
    for t, fr in manifest["targets"].items():
        _write(out / "eval" / "targets" / f"{t}.png", *_get(manifest, fr), size)
        for s in manifest["sources"]:
            _write(out / "eval" / "truth" / s / f"{t}.png", *_get(manifest, fr, s), size)
    for name, seq in manifest["drives"].items():
        folder = out / "image" / "source_img" / name
        for k, fr in enumerate(seq):
            _write(folder / f"{k:03d}.png", *_get(manifest, fr), size)
        (folder / "fps.txt").write_text(f"{FPS}\n")
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")


def is_pose_set(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pose_flow.synthetic",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder: new or empty, or a pose set (replaced once the "
                   "new one is complete); any other folder is refused")
    for f, d, h in (("identities", 24, "training identities"), ("clips", 2, "clips each"),
                    ("frames", 8, "frames per clip"), ("size", 64, "image size (px)"),
                    ("eval_identities", 4, "held-out source identities"),
                    ("targets", 4, "held-out target frames (each its own identity)"),
                    ("drive", 1, "driving sequences"), ("drive_frames", 16, "their length"),
                    ("seed", 0, "random seed")):
        kind = {"size": model_size, "seed": seed, "drive": nonnegative_int}.get(f, positive_int)
        p.add_argument(f"--{f}", type=kind, default=d, help=f"{h} (default: {d})")
    p.add_argument("--force", action="store_true", help="rewrite even when up to date")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    a = p.parse_args(argv)
    cfg = PoseSetConfig(**{k: v for k, v in vars(a).items() if k not in ("force", "progress")})
    try:
        generate(cfg, a.force)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
