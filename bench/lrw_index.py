"""Benchmark the LRW index (build vs cached load) and the mp4 -> jpg converter.

    python bench/lrw_index.py [--words 50 --clips 69 --frames 29] [--videos 8]

Writes a tree of empty ``WORD/WORD_NNNNN_FF.jpg`` files (50 x 69 x 29 = 100k by default) in a
temporary folder, times a full index build, a cached open, and an open after one word folder
changed; then converts ``--videos`` generated 29-frame mp4 clips with ``convert_lrw`` and prints
the time per clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrw.convert import convert_lrw  # noqa: E402
from lrw.index import open_index  # noqa: E402
from lrw.synthetic import WORDS, MouthState, render, sample_identity  # noqa: E402
from lrw.video import write_video  # noqa: E402


def make_tree(root: Path, words: int, clips: int, frames: int) -> int:
    names = [f"{WORDS[i % len(WORDS)]}{i // len(WORDS) or ''}" for i in range(words)]
    n = 0
    for word in names:
        folder = root / word
        folder.mkdir(parents=True)
        for c in range(1, clips + 1):
            for f in range(1, frames + 1):
                open(folder / f"{word}_{c:05d}_{f:02d}.jpg", "wb").close()
                n += 1
    past = time.time() - 60  # outside the index's 2 s "racy" window, as for any real dataset
    for d in [root, *root.iterdir()]:
        os.utime(d, (past, past))
    return n


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--words", type=int, default=50)
    p.add_argument("--clips", type=int, default=69)
    p.add_argument("--frames", type=int, default=29)
    p.add_argument("--videos", type=int, default=8, help="mp4 clips for the converter timing")
    p.add_argument("--workers", type=int, default=1, help="converter processes")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        t0 = time.perf_counter()
        n = make_tree(root, args.words, args.clips, args.frames)
        print(f"tree: {n} empty frames in {args.words} word folders "
              f"({time.perf_counter() - t0:.1f} s to create)")

        build, idx = timed(lambda: open_index(root, cache=False))
        print(f"index build (no cache):     {build * 1000:8.1f} ms  ({idx.n_frames} frames, "
              f"{len(idx.clips)} clips)")
        first, idx = timed(lambda: ((root / ".lrw_index.json").unlink(missing_ok=True),
                                    open_index(root))[1])
        size = (root / ".lrw_index.json").stat().st_size
        print(f"index build + cache write:  {first * 1000:8.1f} ms  (cache {size / 1e6:.2f} MB)")
        cached, idx = timed(lambda: open_index(root))
        assert idx.stats.from_cache
        print(f"cached open:                {cached * 1000:8.1f} ms  "
              f"(build / cached = {build / cached:.1f}x)")
        word = idx.words[0]
        open(root / word / f"{word}_99999_01.jpg", "wb").close()
        past = time.time() - 60
        os.utime(root / word, (past + 1, past + 1))
        changed, idx = timed(lambda: open_index(root), repeat=1)
        print(f"open after 1 folder changed:{changed * 1000:8.1f} ms  "
              f"({idx.stats.n_scanned_words} folder listed again)")
        walk, _ = timed(lambda: [p for p in idx.frames])
        print(f"iterate all (path, label):  {walk * 1000:8.1f} ms")

        mp4 = Path(tmp) / "lipread_mp4"
        for i in range(args.videos):
            ident = sample_identity(np.random.default_rng([0, i]))
            frames = [render(ident, MouthState(abs(np.sin(t / 4)), 0.0), 256) for t in range(29)]
            write_video(mp4 / "ABOUT" / "train" / f"ABOUT_{i + 1:05d}.mp4", frames, 25)
        t0 = time.perf_counter()
        report = convert_lrw(mp4, Path(tmp) / "out", workers=args.workers, progress=False)
        total = time.perf_counter() - t0
        print(f"convert_lrw: {report.clips_converted} clips of 29 frames at 256x256 in "
              f"{total:.2f} s = {total / max(1, report.clips_converted) * 1000:.0f} ms/clip "
              f"(workers={args.workers})")
        t0 = time.perf_counter()
        again = convert_lrw(mp4, Path(tmp) / "out", progress=False)
        print(f"convert_lrw resume (all done): {again.clips_skipped} skipped in "
              f"{(time.perf_counter() - t0) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
