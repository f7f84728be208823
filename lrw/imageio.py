"""Image reading and grid writing without importing torchvision.

``import torchvision`` (any submodule: ``torchvision.utils``, ``torchvision.transforms``) imports
``torchvision.ops``, which imports ``torch._dynamo``: about 1.6 s and 150-165 MiB resident
(triton included) on a CPU machine, paid by every process that only wants to write a PNG
(docs/performance.md). The three functions here do what the project used from it, pixel for
pixel (``tests/lrw/test_imageio.py`` compares them with torchvision's):

* :func:`thesis_transform`: ``Resize(size)`` (shorter side, bilinear with antialiasing, as PIL
  resizes), ``CenterCrop(size)``, ``ToTensor`` -> float32 ``[3, size, size]`` in ``[0, 1]``;
* :func:`make_grid` and :func:`save_image`: torchvision's grid layout (``nrow`` tiles a row,
  ``padding`` pixels of ``pad_value`` around and between tiles; one image is written unpadded)
  and its rounding to 8 bits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from faces.io import save_pil


def thesis_array(im: Image.Image, size: int) -> np.ndarray:
    """An RGB PIL image resized and cropped as :func:`thesis_transform` does: ``uint8
    [size, size, 3]``."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if (top, left, new_h, new_w) != (0, 0, size, size):
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


def array_tensor(arr: np.ndarray) -> Tensor:
    """``uint8 [H, W, 3]`` -> float32 ``[3, H, W]`` in ``[0, 1]`` (``ToTensor``)."""
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div(255)


def thesis_transform(im: Image.Image, size: int) -> Tensor:
    """An RGB PIL image -> float32 ``[3, size, size]`` in ``[0, 1]`` (see the module docstring)."""
    return array_tensor(thesis_array(im, size))


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> Tensor:
    """``[B, C, H, W]`` (C 1 or 3) -> ``[3, rows * (H + padding) + padding, ...]``, row-major."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[0] == 1:
        return images[0]
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, (h + padding) * rows + padding, (w + padding) * cols + padding),
                           pad_value)
    for k in range(n):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def save_image(images: Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> None:
    """Write ``images`` (values in ``[0, 1]``) as one PNG grid (:func:`make_grid`)."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding)
    arr = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    save_pil(Image.fromarray(arr), path)  # temporary name + rename: never a partial grid
