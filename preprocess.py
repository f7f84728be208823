"""Prepare faces for the models: aligned query photos, driving sequences, LRW conversion.

Three modes (see ``python preprocess.py --help`` and docs/preprocess.md):

* photos:   ``python preprocess.py PHOTO_OR_FOLDER ...``  -> ``IMAGE_DIR/ref_img/STEM_256.jpg``
            and its alignment record ``STEM_256.json`` (for ``test.py --full_frame``)
* sequence: ``python preprocess.py --source NAME VIDEO_OR_FRAME_FOLDER``
            -> ``IMAGE_DIR/source_img/NAME/000.jpg ...`` and ``fps.txt``
* LRW:      ``python preprocess.py --lrw LRW_ROOT --out DATA_DIR``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cliargs import MAX_SIZE, add_no_progress, image_size, os_error_line, positive, positive_int
from content_ae.celeba import cli as celeba_cli
from faces.align import align_face
from faces.io import find_images, read_image, write_bytes_atomic, write_image
from faces.landmarks import ModelFileError, shared_detector
from faces.sequence import ANCHORS
from lrw.convert import convert_lrw
from lrw.video import TruncatedVideoError
from pose_flow.preprocess import cli as pose_cli
from pose_flow.preprocess import wants
from talking.video_source import open_frames, write_sequence
from training.cli import check_folder

EXAMPLES = """\
examples:
  python preprocess.py photos/me.jpg photos/friends/
      align every photo to image/ref_img/STEM_256.jpg (folders are walked), with the
      alignment record STEM_256.json beside it (test.py --full_frame pastes back with it)
  python preprocess.py --source ellen clips/ellen.mp4
      driving sequence image/source_img/ellen/000.jpg, 001.jpg, ... plus fps.txt
  python preprocess.py --source ellen frames/ellen/ --fps 30
      the same from a folder of frames, ordered by the number in each name
  python preprocess.py --lrw datasets/lrw --out data/lrw --split train --workers 2
      convert the LRW release to the frame folders train.py reads
  python preprocess.py --landmarks data/vox --workers 2
      FRAME.npy (68 landmarks in [0, 1]) beside every frame of data/vox/ID/CLIP/ for
      train.py --model pose-flow (resumable; faceless frames skipped and counted)
  python preprocess.py --from_video videos/ --out data/vox --size 64
      aligned frames and landmarks from videos/ID/VIDEO.mp4 (see --from_video x --help)
  python preprocess.py --celeba datasets/celeba --attr Eyeglasses --out data/glasses
      CelebA as an A/B set for train.py --model content-ae (--attr beard, --negate,
      --attr_from FILE.csv PHOTO_FOLDER; see python preprocess.py --celeba x --help)

exit status: 0 when everything worked, 1 when a photo failed, no frame had a face or the
LRW conversion failed, 2 for bad arguments.
"""


@dataclass
class PreprocessConfig:
    """Resolved options of one preprocess.py run (``--dry-run`` prints it)."""

    paths: list[str]
    source: str | None = None
    lrw: str | None = None
    out: str | None = None
    split: str = "train"
    workers: int = 1
    image_dir: str = "image"
    size: int = 256
    landmarks: str | None = None
    detect_width: int = 640
    fps: float = 25.0
    smooth: int = 5
    anchor: str = "head"
    detect_every: int = 2
    border: str = "reflect"
    progress: bool = True

    @property
    def mode(self) -> str:
        if self.lrw is not None:
            return "lrw"
        return "source" if self.source is not None else "photos"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="preprocess.py",
        description="Detect, landmark and align faces to the 256x256 crop the models use "
                    "(mouth centre at (128, 160), mouth 43 px wide, eyes level).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="photos or folders of photos; with --source: one video file or one "
                        "folder of frames")
    mode = p.add_argument_group("modes (default: align photos)")
    mode.add_argument("--source", metavar="NAME",
                      help="build the driving sequence IMAGE_DIR/source_img/NAME/ from a video "
                           "or frame folder")
    mode.add_argument("--lrw", metavar="LRW_ROOT",
                      help="convert the LRW release at LRW_ROOT (needs --out)")
    io = p.add_argument_group("output")
    io.add_argument("--image_dir", default="image",
                    help="root of ref_img/ and source_img/ (default: %(default)s, relative to "
                         "the current directory)")
    io.add_argument("--size", type=image_size, default=256,
                    help=f"output side in pixels, 32 to {MAX_SIZE}; the crop geometry scales "
                         "with it (default: %(default)s)")
    io.add_argument("--out", metavar="DATA_DIR", help="--lrw: where the converted data goes")
    io.add_argument("--split", default="train", help="--lrw: which split (default: %(default)s)")
    io.add_argument("--workers", type=positive_int, default=1,
                    help="--lrw: parallel processes (default: %(default)s)")
    det = p.add_argument_group("detection and alignment")
    det.add_argument("--landmarks", metavar="PATH",
                     help="dlib 68-point .dat file (default: the one shipped by "
                          "face_recognition_models)")
    det.add_argument("--detect_width", type=image_size, default=640,
                     help="detect faces on a copy this wide (landmarks use full resolution); "
                          "raise it for small faces in large photos (default: %(default)s)")
    det.add_argument("--border", choices=("reflect", "replicate", "constant"),
                     default="reflect",
                     help="fill for crop pixels outside the photo (default: %(default)s)")
    seq = p.add_argument_group("sequences (--source)")
    seq.add_argument("--fps", type=positive, default=25.0,
                     help="frame rate written to fps.txt for a frame folder, or for a video "
                          "that does not state one (default: %(default)s)")
    seq.add_argument("--smooth", type=positive_int, default=5,
                     help="moving-average window over time for the crop, in frames; 1 turns "
                          "smoothing off (default: %(default)s)")
    seq.add_argument("--anchor", choices=ANCHORS, default="head",
                     help="what the crops follow: head (the eyes' position and distance, so "
                          "the mouth's opening and width stay in the frames) or mouth (each "
                          "frame cropped around its mouth, as a photo is: a spreading mouth is "
                          "scaled back to a fixed width) (default: %(default)s)")
    seq.add_argument("--detect_every", type=positive_int, default=2,
                     help="run the face detector every N frames and follow the face in "
                          "between (default: %(default)s)")
    misc = p.add_argument_group("misc")
    add_no_progress(misc, "no progress bars")
    misc.add_argument("--dry-run", action="store_true",
                      help="print the resolved configuration and exit")
    return p


def parse_config(argv: list[str] | None) -> tuple[PreprocessConfig, bool]:
    """Parse ``argv`` into a config; raises ``SystemExit`` (argparse) on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lrw is not None and args.source is not None:
        parser.error("choose one of --lrw and --source")
    if args.lrw is not None:
        if args.paths:
            parser.error("--lrw takes no PATH arguments (the root is the value of --lrw)")
        if not args.out:
            parser.error("--lrw needs --out DATA_DIR (where the converted clips go)")
    elif args.source is not None:
        if len(args.paths) != 1:
            parser.error("--source NAME takes exactly one video file or frame folder")
        if not args.source or re.search(r"[/\\]", args.source) or args.source in (".", ".."):
            parser.error(f"--source {args.source!r}: NAME must be a plain folder name")
    elif not args.paths:
        parser.error("give photos or folders to align, or --source NAME VIDEO, "
                     "or --lrw LRW_ROOT --out DATA_DIR")
    for name in ("size", "detect_width", "workers", "smooth", "detect_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.size < 32:
        parser.error("--size must be at least 32 (the detector cannot find smaller faces)")
    if args.fps <= 0:
        parser.error("--fps must be positive")
    cfg = PreprocessConfig(
        paths=list(args.paths), source=args.source, lrw=args.lrw, out=args.out,
        split=args.split, workers=args.workers, image_dir=args.image_dir, size=args.size,
        landmarks=args.landmarks, detect_width=args.detect_width, fps=args.fps,
        smooth=args.smooth, anchor=args.anchor, detect_every=args.detect_every,
        border=args.border, progress=args.progress)
    return cfg, args.dry_run


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _detector(cfg: PreprocessConfig):
    # Cached per process: repeated main() calls (tests, notebooks) load the model once.
    return shared_detector(cfg.landmarks, detect_width=cfg.detect_width)


# -- photos -------------------------------------------------------------------------------------
def _output_stem(path: Path, size: int) -> str:
    stem = path.stem
    suffix = f"_{size}"
    # Re-aligning an already aligned NAME_256.jpg should not give NAME_256_256.jpg.
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def run_photos(cfg: PreprocessConfig) -> int:
    images, problems = find_images(cfg.paths)
    for problem in problems:
        _error(f"{problem} (check the path)")
    if not images:
        _error("no photos to align (give image files or folders holding .jpg/.png files)")
        return 1
    detector = _detector(cfg)
    out_dir = Path(cfg.image_dir) / "ref_img"
    failed = len(problems)
    used: set[str] = set()
    bar = tqdm(images, desc="aligning", unit="photo", file=sys.stderr,
               disable=not cfg.progress or len(images) < 10)
    for path in bar:
        try:
            image = read_image(path)
        except ValueError as err:
            tqdm.write(f"error: {err} (is it an image file?)", file=sys.stderr)
            failed += 1
            continue
        detection = detector.detect(image, warn=False)
        if detection is None:
            tqdm.write(f"error: {path}: no face found (use a photo with a frontal face; for a "
                       f"small face in a large photo raise --detect_width)", file=sys.stderr)
            failed += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligned = align_face(image, detection.landmarks, cfg.size, cfg.border, warn=False)
        stem = _output_stem(path, cfg.size)
        name, k = stem, 2
        notes = []
        # Never replace a query made from another photo (or by hand): take the next free name.
        while name in used or _made_from_another(out_dir / f"{name}_{cfg.size}.jpg", path):
            name, k = f"{stem}-{k}", k + 1
        if name != stem:
            notes.append(f"name taken in this batch, wrote {name}" if stem in used else
                         f"{stem}_{cfg.size}.jpg holds another face, wrote {name}")
        elif (out_dir / f"{name}_{cfg.size}.jpg").exists():
            notes.append("replaced its earlier alignment")
        used.add(name)
        out = write_image(out_dir / f"{name}_{cfg.size}.jpg", aligned.image)
        write_alignment_record(out, path, image.shape, aligned.matrix, cfg.size)
        if detection.several_faces:
            notes.append(f"{detection.n_faces} faces, took the largest")
        if aligned.upscaled:
            notes.append(f"upscaled x{aligned.scale:.1f}")
        tqdm.write(f"ok: {path} -> {out}" + (f" ({'; '.join(notes)})" if notes else ""))
    bar.close()
    done = len(images) + len(problems) - failed
    print(f"{done} of {len(images) + len(problems)} photos aligned into {out_dir}"
          + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def _made_from_another(crop: Path, photo: Path) -> bool:
    """True when ``crop`` exists and its alignment record names another photo (or it has no
    record: a query put there by hand or by an older version)."""
    if not crop.exists():
        return False
    try:
        record = json.loads(crop.with_suffix(".json").read_text())
        return record.get("photo_absolute") != str(Path(photo).resolve())
    except (OSError, ValueError, AttributeError):
        return True


def write_alignment_record(crop: Path, photo: Path, shape: tuple, matrix, size: int) -> Path:
    """``NAME_SIZE.json`` beside the crop: the original photo (its path relative to the
    record's folder and absolute), its size and the similarity transform from photo pixels to
    crop pixels (``test.py --full_frame`` pastes the face back into the photo with it)."""
    record = {
        "photo": os.path.relpath(Path(photo).resolve(), crop.parent.resolve()),
        "photo_absolute": str(Path(photo).resolve()),
        "photo_size": [int(shape[1]), int(shape[0])],
        "crop_size": int(size),
        "photo_to_crop": [[float(v) for v in row] for row in matrix],
    }
    return write_bytes_atomic(crop.with_suffix(".json"),
                              (json.dumps(record, indent=1) + "\n").encode())


# -- sequences ----------------------------------------------------------------------------------
def run_source(cfg: PreprocessConfig) -> int:
    """Streamed in two passes (talking.video_source): memory does not grow with the video."""
    src = Path(cfg.paths[0])
    try:
        frames = open_frames(src)
    except ValueError as err:
        _error(str(err))
        return 1
    if frames.video:
        fps, fps_note = (frames.fps, "fps from the video") if frames.fps else (
            cfg.fps, "the video states no frame rate, used --fps")
    else:
        fps, fps_note = cfg.fps, "fps from --fps"
    frames.fps = fps
    detector = _detector(cfg)
    start = time.perf_counter()
    out_dir = Path(cfg.image_dir) / "source_img" / cfg.source
    old = [p for p in out_dir.iterdir() if re.fullmatch(r"\d+\.jpg", p.name)] \
        if out_dir.is_dir() else []
    try:
        result = write_sequence(frames, out_dir, cfg.size, smooth=cfg.smooth,
                                detect_every=cfg.detect_every, border=cfg.border,
                                anchor=cfg.anchor,
                                detector=detector, progress=cfg.progress)
    except TruncatedVideoError as err:
        _error(str(err))
        return 1
    except ValueError as err:
        _error(f"{src}: {err} (is the face frontal and large enough? try a larger "
               f"--detect_width)")
        return 1
    seconds = time.perf_counter() - start
    notes = [result.report.summary(), f"{fps:g} fps ({fps_note})"]
    if old:
        notes.append(f"replaced {len(old)} old frames")
    print(f"ok: {src} -> {out_dir} ({'; '.join(notes)}; {seconds:.1f} s)")
    if result.report.missing:
        shown = ", ".join(str(i) for i in result.report.missing_frames[:20])
        more = "" if result.report.missing <= 20 else ", ..."
        print(f"note: frames without a face: {shown}{more}")
    return 0


# -- LRW ----------------------------------------------------------------------------------------
def run_lrw(cfg: PreprocessConfig) -> int:
    try:
        report = convert_lrw(cfg.lrw, cfg.out, split=cfg.split, workers=cfg.workers,
                             progress=cfg.progress)
    except ValueError as err:
        _error(str(err).splitlines()[0] if str(err) else "invalid LRW root")
        return 1
    if report.clips_total == 0:
        strays = (f"; ignored {report.strays} other file{'s' * (report.strays != 1)}"
                  if report.strays else "")
        _error(f"no .mp4 clips in {cfg.lrw} (expected lipread_mp4/WORD/{cfg.split}/"
               f"WORD_NNNNN.mp4{strays})")
        return 1
    failures = list(report.failures)
    for path, message in failures[:20]:
        print(f"failed: {path}: {message}", file=sys.stderr)
    if len(failures) > 20:
        print(f"... and {len(failures) - 20} more failures", file=sys.stderr)
    print(f"{report.clips_converted} of {report.clips_total} clips converted into {cfg.out}"
          f" ({report.clips_skipped} skipped, {len(failures)} failed"
          + (f", {report.strays} stray files ignored" if report.strays else "") + ")")
    if failures and report.clips_converted == 0:
        _error(f"every clip failed to convert, e.g. {failures[0][0]}: {failures[0][1]}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 a failure, 2 bad arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=")[0] in ("--celeba", "--attr_from") for a in argv):
        return celeba_cli(argv)  # A/B attribute sets for the content-AE
    if wants(argv):  # --landmarks DATA_FOLDER / --from_video: landmark files for the pose flow
        return pose_cli(argv)
    try:
        cfg, dry_run = parse_config(argv)
    except SystemExit as exit_:  # argparse: --help or a usage error
        return exit_.code if isinstance(exit_.code, int) else 2
    if dry_run:
        print(cfg)
        return 0
    try:
        if cfg.mode != "lrw":
            check_folder(cfg.image_dir, "--image_dir")
        if cfg.mode == "lrw":
            return run_lrw(cfg)
        if cfg.mode == "source":
            return run_source(cfg)
        return run_photos(cfg)
    except (ModelFileError, ValueError) as err:
        _error(str(err))
        return 1
    except OSError as err:
        _error(os_error_line(err))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
