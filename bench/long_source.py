#!/usr/bin/env python
"""``test.py --source VIDEO`` on a long 720p video with sound: peak memory, one output frame
per source frame, audio and picture in sync.

Makes the source (once, kept in ``--work``): the shared driving frames (ellen, 330 frames),
played forwards and backwards to fill ``--minutes``, each enlarged into a 1280 x 720 picture,
encoded as H.264 through the bundled ffmpeg with a generated tone as its sound. Builds a small
AD-flow (a random 32 px Glow with non-trivial weights; the model's cost is not what is measured
here) and runs ``test.py --source VIDEO QUERY`` in a subprocess twice: the first run detects
and crops every frame (streamed in two passes) and writes the talking face pasted back at
256 px with the source's sound; the second starts from the cached crops. Reports, per run:
wall time, the peak resident memory of test.py (``ru_maxrss``, the largest process) and of its
whole process tree (polled every 0.5 s: Python plus its ffmpeg encoders), frames written vs the
source's, and the output's audio and video durations read back with the bundled ffmpeg.

  python bench/long_source.py                      # 5 minutes, 720p, 25 fps
  python bench/long_source.py --minutes 0.5        # a quick look
  python bench/long_source.py --work DIR --json out.json

Targets (issue 22): peak resident below 1.5 GB, frames = source frames, audio and video
durations within one frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "faces"
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_source(path: Path, minutes: float, fps: float, width: int, height: int) -> int:
    """The long source video with a tone; returns its frame count."""
    import cv2
    import numpy as np

    from faces.io import read_image, sorted_frames
    from lrw.video import VideoWriter, with_tone

    frames = [read_image(p) for p in sorted_frames(SHARED / "source_img" / "ellen")]
    loop = frames + frames[-2:0:-1]  # forwards and backwards: no jump at the seam
    n = int(round(minutes * 60 * fps))
    side = int(height * 0.8)
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([xx * 180 // width + 40, yy * 160 // height + 50,
                   np.full_like(xx, 90)], 2).astype(np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    big = [cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) for f in loop]
    silent = path.with_name(f"silent_{path.name}")
    with VideoWriter(silent, fps, quality=5, preset="veryfast") as writer:
        for i in range(n):
            pic = bg.copy()
            pic[y0:y0 + side, x0:x0 + side] = big[i % len(big)]
            writer.write(pic)
    with_tone(silent, path)
    silent.unlink()
    return n


def make_model(work: Path) -> Path:
    """A small AD-flow checkpoint (random 32 px Glow, non-trivial weights)."""
    import torch

    from ad_flow.recipe import RECIPE as ad
    from glow import Glow
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    glow = Glow(3, n_flow=4, n_block=3, hidden=64, img_size=32)
    glow.initialize(torch.rand(16, 3, 32, 32) - 0.5)
    with torch.no_grad():
        for name, p in glow.named_parameters():
            if "coupling.net.4" in name or "prior" in name:
                p.normal_(0, 0.01)
    ck = work / "checkpoint"
    gpath = save_checkpoint(ck / "glow" / "last.pt", model_name="glow",
                            model_config=glow.config(), train_config={},
                            weights=glow.state_dict(), with_rng=False)
    cfg = ad.Config(glow=str(gpath), img_size=32, n_classes=8, cls_hidden="16")
    model = ad.build(cfg)
    return save_checkpoint(ck / "ad" / "last.pt", model_name="ad-flow",
                           model_config=dict(cfg.__dict__), train_config={},
                           weights=model.state_dict(), extra=ad.checkpoint_extra(model, cfg),
                           with_rng=False)


def _tree_rss_kb(pid: int) -> int:
    """Resident KB of ``pid`` and all its descendants (from /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def run_test_py(args: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "test.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak_tree[0] = max(peak_tree[0], _tree_rss_kb(proc.pid))
            stop.wait(0.5)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "out": out.strip().splitlines()[-3:],
            "err": err.strip().splitlines()[-3:], "tree_peak_mb": peak_tree[0] / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--work", default="bench_long_source")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not (SHARED / "source_img" / "ellen").is_dir():
        print(f"error: {SHARED} is absent (the shared driving frames)", file=sys.stderr)
        return 1
    from lrw.video import VideoReader, has_audio, media_durations

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"source_{a.minutes:g}min_{a.height}p.mp4"
    t0 = time.perf_counter()
    if not video.is_file():
        n_src = make_source(video, a.minutes, a.fps, a.width, a.height)
        print(f"source: {video} ({n_src} frames) made in {time.perf_counter() - t0:.0f} s")
    src_info = VideoReader(video)
    n_src = src_info.declared
    image = work / "image"
    (image / "ref_img").mkdir(parents=True, exist_ok=True)
    query = image / "ref_img" / "obama_256.jpg"
    if not query.is_file():
        query.write_bytes((SHARED / "ref_img" / "obama_256.jpg").read_bytes())
    ck = make_model(work)
    common = ["--model", "ad-flow", "--source", str(video), "obama", "--image_dir", str(image),
              "--checkpoint", str(ck), "--no_progress"]
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "source_frames": n_src,
               "source": f"{a.width}x{a.height}, {a.fps:g} fps, {a.minutes:g} min, "
                         f"audio {has_audio(video)}"}
    import shutil

    shutil.rmtree(image / "source_img" / ".video", ignore_errors=True)  # a cold first run
    for tag in ("first", "cached"):
        res = work / f"result_{tag}"
        shutil.rmtree(res, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = run_test_py([*common, "--result_dir", str(res)])
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r["maxrss_mb"] = after / 1024 if after > before else None  # largest process so far
        out = res / "target_img" / video.stem / "obama"
        r["frames_written"] = len(list(out.glob("[0-9]*.png")))
        if (out / "video.mp4").is_file():
            d = media_durations(out / "video.mp4")
            r["video_s"], r["audio_s"] = d.get("video"), d.get("audio")
            r["frames_in_video"] = VideoReader(out / "video.mp4").declared
        results[tag] = r
        print(json.dumps({tag: r}, indent=1))
    first = results["first"]
    ok_mem = first["tree_peak_mb"] < 1536 and (first["maxrss_mb"] or 0) < 1536
    ok_frames = first["frames_written"] == n_src == first.get("frames_in_video")
    ok_sync = (first.get("audio_s") is not None and first.get("video_s") is not None
               and abs(first["audio_s"] - first["video_s"]) < 1 / a.fps)
    results["targets"] = {"peak_below_1.5GB": ok_mem, "one_frame_per_source_frame": ok_frames,
                          "audio_video_within_one_frame": ok_sync}
    print(f"\n{results['cpu']} ({results['cores']} cores); source {results['source']}, "
          f"{n_src} frames")
    for tag in ("first", "cached"):
        r = results[tag]
        print(f"  {tag:6s}: {r['wall_s']:.0f} s, peak RSS test.py {r['maxrss_mb'] or 0:.0f} MB, "
              f"process tree {r['tree_peak_mb']:.0f} MB; {r['frames_written']} frames written, "
              f"video {r.get('video_s')} s, audio {r.get('audio_s')} s")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                  for k, v in results["targets"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
