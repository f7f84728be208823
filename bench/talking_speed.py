"""The talking-face job end to end (test.py --model ad-flow), per source frame, at thesis size.

Model: Glow 64x64, K=32, L=4, additive coupling, LU 1x1 convs, hidden 512, random weights with
ActNorm initialised on the source frames; a random linear AD-flow encoder. Frames: the first N
of ``../shared/data/faces/source_img/ellen`` with query ``obama`` (resolved relative to the
repository), or synthetic frames when that folder is absent.

Measured, each in a fresh subprocess (imports, checkpoint loading, blending, encoding,
decoding and writing all included): ``test.py`` here, and with ``--peer DIR`` the thesis's own
``test.py`` from DIR run on the same frames with the same weights (its ``main`` called as is;
shims, in the subprocess only: a stub ``pandas`` module its ``dataset.py`` imports, and
``torchvision.utils.save_image`` accepting the removed ``range=`` keyword; it runs from a
scratch working folder laid out the way its ``../image`` paths expect). Also reported: the
fraction of the CPU's measured float32 matmul peak reached by our Glow passes (FLOPs counted by
``torch.utils.flop_counter``), and the agreement of both implementations' frames.

``--quality`` adds a quality figure on the synthetic set: a small Glow and AD-flow are trained
for a fixed budget, then the PSNR of generated frames against the exact ground truth (the query
identity with each source frame's mouth) is compared with copying the query and with the
blended input itself.

Examples::

    python bench/talking_speed.py --frames 30
    python bench/talking_speed.py --frames 30 --peer THESIS_CHECKOUT/ad-flow
    python bench/talking_speed.py --peer THESIS_CHECKOUT/ad-flow --precision float32 bf16 --repeats 3
    python bench/talking_speed.py --quality --glow_iter 1500 --ad_iter 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "faces"
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------ setup
def prepare(work: Path, n_frames: int, seed: int = 0) -> dict:
    """Image folder, Glow and AD-flow checkpoints at thesis size under ``work``."""
    import numpy as np
    import torch

    from ad_flow.recipe import RECIPE as ad
    from glow import Glow
    from talking.inputs import read_rgb
    from talking.job import to_tensor
    from training.checkpoint import save_checkpoint

    image = work / "image"
    src_dir = image / "source_img" / "talk"
    src_dir.mkdir(parents=True)
    (image / "ref_img").mkdir(parents=True)
    ellen = SHARED / "source_img" / "ellen"
    if ellen.is_dir() and (SHARED / "ref_img" / "obama_256.jpg").is_file():
        frames = sorted(p for p in ellen.iterdir() if p.name[0].isdigit())[:n_frames]
        for p in frames:
            os.symlink(p, src_dir / p.name)
        os.symlink(SHARED / "ref_img" / "obama_256.jpg", image / "ref_img" / "query_256.jpg")
        origin = f"{ellen} (first {len(frames)} frames), query obama"
    else:
        from PIL import Image

        from lrw.synthetic import NEUTRAL, MouthState, render, sample_identity

        rng = np.random.default_rng(seed)
        who, q = sample_identity(rng), sample_identity(rng)
        for t in range(n_frames):
            m = MouthState(0.5 + 0.5 * np.sin(t / 3), 1.0)
            Image.fromarray(render(who, m, 256)).save(src_dir / f"{t:03d}.jpg.jpg", "JPEG")
        Image.fromarray(render(q, NEUTRAL, 256)).save(image / "ref_img" / "query_256.jpg")
        origin = f"synthetic ({n_frames} frames)"
    (src_dir / "fps.txt").write_text("25\n")

    torch.manual_seed(seed)
    glow = Glow(3, n_flow=32, n_block=4, affine=False, conv_lu=True, hidden=512, img_size=64)
    srcs = sorted(p for p in src_dir.iterdir() if p.suffix == ".jpg")
    glow.initialize(to_tensor([read_rgb(p) for p in srcs[:16]], 64))
    with torch.no_grad():  # random, non-trivial weights (zero-initialised convs made random)
        for name, p in glow.named_parameters():
            if "coupling.net.4" in name or "prior" in name:
                p.normal_(0, 0.01)
    ck = work / "checkpoint"
    gpath = save_checkpoint(ck / "glow_checkpoint.pt", model_name="glow",
                            model_config=glow.config(), train_config={},
                            weights=glow.state_dict(), with_rng=False)
    cfg = ad.Config(glow=str(gpath), n_classes=500)
    model = ad.build(cfg)
    with torch.no_grad():
        for lvl in model.encoder.levels:  # a gentle random map: lip ~ 0.1 z + noise
            p = lvl.linear.weight.shape[0]
            lvl.linear.weight.copy_(0.1 * torch.eye(p) + torch.randn(p, p) / p)
    apath = save_checkpoint(ck / "ad-flow_total_checkpoint.pt", model_name="ad-flow",
                            model_config=dict(cfg.__dict__), train_config={},
                            weights=model.state_dict(), extra=ad.checkpoint_extra(model, cfg),
                            with_rng=False)
    return {"image": str(image), "glow": str(gpath), "adflow": str(apath), "origin": origin,
            "n": len(srcs)}


# ----------------------------------------------------------------------------------- ours
def run_ours(work: Path, setup: dict, batch: int, precision: str = "float32",
             tag: str = "ours", paste_back: str | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "test.py"), "--model", "ad-flow", "--source", "talk",
           "query", "--image_dir", setup["image"], "--checkpoint", setup["adflow"], "--glow",
           setup["glow"], "--result_dir", str(work / tag), "--batch", str(batch),
           "--device", "cpu", "--no_progress", "--precision", precision]
    if paste_back:
        cmd += ["--paste_back", paste_back]
    shutil.rmtree(work / tag, ignore_errors=True)
    frames = work / tag / "target_img" / "talk" / "query"
    t = time.perf_counter()
    first = None
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        while proc.poll() is None:  # the first frame file on disk, polled every 10 ms
            if first is None and frames.is_dir() and next(frames.glob("[0-9]*.png"), None):
                first = time.perf_counter() - t
            time.sleep(0.01)
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"test.py failed: {stderr.strip()}")
    return {"wall": wall, "first": first if first is not None else wall,
            "line": stdout.strip().splitlines()[-1], "out": frames}


def glow_rate(setup: dict, batch: int) -> dict:
    """Our encode + decode of ``batch`` frames: seconds, GFLOP/s and the matmul peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ad_flow.recipe import RECIPE as ad

    args = argparse.Namespace(checkpoint=setup["adflow"], glow=setup["glow"],
                              checkpoint_dir="checkpoint")
    model = ad.load_for_test(args, "cpu")
    q = torch.rand(1, 3, 64, 64) - 0.5
    x = torch.rand(batch, 3, 64, 64) - 0.5
    with torch.inference_mode():
        ad.generate(model, q, x, x)  # warm-up, caches the query and the 1x1 inverses
        with FlopCounterMode(display=False) as fc:
            ad.generate(model, q, x, x)
        flops = fc.get_total_flops()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            ad.generate(model, q, x, x)
            times.append(time.perf_counter() - t)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    peak = 0.0
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        peak = max(peak, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    best = min(times)
    return {"seconds": best, "gflops": flops / best / 1e9, "peak": peak,
            "threads": torch.get_num_threads(), "flops_per_frame": flops / batch}


# ----------------------------------------------------------------------------------- peer
def peer_worker(peer: str, setup: dict, scratch: str) -> None:
    """Run the thesis's test.py main() on the prepared frames (subprocess only)."""
    import importlib.util
    import types

    import torch
    import torchvision.utils as tvu

    sys.modules.setdefault("pandas", types.ModuleType("pandas"))  # imported, never used
    if not hasattr(torch, "qr"):
        torch.qr = lambda a, some=True: torch.linalg.qr(a, "reduced" if some else "complete")
    real_save = tvu.save_image

    def save_image(tensor, fp, range=None, **kw):  # noqa: A002 - the removed keyword
        if range is not None:
            kw["value_range"] = range
        return real_save(tensor, fp, **kw)

    tvu.save_image = save_image
    sys.path.insert(0, peer)
    spec = importlib.util.spec_from_file_location("thesis_test", Path(peer) / "test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.utils.save_image = save_image
    work = Path(scratch) / "work"
    work.mkdir(parents=True, exist_ok=True)
    # The thesis reads every file of the source folder as an image: show it the frames only.
    image = Path(scratch) / "image"
    for sub in ("ref_img", "source_img/talk"):
        (image / sub).mkdir(parents=True)
        for f in (Path(setup["image"]) / sub).iterdir():
            if f.suffix in (".jpg", ".png"):
                os.symlink(f.resolve(), image / sub / f.name)
    os.chdir(work)

    from model import Glow as ThesisGlow  # noqa: E402  (the peer's model.py)
    from model import feature_encoder

    t0 = time.perf_counter()
    glow = ThesisGlow(3, 32, 4, False, True)
    ours = torch.load(setup["glow"], weights_only=True)["weights"]
    glow.load_state_dict({k: v.to(glow.state_dict()[k].dtype) for k, v in ours.items()})
    enc = feature_encoder()
    ad = torch.load(setup["adflow"], weights_only=True)["weights"]
    enc.load_state_dict({k.replace("encoder.levels.", "Fencoders.").replace(".linear.",
                                                                             ".Linear."): v
                         for k, v in ad.items() if k.startswith("encoder.")})
    args = argparse.Namespace(refname="query", source="talk", poisson=True, verbose=False)
    mod.main(args, glow, enc)
    print(json.dumps({"inner": time.perf_counter() - t0}))


def run_peer(peer: str, work: Path, setup: dict) -> dict:
    scratch = work / "peer"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    cmd = [sys.executable, __file__, "--peer_worker", peer, "--setup", json.dumps(setup),
           "--scratch", str(scratch)]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(f"peer failed: {out.stderr.strip()[-2000:]}")
    return {"wall": wall, "out": scratch / "work" / "result" / "target_img" / "talk" / "query"}


def agreement(a: Path, b: Path) -> tuple[float, int]:
    """Mean PSNR (dB) between same-named frames of two output folders, at the smaller of the
    two frame sizes (ours pastes back at the query's 256 px, the thesis writes 64 px: the
    larger is brought down with PIL's box filter)."""
    import numpy as np
    from PIL import Image

    from faces.io import read_image

    vals = []
    for p in sorted(a.glob("[0-9]*.png")):
        q = b / p.name
        if q.is_file():
            x, y = read_image(p), read_image(q)
            side = min(x.shape[0], y.shape[0])
            x, y = (np.asarray(Image.fromarray(im).resize((side, side), Image.BOX),
                               dtype=np.float64) for im in (x, y))
            mse = max(((x - y) ** 2).mean(), 1e-10)
            vals.append(10 * np.log10(255**2 / mse))
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


# -------------------------------------------------------------------------------- quality
def quality(work: Path, glow_iter: int, ad_iter: int, size: int, seed: int) -> dict:
    """Train a small Glow + AD-flow on the synthetic set; PSNR against the exact ground truth."""
    import numpy as np
    from PIL import Image

    from ad_flow.recipe import RECIPE as ad
    from lrw.synthetic import SyntheticConfig, SyntheticSet, generate
    from plain_glow.recipe import RECIPE as glow_recipe
    from talking import run
    from training.config import TrainConfig
    from training.loop import train

    syn = work / "syn"
    generate(SyntheticConfig(out=str(syn), words=4, speakers=12, clips=2, frames=29, size=size,
                             queries=2, sources=2, seed=seed), log=lambda *_: None)
    quiet = dict(device="cpu", workers=0, sample_every=0, save_every=0, progress=False,
                 checkpoint_dir=str(work / "qck"), result_dir=str(work / "qres"), seed=seed)
    t0 = time.perf_counter()
    gcfg = glow_recipe.Config(n_flow=8, n_block=3, hidden=128, img_size=size, n_sample=4)
    train(glow_recipe, gcfg, TrainConfig(name="g", batch=16, iter=glow_iter, lr=1e-3, **quiet),
          syn / "train", say=lambda *_: None)
    t_glow = time.perf_counter() - t0
    acfg = ad.Config(glow=str(work / "qck" / "g" / "last.pt"), img_size=size, n_frames=29,
                     cls_hidden="256")
    t0 = time.perf_counter()
    train(ad, acfg, TrainConfig(name="a", batch=4, iter=ad_iter, lr=1e-3, **quiet), syn,
          say=lambda *_: None)
    t_ad = time.perf_counter() - t0

    s = SyntheticSet.load(syn)
    from faces.blend import mouth_box, mouth_mix
    from faces.io import read_image
    from talking.inputs import read_rgb

    top, bottom, left, right = mouth_box(size)

    def small(img):
        return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))

    def sq(x, y):  # per-pixel squared errors, whole image and mouth box
        d = (x.astype(np.float64) - y.astype(np.float64)) ** 2
        return d.mean(), d[top:bottom, left:right].mean()

    # Squared errors are pooled over all frames before taking the PSNR: a mean of per-frame
    # PSNRs would be dominated by the closed-mouth frames, where copying the query is exact.
    errs = {"adflow": [], "copy_query": [], "mix": []}
    for qn in s.query_names:
        for sn in s.source_names:
            args = argparse.Namespace(
                query=qn, source=sn, checkpoint="a", image_dir=str(syn / "image"),
                checkpoint_dir=str(work / "qck"), result_dir=str(work / "qres"), device="cpu",
                batch=16, out_size=None, poisson=True, max_frames=None, fps=None,
                progress=False, glow=None, n_flow=None, n_block=None, affine=False,
                conv_lu=True)
            summary = run(args, ad, say=lambda *_: None)
            out = Path(summary["out_dir"])
            q256 = read_rgb(s.query_path(qn))
            q = small(q256)
            for t, fp in enumerate(sorted(out.glob("[0-9]*.png"))):
                gt = small(s.ground_truth(qn, sn, t, 256))
                gen = read_image(fp)
                src = read_rgb(s.source_folder(sn) / f"{t:03d}.png")
                errs["adflow"].append(sq(gen, gt))
                errs["copy_query"].append(sq(q, gt))
                errs["mix"].append(sq(small(mouth_mix(q256, src)), gt))

    def psnr(mse):
        return float(10 * np.log10(255**2 / max(mse, 1e-10)))

    res = {}
    for k, v in errs.items():
        arr = np.asarray(v)
        res[k] = psnr(arr[:, 0].mean())
        res[k + "_box"] = psnr(arr[:, 1].mean())
    return res | {"glow_seconds": t_glow, "ad_seconds": t_ad, "frames": len(errs["adflow"])}


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30, help="source frames (default 30)")
    p.add_argument("--batch", type=int, default=16, help="test.py --batch (default 16)")
    p.add_argument("--peer", default=None, help="the thesis's ad-flow folder, to time it too")
    p.add_argument("--precision", nargs="+", default=["float32"],
                   choices=["float32", "bf16", "auto"],
                   help="test.py --precision values to time (default float32)")
    p.add_argument("--paste_back", default=None, choices=["region", "query", "replace", "none"],
                   help="test.py --paste_back (default: test.py's, region at the query's 256 "
                        "px; none writes the model's 64 px frames, as the thesis does)")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternating repeats of every run (median reported; default 1)")
    p.add_argument("--quality", action="store_true", help="also the synthetic-set PSNR figure")
    p.add_argument("--no_speed", action="store_true", help="skip the speed part")
    p.add_argument("--glow_iter", type=int, default=1500, help="quality: Glow iterations")
    p.add_argument("--ad_iter", type=int, default=300, help="quality: AD-flow iterations")
    p.add_argument("--size", type=int, default=32, help="quality: image size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer_worker:
        peer_worker(args.peer_worker, json.loads(args.setup), args.scratch)
        return 0

    with tempfile.TemporaryDirectory(prefix="talking_speed_") as tmp:
        work = Path(tmp)
        if not args.no_speed:
            setup = prepare(work, args.frames, args.seed)
            n = setup["n"]
            print(f"frames: {setup['origin']}; Glow 64x64 K=32 L=4 additive LU hidden 512; "
                  f"ours with --paste_back {args.paste_back or 'region (the default)'}")
            walls: dict[str, list[float]] = {}
            firsts: dict[str, list[float]] = {}
            outs: dict[str, Path] = {}
            for r in range(args.repeats):  # alternating, each run a fresh process
                for prec in args.precision:
                    o = run_ours(work, setup, args.batch, prec, f"ours_{prec}", args.paste_back)
                    walls.setdefault(prec, []).append(o["wall"])
                    firsts.setdefault(prec, []).append(o["first"])
                    outs[prec] = o["out"]
                    print(f"  repeat {r}: ours --precision {prec}: {o['wall']:.1f} s "
                          f"(job's own line: {o['line']})", flush=True)
                if args.peer:
                    peer = run_peer(str(Path(args.peer).resolve()), work, setup)
                    walls.setdefault("thesis", []).append(peer["wall"])
                    print(f"  repeat {r}: thesis test.py: {peer['wall']:.1f} s", flush=True)
            for prec in args.precision:
                w = statistics.median(walls[prec])
                print(f"ours  test.py --precision {prec}: {w:.1f} s for {n} frames = "
                      f"{w / n:.3f} s/frame end to end (median of {len(walls[prec])}), first "
                      f"frame on disk after {statistics.median(firsts[prec]):.1f} s")
            rate = glow_rate(setup, args.batch)
            print(f"ours  Glow encode+decode of {args.batch} frames (float32): "
                  f"{rate['seconds']:.2f} s, "
                  f"{rate['flops_per_frame'] / 1e9:.1f} GFLOP/frame, {rate['gflops']:.1f} "
                  f"GFLOP/s = {100 * rate['gflops'] / rate['peak']:.0f}% of the fp32 matmul "
                  f"peak ({rate['peak']:.1f} GFLOP/s, {rate['threads']} threads)")
            if args.peer:
                pw = statistics.median(walls["thesis"])
                print(f"peer  thesis test.py: {pw:.1f} s for {n} frames = "
                      f"{pw / n:.3f} s/frame end to end (median of {len(walls['thesis'])})")
                for prec in args.precision:
                    ratios = [a / b for a, b in zip(walls["thesis"], walls[prec], strict=True)]
                    db, k = agreement(outs[prec], peer["out"])
                    print(f"speed-up --precision {prec}: {statistics.median(ratios):.2f}x end "
                          f"to end (per repeat {min(ratios):.2f}-{max(ratios):.2f}); agreement "
                          f"with the thesis's frames {db:.1f} dB PSNR over {k} frames")
                print("(same weights; frame differences come from the blending solver, the "
                      "paste-back and, under bf16, the conditioners' precision)")
            if len(args.precision) > 1:
                for prec in args.precision[1:]:
                    db, k = agreement(outs[prec], outs[args.precision[0]])
                    print(f"agreement --precision {prec} vs {args.precision[0]}: {db:.1f} dB "
                          f"PSNR over {k} frames")
        if args.quality:
            q = quality(work, args.glow_iter, args.ad_iter, args.size, args.seed)
            print(f"quality on the synthetic set at {args.size} px ({q['frames']} frames; Glow "
                  f"K=8 L=3 hidden 128, {args.glow_iter} it in {q['glow_seconds']:.0f} s; "
                  f"AD-flow {args.ad_iter} it x 4 clips in {q['ad_seconds']:.0f} s): PSNR vs "
                  f"ground truth (pooled over frames), whole image / mouth box: AD-flow "
                  f"{q['adflow']:.2f} / {q['adflow_box']:.2f} dB, copy the query "
                  f"{q['copy_query']:.2f} / {q['copy_query_box']:.2f} dB, blended input "
                  f"{q['mix']:.2f} / {q['mix_box']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
