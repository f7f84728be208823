"""LRW-style data: video I/O, the folder index, datasets, the LRW converter, the synthetic set.

Names are imported lazily, so ``from lrw import read_video`` does not pay for torch::

    from lrw import open_index, FrameDataset, ClipDataset, convert_lrw, SyntheticSet
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_video": "lrw.video",
    "write_video": "lrw.video",
    "Clip": "lrw.index",
    "IndexStats": "lrw.index",
    "LRWIndex": "lrw.index",
    "open_index": "lrw.index",
    "load_image": "lrw.datasets",
    "FrameDataset": "lrw.datasets",
    "ImageFolderDataset": "lrw.datasets",
    "ClipDataset": "lrw.datasets",
    "UnreadableFrameWarning": "lrw.datasets",
    "ConvertReport": "lrw.convert",
    "convert_lrw": "lrw.convert",
    "Identity": "synthface.face",
    "MouthState": "synthface.face",
    "SyntheticSet": "lrw.synthetic",
    "render": "synthface.face",
    "generate": "lrw.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lrw' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
