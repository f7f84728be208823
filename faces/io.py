"""Reading and writing face images, finding photos and ordering frame folders."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "find_images",
    "frame_sort_key",
    "is_image",
    "read_image",
    "save_pil",
    "sorted_frames",
    "write_bytes_atomic",
    "write_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_INT = re.compile(r"\d+")


def is_image(path: Path) -> bool:
    """Whether ``path`` names a file with an image extension (case-insensitive)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``uint8 [H, W, 3]``, turned upright by its EXIF orientation.

    Raises ``ValueError`` (one line, naming the file) when it cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        reason = "no such file" if not path.exists() else "not a readable image"
        raise ValueError(f"cannot read {path}: {reason}") from err


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> Path:
    """Write an RGB ``uint8 [H, W, 3]`` image (JPEG quality ``quality`` for .jpg); returns
    the path. The parent folder is created. The file is written under a temporary name in the
    same folder and renamed into place, so a full disk or a kill never leaves a partial or
    zero-byte image under ``path`` (``OSError`` from the write is raised as it is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in (
        ".jpg", ".jpeg") else []
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", bgr, params)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot write {path}: OpenCV cannot encode a {path.suffix!r} image")
    write_bytes_atomic(path, buf.tobytes())
    return path


def save_pil(image: Image.Image, path: str | Path, **params) -> Path:
    """Save a PIL image (format from the suffix, ``params`` as ``Image.save`` takes them)
    through :func:`write_bytes_atomic`: never a partial file under ``path``."""
    import io

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {path}: no image format has the suffix {path.suffix!r}")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return write_bytes_atomic(path, buf.getvalue())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename:
    ``path`` holds either its old content or all of ``data``, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


def frame_sort_key(path: str | Path) -> tuple:
    """Sort key for frame files: the first integer in the name, then natural order.

    ``000.jpg.jpg < 2.png < frame_10.png``; names without a number come last.
    """
    name = Path(path).name
    match = _INT.search(name)
    first = int(match.group()) if match else float("inf")
    return (match is None, first, _natural_key(name))


def sorted_frames(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, in frame order (see ``frame_sort_key``)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if is_image(p)), key=frame_sort_key)


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (walked recursively) into image files.

    Returns ``(images, problems)``: images in the given order (folders in natural order),
    and one-line messages for paths that do not exist.
    """
    images: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in path.rglob("*") if is_image(p)]
            found.sort(key=lambda p: _natural_key(str(p.relative_to(path))))
            if not found:
                problems.append(f"{path}: no images found (extensions "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return images, problems
