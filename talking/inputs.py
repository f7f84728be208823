"""Finding the job's inputs: the query face, the source frames and their frame rate, the
checkpoint. Every failure is a :class:`TalkingError` with a one-line message saying what exists
and how to make what is missing."""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faces.io import ImageReadError, open_rgb, read_image, write_bytes_atomic
from faces.landmarks import ModelFileError, shared_detector
from lrw.video import has_audio

from .video_source import RECORD, open_frames, write_sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FPS = 25.0
THESIS_SIZE = 256  # query and source frames are brought to 256 x 256, as the thesis did
CACHE_DIR = ".video"  # test.py --source VIDEO: IMAGE_DIR/source_img/.video/ holds the crops
CACHE_VERSION = 2  # 2: the crops follow the head (faces.sequence); version 1's followed the
#                    mouth, and a cache of them is cut again


class TalkingError(ValueError):
    """An input of the talking-face job is missing or unusable; the message is one line."""


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS)


def _listing(names: list[str], limit: int = 12) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def available_queries(image_dir: str | Path) -> list[str]:
    """Query names under IMAGE_DIR/ref_img (``NAME_256.jpg`` -> ``NAME``)."""
    folder = Path(image_dir) / "ref_img"
    if not folder.is_dir():
        return []
    names = {re.sub(r"_\d+$", "", p.name.split(".")[0]) for p in folder.iterdir() if _is_image(p)}
    return sorted(names)


def available_sources(image_dir: str | Path) -> list[str]:
    """Source names: folders under IMAGE_DIR/source_img holding at least one image."""
    folder = Path(image_dir) / "source_img"
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and any(map(_is_image, d.iterdir())))


def resolve_query(query: str, image_dir: str | Path) -> tuple[Path, str]:
    """``QUERY`` (a name under IMAGE_DIR/ref_img, or an image path) -> (path, display name)."""
    p = Path(query)
    if _is_image(p):
        return p, re.sub(r"_256$", "", p.name.split(".")[0])
    folder = Path(image_dir) / "ref_img"
    for cand in (f"{query}_256.jpg", f"{query}_256.png", f"{query}_256.jpeg", query):
        if _is_image(folder / cand):
            return folder / cand, re.sub(r"_256$", "", query.split(".")[0])
    # NAME_SIZE.* at another size (e.g. a synthetic set rendered with --query_size 64).
    others = sorted(c for c in folder.glob(f"{glob.escape(query)}_*") if _is_image(c)
                    and re.fullmatch(rf"{re.escape(query)}_\d+", c.name.split(".")[0]))
    if others:
        return others[0], query
    raise TalkingError(
        f"query '{query}' not found (looked for {folder}/{query}_256.jpg or .png, and the path "
        f"itself); available queries: {_listing(available_queries(image_dir))}; make one with "
        "`python preprocess.py PHOTO` (writes ref_img/NAME_256.jpg)")


def _frame_key(p: Path) -> tuple:
    m = re.search(r"\d+", p.name)
    return (0, int(m.group()), p.name) if m else (1, 0, p.name)


@dataclass
class Source:
    """A driving sequence: its frames in order and their rate. From a video file: ``video``
    is the file (the frames are its cached crops) and ``audio`` the file again when it has a
    sound track."""

    name: str
    folder: Path
    frames: list[Path]
    fps: float
    fps_known: bool
    video: Path | None = None
    audio: Path | None = None


def resolve_source(name: str, image_dir: str | Path, progress: bool = False,
                   say=print) -> Source:
    """IMAGE_DIR/source_img/NAME/ (or a folder path): frames in numeric order, fps.txt or 25.

    A video file (any container ffmpeg reads) is detected, aligned and cropped as
    ``preprocess.py --source`` does, once: the crops are cached under
    IMAGE_DIR/source_img/.video/ (:func:`video_source`)."""
    folder = Path(name)
    if folder.is_file() and not _is_image(folder):
        return video_source(folder, image_dir, progress=progress, say=say)
    if not folder.is_dir() or not any(map(_is_image, folder.iterdir())):
        folder = Path(image_dir) / "source_img" / name
    frames = sorted((p for p in folder.iterdir() if _is_image(p)), key=_frame_key) \
        if folder.is_dir() else []
    if not frames:
        raise TalkingError(
            f"source '{name}' not found (no frames in {folder}); available sources: "
            f"{_listing(available_sources(image_dir))}; make one with "
            "`python preprocess.py --source NAME VIDEO_OR_FOLDER`")
    fps, known = DEFAULT_FPS, False
    fps_file = folder / "fps.txt"
    if fps_file.is_file():
        try:
            value = float(fps_file.read_text().split()[0])
            if value > 0:
                fps, known = value, True
        except (ValueError, IndexError):
            pass
    return Source(Path(folder).name, folder, frames, fps, known)


def read_rgb(path: Path, size: int | None = THESIS_SIZE) -> np.ndarray:
    """An image as ``uint8 [size, size, 3]`` RGB (bilinear resize when needed; ``size=None``:
    at its own size)."""
    try:
        im = open_rgb(path)  # every mode, upright (faces.io)
    except ImageReadError as exc:
        raise TalkingError(str(exc)) from None
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im).copy()


def load_alignment(query_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``--full_frame``: the original photo a query was aligned from and the ``[2, 3]`` map from
    crop pixels at 256 to photo pixels, from the record ``NAME_SIZE.json`` that ``preprocess.py
    PHOTO`` writes beside ``NAME_SIZE.jpg``. One-line :class:`TalkingError` when the record or
    the photo is missing or the photo changed size."""
    record_path = Path(query_path).with_suffix(".json")
    how = ("align the original photo with `python preprocess.py PHOTO` (it writes "
           "ref_img/NAME_256.jpg and the record NAME_256.json)")
    if not record_path.is_file():
        raise TalkingError(f"--full_frame: {query_path} has no alignment record "
                           f"({record_path.name}): {how}")
    try:
        rec = json.loads(record_path.read_text())
        matrix = np.asarray(rec["photo_to_crop"], dtype=np.float64).reshape(2, 3)
        crop_size = float(rec["crop_size"])
        rel, absolute = rec.get("photo"), rec.get("photo_absolute")
        w, h = (int(v) for v in rec["photo_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TalkingError(f"--full_frame: {record_path} is not a readable alignment record "
                           f"({type(exc).__name__}); {how}") from None
    candidates = [record_path.parent / rel] if rel else []
    candidates += [Path(absolute)] if absolute else []
    photo_path = next((p for p in candidates if p.is_file()), None)
    if photo_path is None:
        raise TalkingError(f"--full_frame: the original photo {absolute or rel} (recorded in "
                           f"{record_path}) is missing; put it back there or {how}")
    try:
        photo = read_image(photo_path)
    except ValueError as exc:
        raise TalkingError(f"--full_frame: {exc}; {how}") from None
    if photo.shape[:2] != (h, w):
        raise TalkingError(f"--full_frame: the photo {photo_path} is {photo.shape[1]}x"
                           f"{photo.shape[0]} but was {w}x{h} when {query_path.name} was "
                           f"aligned; {how}")
    to_crop256 = np.vstack([matrix * (256.0 / crop_size), [0.0, 0.0, 1.0]])
    return photo, np.linalg.inv(to_crop256)[:2]


def _stamp(video: Path) -> dict:
    st = video.stat()
    return {"version": CACHE_VERSION, "video": str(video.resolve()), "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def cache_folder(video: Path, image_dir: str | Path) -> Path:
    """Where ``test.py --source VIDEO`` keeps the video's crops:
    ``IMAGE_DIR/source_img/.video/STEM-HASH`` (HASH: of the video's absolute path)."""
    key = hashlib.blake2s(str(video.resolve()).encode(), digest_size=4).hexdigest()
    return Path(image_dir) / "source_img" / CACHE_DIR / f"{video.stem}-{key}"


def video_source(video: str | Path, image_dir: str | Path, progress: bool = False,
                 say=print, detect_width: int = 640, detect_every: int = 2,
                 smooth: int = 5) -> Source:
    """A video file as a driving sequence: detect, smooth and crop as ``preprocess.py
    --source`` does, once; later runs reuse the cached crops while the file is unchanged.
    Frames without a face take their neighbours' geometry (counted and reported). Raises
    :class:`TalkingError` (one line) for an unreadable or truncated video or one where no
    frame has a face."""
    video = Path(video)
    folder = cache_folder(video, image_dir)
    stamp = _stamp(video)
    record = folder / RECORD
    rec = None
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
        except (OSError, ValueError):
            rec = None
    if rec is None or any(rec.get(k) != v for k, v in stamp.items()):
        try:
            src = open_frames(video)
            audio = has_audio(video)
            detector = shared_detector(None, detect_width=detect_width)
            say(f"{video}: finding the face in every frame (once; the crops are kept in "
                f"{folder})")
            rec = dict(stamp, fps=src.fps or DEFAULT_FPS, fps_known=src.fps is not None,
                       audio=audio)
            plan = write_sequence(src, folder, 256, smooth, detect_every, detector=detector,
                                  progress=progress, landmarks=True, extra=None)
            rec.update(frames=plan.report.frames, missing=plan.report.missing,
                       missing_frames=plan.report.missing_frames[:50],
                       summary=plan.report.summary())
            write_bytes_atomic(record, (json.dumps(rec, indent=1) + "\n").encode())
        except ModelFileError as exc:
            raise TalkingError(str(exc)) from None
        except ValueError as exc:
            msg = str(exc) if str(video) in str(exc) else f"{video}: {exc}"
            raise TalkingError(f"--source {msg}") from None
    frames = sorted((p for p in folder.iterdir() if _is_image(p)), key=_frame_key)
    if len(frames) != rec.get("frames"):
        raise TalkingError(f"--source {video}: the cached crops in {folder} are incomplete; "
                           "delete that folder and run again")
    if rec.get("missing"):
        say(f"note: {video}: {rec['missing']} of {rec['frames']} frames without a face took "
            "their neighbours' geometry")
    return Source(video.stem, folder, frames, float(rec["fps"]), bool(rec["fps_known"]),
                  video=video, audio=video if rec.get("audio") else None)
