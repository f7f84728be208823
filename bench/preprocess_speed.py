"""Preprocessing throughput: a driving sequence (frames/s), query photos (ms per photo) and
mouth blending (ms per image).

    python bench/preprocess_speed.py                      # the shared 330-frame ellen sequence
    python bench/preprocess_speed.py --frames DIR --photos DIR --detect_every 1 2 4

Stages are timed with the models already loaded (loading the 68-point predictor takes about
1-2 s once per process); the end-to-end line runs ``preprocess.main`` as a user would,
model loading and JPEG writing included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "faces"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=Path, default=SHARED / "source_img" / "ellen",
                   help="folder of frames (default: ../shared/data/faces/source_img/ellen)")
    p.add_argument("--photos", type=Path, default=SHARED / "ref_img",
                   help="folder of photos (default: ../shared/data/faces/ref_img)")
    p.add_argument("--detect_every", type=int, nargs="+", default=[1, 2, 4],
                   help="detector intervals to compare (default: 1 2 4)")
    p.add_argument("--size", type=int, default=256, help="crop size (default: 256)")
    args = p.parse_args(argv)

    import numpy as np

    from faces.align import align_face
    from faces.io import read_image, sorted_frames, write_image
    from faces.landmarks import LandmarkDetector, _cached_detector
    from faces.sequence import align_sequence
    from preprocess import main as preprocess_main

    for folder in (args.frames, args.photos):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder (pass --frames / --photos)", file=sys.stderr)
            return 1

    t0 = time.perf_counter()
    detector = LandmarkDetector()
    print(f"model load: {time.perf_counter() - t0:.2f} s")

    files = sorted_frames(args.frames)
    t0 = time.perf_counter()
    frames = [read_image(f) for f in files]
    t_read = time.perf_counter() - t0
    h, w = frames[0].shape[:2]
    print(f"sequence {args.frames.name}: {len(frames)} frames {w}x{h}, read "
          f"{len(frames) / t_read:.0f} frames/s")
    reference = None
    for every in args.detect_every:
        t0 = time.perf_counter()
        result = align_sequence(frames, detector, args.size, detect_every=every)
        dt = time.perf_counter() - t0
        if reference is None:
            reference = result
        drift = np.mean([np.abs(a - b).mean() for a, b in
                         zip(reference.landmarks, result.landmarks, strict=True)
                         if a is not None and b is not None])
        print(f"  detect_every={every}: landmarks + smoothing + crop {len(frames) / dt:6.1f} "
              f"frames/s ({1000 * dt / len(frames):.1f} ms/frame), "
              f"landmark drift vs detect_every={args.detect_every[0]}: {drift:.2f} px, "
              f"{result.report.summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i, crop in enumerate(result.crops):
            write_image(Path(tmp) / f"{i:03d}.jpg", crop)
        t_write = time.perf_counter() - t0
        print(f"  write JPEG: {len(frames) / t_write:.0f} frames/s")
        _cached_detector.cache_clear()  # end to end means loading the model too
        t0 = time.perf_counter()
        rc = preprocess_main(["--source", "bench", str(args.frames), "--image_dir", tmp,
                              "--no-progress"])
        dt = time.perf_counter() - t0
        print(f"  end to end (preprocess.py --source, default flags): {dt:.1f} s = "
              f"{len(frames) / dt:.1f} frames/s (exit {rc})")

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    times = []
    for path in photos:
        t0 = time.perf_counter()
        image = read_image(path)
        det = detector.detect(image, warn=False)
        if det is not None:
            align_face(image, det.landmarks, args.size, warn=False)
        times.append(time.perf_counter() - t0)
    big = None
    if photos:
        # A phone-sized photo: the detector works on a reduced copy.
        big_img = np.asarray(read_image(photos[0]))
        import cv2

        big_img = cv2.resize(big_img, (3000, 3000), interpolation=cv2.INTER_CUBIC)
        t0 = time.perf_counter()
        det = detector.detect(big_img, warn=False)
        align_face(big_img, det.landmarks, args.size, warn=False)
        big = time.perf_counter() - t0
    print(f"photos {args.photos.name}: {len(photos)} photos, read + detect + align "
          f"{1000 * np.mean(times):.1f} ms/photo (min {1000 * np.min(times):.1f}, "
          f"max {1000 * np.max(times):.1f})"
          + (f"; a 3000x3000 photo: {1000 * big:.0f} ms" if big is not None else ""))
    with tempfile.TemporaryDirectory() as tmp:
        _cached_detector.cache_clear()
        t0 = time.perf_counter()
        rc = preprocess_main([str(args.photos), "--image_dir", tmp, "--no-progress"])
        dt = time.perf_counter() - t0
    print(f"  end to end (preprocess.py PHOTOS): {dt:.2f} s for {len(photos)} photos, "
          f"{1000 * dt / max(1, len(photos)):.0f} ms/photo including model load (exit {rc})")

    if len(photos) >= 2:
        import cv2

        from faces.blend import mouth_mix

        q, src = read_image(photos[0]), read_image(photos[1])
        parts = []
        for size in (256, 64, 32):
            qs = cv2.resize(q, (size, size), interpolation=cv2.INTER_AREA)
            ss = cv2.resize(src, (size, size), interpolation=cv2.INTER_AREA)
            mouth_mix(qs, ss)
            t0 = time.perf_counter()
            for _ in range(50):
                mouth_mix(qs, ss)
            parts.append(f"{size} px {1000 * (time.perf_counter() - t0) / 50:.2f} ms")
        print("mouth_mix (poisson): " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
