"""Landmark files for the pose flow (``preprocess.py --landmarks DATA`` / ``--from_video``).

* ``--landmarks DATA``: for every frame ``DATA/.../FRAME.{png,jpg}`` without ``FRAME.npy``
  (or for one image: ``--landmarks FRAME.png`` writes ``FRAME.npy`` and touches nothing else),
  detect the face with :mod:`faces` (dlib) and write its 68 landmarks normalised to [0, 1]
  (``float32 [68, 2]``, x by the width, y by the height). Resumable (existing files are kept,
  frames already found faceless are listed in ``DATA/.no_face.txt`` and not retried without
  ``--force``), parallel (``--workers``), frames without a detectable face skipped and counted.
* ``--from_video VIDEOS --out DATA``: ``VIDEOS/IDENTITY/*.mp4`` (or any video cv2 reads) ->
  aligned, smoothed crops ``DATA/IDENTITY/VIDEO/NNNNN.png`` at ``--size`` with their landmarks
  (the tracked landmarks mapped into the crop); frames without a detection are not written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cliargs import add_no_progress, image_size, os_error_line, positive_int
from faces.align import apply_transform
from faces.io import read_image, umask_mode, write_image
from faces.landmarks import LandmarkDetector, ModelFileError
from faces.sequence import crops_of, plan_sequence
from lrw.video import VideoReader

from .data import IMAGE_EXTENSIONS, landmark_path, read_landmarks

NO_FACE = ".no_face.txt"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")



DONE_MARK = "ok anchor=head\n"
"""A converted video's ``.done`` marker: its crops follow the head (``faces.sequence``). A
folder whose marker says otherwise (``ok``: cut around each frame's mouth, before) is cut
again, so one set never mixes the two framings."""


def _done(folder: Path) -> bool:
    """Whether ``folder`` holds a finished conversion with today's crops."""
    try:
        return (folder / ".done").read_text() == DONE_MARK
    except OSError:
        return False

def save_landmarks(path: Path, lm: np.ndarray) -> None:
    """Write ``lm`` atomically (a crash never leaves a truncated .npy behind)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        umask_mode(fd)
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(lm, dtype=np.float32))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def normalised_landmarks(image: np.ndarray, detector) -> np.ndarray | None:
    """Landmarks ``[68, 2]`` in [0, 1] of the largest face in RGB ``image``, or None."""
    det = detector.detect(image, warn=False)
    if det is None:
        return None
    h, w = image.shape[:2]
    # points dlib puts just past the image's edge are clipped: landmark files hold [0, 1]
    return np.clip(det.landmarks / np.array([w, h], dtype=np.float64), 0, 1).astype(np.float32)


_WORKER: dict = {}


def _init(predictor: str | None, detect_width: int) -> None:
    _WORKER["det"] = LandmarkDetector(predictor, detect_width)


def _one(path: str) -> tuple[str, str]:
    """-> (path, "ok" | "no_face" | "unreadable")."""
    try:
        image = read_image(path)
    except (OSError, ValueError):
        return path, "unreadable"
    lm = normalised_landmarks(image, _WORKER["det"])
    if lm is None:
        return path, "no_face"
    save_landmarks(landmark_path(Path(path)), lm)
    return path, "ok"


def frames_under(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return out


def landmark_folder(root: str | Path, workers: int = 1, force: bool = False,
                    predictor: str | None = None, detect_width: int = 640,
                    say=print) -> dict[str, int]:
    """Write the missing ``FRAME.npy`` files under ``root``; returns counts
    ``{frames, existing, written, no_face, unreadable, retried_bad}``. ``root`` may also be
    one image: then only its ``.npy`` is written (no ``.no_face.txt``)."""
    root = Path(root)
    single = root.is_file() and root.suffix.lower() in IMAGE_EXTENSIONS
    if not single and not root.is_dir():
        raise ValueError(f"{root}: no such folder or image (--landmarks DATA takes the root of "
                         "DATA/IDENTITY/CLIP/FRAME.png, or one FRAME.png)")
    frames = [root] if single else frames_under(root)
    if not frames:
        raise ValueError(f"{root}: no .png/.jpg frames found")
    base = root.parent if single else root
    no_face_file = base / NO_FACE
    known_bad = set() if single or force or not no_face_file.is_file() else set(
        no_face_file.read_text().split("\n"))
    counts = {"frames": len(frames), "existing": 0, "written": 0, "no_face": 0,
              "unreadable": 0, "retried_bad": 0}
    todo = []
    for f in frames:
        lm, reason = read_landmarks(landmark_path(f))
        if lm is not None and not force:
            counts["existing"] += 1
        elif str(f.relative_to(base)) in known_bad:
            counts["no_face"] += 1
        else:
            counts["retried_bad"] += reason in ("shape", "nan", "unreadable", "range")
            todo.append(str(f))
    bad = set(known_bad) if not force else set()
    if todo:
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_init,
                                     initargs=(predictor, detect_width)) as ex:
                results = list(ex.map(_one, todo, chunksize=8))
        else:
            _init(predictor, detect_width)
            results = [_one(p) for p in todo]
        for path, status in results:
            key = "written" if status == "ok" else status
            counts[key] += 1
            if status != "ok":
                bad.add(str(Path(path).relative_to(base)))
    bad.discard("")
    if bad and not single:
        no_face_file.write_text("\n".join(sorted(bad)) + "\n")
    say(f"{root}: {counts['written']} landmark files written, {counts['existing']} already "
        f"there, {counts['no_face']} frames without a detectable face and "
        f"{counts['unreadable']} unreadable skipped"
        + ("" if single else f" (listed in {no_face_file.name})"))
    return counts


def from_videos(videos: str | Path, out: str | Path, size: int = 64, smooth: int = 5,
                detect_every: int = 2, predictor: str | None = None,
                say=print) -> dict[str, int]:
    """``VIDEOS/IDENTITY/VIDEO.ext`` -> ``OUT/IDENTITY/VIDEO/NNNNN.png`` + ``.npy``.

    Each video is streamed in two passes (``faces.sequence.plan_sequence``/``crops_of``: one
    decoded frame in memory at a time) into a temporary folder that is moved into place with
    its ``.done`` marker; an unreadable, truncated or faceless video is a counted failure that
    leaves nothing behind and is tried again next time."""
    videos, out = Path(videos), Path(out)
    if not videos.is_dir():
        raise ValueError(f"--from_video {videos}: no such folder (expected "
                         "VIDEOS/IDENTITY/VIDEO.mp4)")
    detector = LandmarkDetector(predictor)
    counts = {"videos": 0, "frames": 0, "skipped": 0, "failed": 0}
    done_before = 0
    for ident in sorted(d for d in videos.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for video in sorted(v for v in ident.iterdir() if v.suffix.lower() in VIDEO_EXTENSIONS):
            folder = out / ident.name / video.stem
            if _done(folder):
                counts["videos"] += 1
                done_before += 1
                continue
            tmp = folder.parent / f".{folder.name}.part{os.getpid()}"
            try:
                reader = VideoReader(video)
                plan = plan_sequence(reader, detector, smooth=smooth, detect_every=detect_every)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                frames = skipped = 0
                for i, (crop, matrix) in enumerate(crops_of(reader, plan, size)):
                    lm = plan.landmarks[i]
                    if lm is None:
                        skipped += 1
                        continue
                    pts = np.clip(apply_transform(np.asarray(lm), matrix) / size, 0, 1)
                    write_image(tmp / f"{i:05d}.png", crop)
                    save_landmarks(tmp / f"{i:05d}.npy", pts)
                    frames += 1
                (tmp / ".done").write_text(DONE_MARK)
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(tmp, folder)
            except (ValueError, OSError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                say(f"warning: {video}: {exc}; skipped")
                counts["failed"] += 1
                continue
            counts["frames"] += frames
            counts["skipped"] += skipped
            counts["videos"] += 1
    if counts["videos"] == 0:
        raise ValueError(f"--from_video {videos}: no readable video in any IDENTITY folder")
    if counts["frames"] == 0 and done_before == 0:  # nothing came out: a failed job
        raise ValueError(f"--from_video {videos}: no frame of any video had a detectable face "
                         f"({counts['skipped']} frames without one); give videos of frontal "
                         "faces")
    say(f"{out}: {counts['frames']} aligned frames with landmarks from {counts['videos']} "
        f"videos ({counts['skipped']} frames without a face skipped, {counts['failed']} videos "
        "failed)")
    return counts


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="preprocess.py", description="Landmark files for "
                                "train.py --model pose-flow.", allow_abbrev=False)
    p.add_argument("--landmarks", metavar="DATA", help="write FRAME.npy beside every frame of "
                   "DATA/IDENTITY/CLIP/ (a folder; a .dat file here is the predictor)")
    p.add_argument("--from_video", metavar="VIDEOS",
                   help="aligned frames and landmarks from VIDEOS/IDENTITY/VIDEO.mp4 (needs --out)")
    p.add_argument("--out", metavar="DATA", help="--from_video: output root")
    p.add_argument("--size", type=image_size, default=64, help="--from_video: crop size (default: 64)")
    p.add_argument("--smooth", type=positive_int, default=5, help="--from_video: temporal smoothing "
                   "window of the crop (default: 5)")
    p.add_argument("--detect_every", type=positive_int, default=2,
                   help="--from_video: run the detector every N frames (default: 2)")
    p.add_argument("--predictor", default=None, help="dlib 68-point .dat file (default: the "
                   "one shipped by face_recognition_models)")
    p.add_argument("--workers", type=positive_int, default=1, help="--landmarks: processes (default: 1)")
    p.add_argument("--detect_width", type=image_size, default=640, help="detect on a copy this wide")
    p.add_argument("--force", action="store_true", help="--landmarks: recompute every file")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    try:
        a = p.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if a.from_video:
            if not a.out:
                raise ValueError("--from_video needs --out DATA (where the frames go)")
            from_videos(a.from_video, a.out, a.size, a.smooth, a.detect_every, a.predictor)
            return 0
        if not a.landmarks:
            raise ValueError("give --landmarks DATA or --from_video VIDEOS --out DATA")
        counts = landmark_folder(a.landmarks, max(1, a.workers), a.force, a.predictor,
                                 a.detect_width)
        if counts["existing"] + counts["written"] == 0:
            raise ValueError(f"{a.landmarks}: no frame had a detectable face")
        return 0
    except (ValueError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1


def wants(argv: list[str]) -> bool:
    """True when ``preprocess.py``'s argv is for this module: ``--from_video``, or
    ``--landmarks`` naming a folder (the existing ``--landmarks FILE.dat`` stays the predictor)."""
    for i, a in enumerate(argv):
        key, _, value = a.partition("=")
        if key == "--from_video":
            return True
        if key == "--landmarks":
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            # a folder, an image, or a missing path that is not a .dat predictor file: ours
            if value and (Path(value).is_dir() or Path(value).suffix.lower() in IMAGE_EXTENSIONS
                          or (not Path(value).is_file() and not value.endswith(".dat"))):
                return True
    return False
