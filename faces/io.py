"""Reading and writing face images, finding photos and ordering frame folders."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "BACKGROUND",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "image_size",
    "find_images",
    "frame_sort_key",
    "is_image",
    "note_non_square",
    "open_rgb",
    "read_image",
    "save_pil",
    "sorted_frames",
    "umask_mode",
    "write_bytes_atomic",
    "write_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_INT = re.compile(r"\d+")


def is_image(path: Path) -> bool:
    """Whether ``path`` names a file with an image extension (case-insensitive)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message is one line naming the file."""


# Transparent pixels are composited on white: what image viewers show for a cut-out face and
# what ``convert -flatten`` gives. PIL's own ``convert("RGB")`` instead drops the alpha and shows
# whatever colour the transparent pixels happen to hold (often black, often garbage).
BACKGROUND = (255, 255, 255)

# EXIF orientation tag -> the transpose that turns the stored pixels upright.
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}

_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")


def _grey16_to_rgb(values: np.ndarray) -> Image.Image:
    """16-bit grey levels (0..65535) -> RGB, rounded to the nearest 8-bit level."""
    level = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(level, mode="L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded PIL image -> 8-bit RGB with its colours kept (see :func:`read_image`).

    Raises ``ValueError`` (a reason, without the file name) for pixels that have no sound
    8-bit reading.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("P", "L", "1", "RGB") and img.info.get("transparency") is not None:
        img, mode = img.convert("RGBA"), "RGBA"  # a palette or colour key with transparency
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(back, rgba).convert("RGB")
    if mode in _PLAIN_MODES:
        return img.convert("RGB")
    if mode.startswith("I;16"):
        return _grey16_to_rgb(np.asarray(img))
    if mode == "I":  # 32-bit integers: how PIL holds 16-bit grey from some formats
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"32-bit integer pixels outside 0..65535 (range {values.min()}.."
                             f"{values.max()}); save it as 8- or 16-bit")
        return _grey16_to_rgb(values)
    if mode == "F":  # 32-bit float grey, read as 0..1
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("floating-point pixels that are NaN or infinite")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"floating-point pixels outside 0..1 (range {values.min():.4g}.."
                             f"{values.max():.4g}); save it as 8- or 16-bit")
        level = np.floor(values * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(level, mode="L").convert("RGB")
    raise ValueError(f"colour mode {mode} is not supported; save it as 8-bit RGB")


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag, parsed only where the file has EXIF (JPEG, PNG and WebP keep
    it in ``info["exif"]``, TIFF in its own tags): parsing it costs ~0.1 ms per image."""
    if "exif" not in img.info and img.format not in ("TIFF", "MPO"):
        return None
    return img.getexif().get(0x0112)


def _reason(err: BaseException, path: Path) -> str:
    if isinstance(err, FileNotFoundError) or not path.exists():
        return "no such file"
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return "a folder, not an image"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return (f"{size}, over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit for one image "
                "(a guard against decompression bombs); shrink it first")
    if isinstance(err, UnidentifiedImageError):
        return "not a readable image (unknown format)"
    line = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ValueError):
        return line
    return f"not a readable image ({line})"


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as an 8-bit RGB PIL image: the one image reader of the project.

    Every mode PIL decodes is read for what it means: 16-bit grey (``I;16*``, and ``I`` with
    values in 0..65535) is scaled to 8 bits rather than clipped; float grey (``F``) is read as
    0..1; palettes, CMYK and YCbCr are converted; transparency (an alpha channel, a palette's or
    a colour key's) is composited on white (:data:`BACKGROUND`); the EXIF orientation turns the
    picture upright; a multi-frame file gives its first frame. Anything else (an unknown mode,
    pixels outside those ranges, a truncated or corrupt file, an image over PIL's
    ``MAX_IMAGE_PIXELS``) raises :class:`ImageReadError`, one line naming the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # the full decode: truncated files fail here
                orientation = _orientation(img)
                rgb = _to_rgb(img)
                if rgb is img:
                    rgb = img.copy()  # outlives the closed file
        if orientation in _ORIENTATION:
            rgb = rgb.transpose(_ORIENTATION[orientation])
        return rgb
    except MemoryError:
        raise ImageReadError(f"cannot read {path}: not enough memory to decode it") from None
    except Exception as err:  # PIL's plugins raise many types on malformed files
        raise ImageReadError(f"cannot read {path}: {_reason(err, path)}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the picture :func:`open_rgb` would give (EXIF orientation
    applied), from the file's header: nothing is decoded. Raises :class:`ImageReadError`
    (one line) as :func:`open_rgb` does, an oversized image included."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                turned = _orientation(img) in (5, 6, 7, 8)
        return (h, w) if turned else (w, h)
    except MemoryError:
        raise ImageReadError(f"cannot read {path}: not enough memory to decode it") from None
    except Exception as err:  # PIL's plugins raise many types on malformed files
        raise ImageReadError(f"cannot read {path}: {_reason(err, path)}") from None


def note_non_square(paths: Iterable[str | Path], what: str, say=print) -> int:
    """Say once (one line) when pictures among ``paths`` are not square: the models see every
    picture stretched to a square. Reads headers only; unreadable files are left to the
    reader. Returns how many are not square."""
    odd = []
    for path in paths:
        try:
            w, h = image_size(path)
        except ImageReadError:
            continue
        if w != h:
            odd.append((Path(path), w, h))
    if odd:
        first, w, h = odd[0]
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        say(f"note: the {what} {first} is {w}x{h}, not square{more}: the model sees it "
            "stretched to a square (align it with preprocess.py for an undistorted face)")
    return len(odd)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``uint8 [H, W, 3]`` (:func:`open_rgb`: every mode, upright).

    Raises :class:`ImageReadError` (a ``ValueError``; one line naming the file) when it
    cannot be read.
    """
    return np.asarray(open_rgb(path))


def umask_mode(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the mode a plain ``open`` would
    have given it (0666 less the umask), so renamed-into-place outputs are shared as usual."""
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


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
