"""Writing a data set into its output folder without mixing it with what is there.

Every writer of a whole data set (``python -m lrw.synthetic``, ``python -m pose_flow.synthetic``,
``python -m synthface.attributes``, ``preprocess.py --celeba`` / ``--attr_from``) goes through
:func:`replacing`:

* a missing or empty folder is written;
* a folder holding a set this writer made before (its ``owned`` test) is *replaced*: the new set
  is written into a hidden sibling folder and swapped in only when complete, so a second run
  with fewer images never leaves the old ones beside a manifest that lists fewer, and a failed
  run leaves the old set as it was;
* any other non-empty folder (real data, another tool's output) is refused with one line:
  nothing is written into it, nothing of it is deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing"]


def _file_in_the_way(out: Path) -> Path | None:
    return next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)


@contextmanager
def replacing(out: str | Path, owned: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yield an empty folder to write the set into; on success it becomes ``out``.

    ``owned(out)`` tells whether a non-empty ``out`` holds a set of this writer (then it is
    replaced); ``what`` names such a set in the refusal (e.g. "synthetic LRW set"). Raises
    ``ValueError`` (one line) for a non-empty folder that is not one, or a file in the way.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        out = Path(os.path.abspath(out))
    blocker = _file_in_the_way(out)
    if blocker is not None:
        raise ValueError(f"{out}: {blocker} is a file, not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not owned(out):
        raise ValueError(f"{out} is not empty and holds no {what}; give a new or empty folder "
                         "(a set is never written into other files)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; the set is shared as usual
    try:
        yield tmp
        if out.exists():
            old = tmp.with_suffix(".old")
            os.replace(out, old)  # an empty or replaced folder: out of the way, then removed
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
