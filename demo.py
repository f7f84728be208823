#!/usr/bin/env python
"""The whole pipeline in minutes on a CPU (``make demo``).

Writes a small synthetic talking-face set, trains a Glow, AD-flow on that Glow and MI-flow at
32 x 32 px for fixed budgets, makes one synthetic query speak with one source sequence with both
models (test.py), scores both on held-out identities against the exact ground truth
(evaluate.py: mouth motion first, then identity, beside copying the query and the mouth blend),
then runs the two other systems (content-ae: glasses moved between faces; pose-flow: a face
driven by landmarks) and prints where everything is. Every step calls the command-line scripts' own ``main(argv)``, so the demo runs
what users run. Running it again skips what is already done (the same synthetic set,
checkpoints at their target iteration, outputs newer than their checkpoint).

  python demo.py                 # about 10 minutes on 2 CPU cores (see docs/demo.md)
  python demo.py --tiny          # seconds: tiny sizes, a few iterations (tests, CI)
  python demo.py --out DIR --result_dir DIR
"""

from __future__ import annotations

import sys

from training.allocator import maybe_use_jemalloc

if __name__ == "__main__":
    maybe_use_jemalloc()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from cliargs import add_no_progress  # noqa: E402
from evaluation.html import Section, command_line, write_html  # noqa: E402
from evaluation.report import format_table, read_csv  # noqa: E402
from glow.io import CheckpointError, file_sha256  # noqa: E402
from lrw.synthetic import SyntheticConfig, SyntheticSet, generate  # noqa: E402
from lrw.video import VideoReader, has_audio, write_tone  # noqa: E402
from talking.inputs import resolve_source  # noqa: E402
from training import registry  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.run import Run  # noqa: E402

ROOT = Path(__file__).resolve().parent


@dataclass
class Plan:
    """Sizes and budgets of one demo (``FULL`` for ``make demo``, ``TINY`` for tests)."""

    # synthetic set (lrw.synthetic)
    words: int
    speakers: int
    clips: int
    frames: int
    size: int  # the models' size (px)
    queries: int
    sources: int
    # Glow: flows per block, blocks, coupling width, iterations, batch, learning rate
    glow: dict = field(default_factory=dict)
    ad_flow: dict = field(default_factory=dict)
    mi_flow: dict = field(default_factory=dict)
    eval_frames: int = 128  # bits/dim frames
    out_size: int | None = None  # test.py --out_size (None: pasted back at the query's 256 px)
    seed: int = 0  # of the synthetic set (identities, words) and of every training run
    others: bool = True  # also run content-ae and pose-flow (bench/quality.py turns it off)
    # the set's stored training frames (None: ``size``); 256 stores them as preprocess.py stores
    # real crops, so a mix made at 256 px from training frames is the one test.py makes
    frame_size: int | None = None

    @property
    def stored_size(self) -> int:
        return self.frame_size or self.size


FULL = Plan(
    # 48 training identities (one clip per word each): with 12 the frozen Glow and the encoders
    # did not generalise to unseen faces; 4 x 4 held-out query x source pairs are scored
    words=8, speakers=48, clips=1, frames=15, size=32, queries=4, sources=4, frame_size=256,
    glow=dict(n_flow=8, n_block=3, hidden=128, iter=400, batch=16, lr=5e-4, sample_every=200),
    # --init matched: the encoders start at the closed-form fit to the test's task (the query
    # speaker's own frame nearest in mouth reading as the answer to a 256 px mix); --encoder
    # full: one map over each level's channels and positions, not one shared by the channels;
    # lr 1e-4 keeps the thesis's terms from undoing the fit (1e-3 cost 2.4 dB of dPSNR)
    ad_flow=dict(iter=200, batch=2, n_frames=15, cls_hidden="128", lr=1e-4, cls_lr=1e-3,
                 sample_every=100, init="matched", encoder="full"),
    # --matched_weight: MI-flow also trains on the test's own task (a training speaker with
    # another speaker's mouth mixed in; the answer is the speaker's own frame nearest in mouth
    # reading): it overtakes the mouth blend within 200 iterations (docs/mi_flow.md)
    mi_flow=dict(n_flow=6, n_block=3, hidden=96, iter=200, batch=16, lr=5e-4,
                 sample_every=200, matched_weight=1000),
)
TINY = Plan(
    words=2, speakers=2, clips=2, frames=6, size=16, queries=1, sources=1,
    glow=dict(n_flow=2, n_block=2, hidden=16, iter=3, batch=4, lr=1e-3),
    ad_flow=dict(iter=2, batch=2, n_frames=6, cls_hidden="16", lr=1e-3, cls_lr=1e-3),
    mi_flow=dict(n_flow=2, n_block=2, hidden=16, iter=3, batch=4, lr=1e-3),
    eval_frames=8, out_size=64,
)


def _cli(name: str):
    """The ``main`` of a script beside this file (``train.py``, ``test.py``, ``evaluate.py``),
    loaded by path: ``import test`` could find the standard library's package instead."""
    spec = importlib.util.spec_from_file_location(f"_demo_cli_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class Demo:
    def __init__(self, plan: Plan, out: Path, result_dir: Path, say=print) -> None:
        self.plan, self.out, self.result = plan, out, result_dir
        self.data = out / "synthetic"
        self.ckpt_dir = out / "checkpoint"
        self.say = say
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.outputs: dict[str, dict] = {}
        self.missing: list[str] = []

    # -- helpers -------------------------------------------------------------------------------

    def _step(self, n: int, total: int, text: str) -> float:
        self.say(f"\n[{n}/{total}] {text}")
        return time.perf_counter()

    def _done(self, key: str, t0: float) -> None:
        self.timings[key] = time.perf_counter() - t0

    progress = True  # False: the jobs it runs get --no_progress

    def _run(self, cli: str, argv: list[str]) -> None:
        if not self.progress and "--no_progress" not in argv:
            argv = [*argv, "--no_progress"]
        self.say(f"$ python {cli}.py {' '.join(argv)}")
        rc = _cli(cli)(argv)
        if rc != 0:
            raise RuntimeError(f"{cli}.py exited with status {rc} (see the message above)")

    # -- steps ---------------------------------------------------------------------------------

    def synthetic(self) -> None:
        p = self.plan
        cfg = SyntheticConfig(out=str(self.data), words=p.words, speakers=p.speakers,
                              clips=p.clips, frames=p.frames, size=p.stored_size,
                              queries=p.queries,
                              sources=p.sources, seed=p.seed, workers=2)
        generate(cfg, log=self.say)

    def checkpoint_state(self, name: str, model: str, model_cfg: dict, iters: int,
                         glow: Path | None = None) -> str:
        """'done', 'resume' or 'fresh' for run ``name`` (its last.pt against the plan)."""
        path = Run(name, self.ckpt_dir).last
        if not path.is_file():
            return "fresh"
        try:
            ck = load_checkpoint(path, expect_model=model)
        except CheckpointError:
            return "fresh"
        if path.stat().st_mtime < (self.data / "manifest.json").stat().st_mtime:
            return "fresh"  # trained on an earlier synthetic set
        saved = ck["config"]["model"]
        if any(saved.get(k) != v for k, v in model_cfg.items()):
            return "fresh"
        if glow is not None and ck.get("extra", {}).get("glow", {}).get("sha256") != \
                file_sha256(glow):
            return "fresh"
        return "done" if int(ck["step"]) >= iters else "resume"

    def train(self, name: str, model: str, model_cfg: dict, budget: dict,
              glow: Path | None = None) -> Path:
        """Train run ``name`` to ``budget['iter']`` iterations unless it is there already."""
        state = self.checkpoint_state(name, model, model_cfg, budget["iter"], glow)
        run = Run(name, self.ckpt_dir, self.result)
        last = run.last
        if state == "done":
            self.say(f"{last}: already trained to {budget['iter']} iterations, reused")
            self.skipped.append(name)
            return last
        if state == "fresh":  # another configuration's leftovers would mix into this run
            shutil.rmtree(run.checkpoints, ignore_errors=True)
            shutil.rmtree(run.samples, ignore_errors=True)
        # train/ only: the set's root also holds the held-out query and source identities
        argv = ["--model", model, "-n", name, str(self.data / "train"),
                "--checkpoint_dir", str(self.ckpt_dir), "--result_dir", str(self.result),
                "--iter", str(budget["iter"]), "--batch", str(budget["batch"]),
                "--lr", str(budget["lr"]), "--sample_every", str(budget.get("sample_every", 0)),
                "--save_every", "0", "--log_every", "5", "--workers", "0",
                "--seed", str(self.plan.seed)]
        for k, v in model_cfg.items():
            if isinstance(v, bool):
                continue  # the demo keeps every boolean option at its default
            argv += [f"--{k}", str(v)]
        if state == "resume":
            argv.append("--resume")
        self._run("train", argv)
        return last

    def talk(self, model: str, checkpoint: Path, query: str, source: str) -> None:
        out_root = self.result / model
        out_dir = out_root / "target_img" / source / query
        video = out_dir / "video.mp4"
        if video.is_file() and video.stat().st_mtime >= checkpoint.stat().st_mtime:
            self.say(f"{video}: up to date, reused")
        else:
            argv = ["--model", model, query, "--source", source, "--checkpoint",
                    str(checkpoint), "--image_dir", str(self.data / "image"),
                    "--result_dir", str(out_root), "--audio", str(self.tone(source))]
            if self.plan.out_size:
                argv += ["--out_size", str(self.plan.out_size)]
            self._run("test", argv)
        self.outputs.setdefault(model, {}).update(video=video, grid=out_dir / "grid.png")

    def tone(self, source: str) -> Path:
        """A tone as long as the synthetic source (which has no sound of its own), for the
        talking face's video: test.py --audio."""
        src = resolve_source(source, self.data / "image")
        path = self.data / "audio" / f"{source}.m4a"
        if not path.is_file():
            write_tone(path, len(src.frames) / src.fps)
        return path

    def evaluate(self, model: str, checkpoint: Path, name: str) -> Path:
        csv = self.result / "eval" / name / "metrics.csv"
        if csv.is_file() and csv.stat().st_mtime >= checkpoint.stat().st_mtime and \
                csv.stat().st_mtime >= (self.data / "manifest.json").stat().st_mtime and \
                (csv.parent / "report.html").is_file():
            self.say(f"{csv.parent}: up to date, reused")
        else:
            # AD-flow: the motion test.py uses (--motion relative is scored by
            # bench/seed_table.py; a second AD-flow row would cost the demo's budget)
            extra = ["--motion", "absolute"] if model == "ad-flow" else []
            self._run("evaluate", ["--model", model, "--checkpoint", str(checkpoint),
                                   str(self.data), "--result_dir", str(self.result),
                                   "--name", name, "--max_frames", str(self.plan.eval_frames),
                                   *extra])
        self.outputs.setdefault(model, {})["eval"] = csv.parent
        return csv

    # -- the whole thing ------------------------------------------------------------------------

    def run(self) -> dict:
        p = self.plan
        t_all = time.perf_counter()
        total = 8 if p.others else 6
        t0 = self._step(1, total, f"synthetic set in {self.data}")
        self.synthetic()
        self._done("synthetic set", t0)

        syn = SyntheticSet.load(self.data)
        query, source = syn.query_names[0], syn.source_names[0]

        t0 = self._step(2, total, f"Glow at {p.size} px: K={p.glow['n_flow']} flows x "
                        f"L={p.glow['n_block']} blocks, hidden {p.glow['hidden']}, "
                        f"{p.glow['iter']} iterations")
        glow_cfg = {k: p.glow[k] for k in ("n_flow", "n_block", "hidden")} | {
            "img_size": p.size}
        glow = self.train("demo_glow", "glow", glow_cfg, p.glow)
        self._done("train Glow", t0)

        models: dict[str, Path] = {}
        t0 = self._step(3, total, f"AD-flow on that Glow: {p.ad_flow['iter']} iterations of "
                        f"{p.ad_flow['batch']} clips x {p.ad_flow['n_frames']} frames")
        ad_cfg = {"glow": str(glow), "img_size": p.size, "n_frames": p.ad_flow["n_frames"],
                  "cls_hidden": p.ad_flow["cls_hidden"], "cls_lr": p.ad_flow["cls_lr"],
                  "init": p.ad_flow.get("init", "lstsq"),
                  "encoder": p.ad_flow.get("encoder", "linear")}
        try:
            registry.get("ad-flow")
            models["ad-flow"] = self.train("demo_ad", "ad-flow", ad_cfg, p.ad_flow, glow=glow)
        except ValueError as exc:
            self.missing.append(f"ad-flow ({exc})")
            self.say(f"skipped: {exc}")
        self._done("train AD-flow", t0)

        t0 = self._step(4, total, f"MI-flow at {p.size} px: K={p.mi_flow['n_flow']} x "
                        f"L={p.mi_flow['n_block']}, hidden {p.mi_flow['hidden']}, "
                        f"{p.mi_flow['iter']} iterations"
                        + (", with the matched-pairs term" if p.mi_flow.get("matched_weight")
                           else ""))
        mi_cfg = {k: p.mi_flow[k] for k in ("n_flow", "n_block", "hidden", "matched_weight")
                  if k in p.mi_flow} | {"img_size": p.size}
        try:
            registry.get("mi-flow")
            models["mi-flow"] = self.train("demo_mi", "mi-flow", mi_cfg, p.mi_flow)
        except ValueError as exc:
            self.missing.append(f"mi-flow ({exc})")
            self.say(f"skipped: {exc}")
        self._done("train MI-flow", t0)

        t0 = self._step(5, total, f"test.py: {query} speaks with {source}'s mouth")
        for model, ck in models.items():
            self.talk(model, ck, query, source)
        self._done("test.py", t0)

        t0 = self._step(6, total, "evaluate.py: PSNR/SSIM against the exact ground truth")
        runs = []
        for model, ck in models.items():
            name = f"demo_{model}"
            self.evaluate(model, ck, name)
            runs.append(name)
        if len(runs) > 1:
            self._run("evaluate", ["--compare", *runs, "--name", "demo",
                                   "--result_dir", str(self.result)])
        table_dir = self.result / "eval" / ("demo" if len(runs) > 1 else runs[0]) \
            if runs else None
        self._done("evaluate.py", t0)

        others: dict[str, dict] = {}
        for n, (model, module, what) in enumerate((
                ("content-ae", "content_ae.demo", "content-ae: glasses moved between faces"),
                ("pose-flow", "pose_flow.demo", "pose-flow: a face driven by landmarks")
        ) if p.others else (), 7):
            t0 = self._step(n, total, what)
            try:
                registry.get(model)
                others[model] = importlib.import_module(module).run(
                    self.out, self.result, self.plan is TINY, say=self.say)
            except (ValueError, ImportError) as exc:
                self.missing.append(f"{model} ({exc})")
                self.say(f"skipped: {exc}")
            self._done(model, t0)
        self.timings["total"] = time.perf_counter() - t_all
        summary = {"glow": glow, "models": models, "query": query, "source": source,
                   "table_dir": table_dir, "timings": dict(self.timings),
                   "outputs": self.outputs, "skipped": list(self.skipped),
                   "missing": list(self.missing), "others": others}
        summary["report"] = self.report(summary)
        self.say(self.summary_text(summary))
        self.say(f"Open the report in a browser: {summary['report']}")
        return summary

    def report(self, s: dict) -> Path:
        """``RESULT/demo_report/report.html``: every table, grid, video and loss curve of the
        demo in one folder (files copied into it), with the command and the machine."""
        p = self.plan
        intro = (f"A synthetic talking-face set ({p.words} words, {p.speakers} training "
                 f"speakers, {p.stored_size} px frames, models at {p.size} px), a Glow, AD-flow on that Glow and MI-flow trained "
                 "for minutes, then scored on identities never seen in training against the "
                 "exact ground truth, beside two baselines: copying the query unchanged and "
                 "the mouth blend the models start from. Then content-ae (glasses moved "
                 "between faces) and pose-flow (a face driven by landmarks). Demo-sized "
                 "models: the point is that every piece runs and is measured.")
        sections = [Section("What ran", intro + "\n\n" + "\n".join(
            f"- {k}: {v:.0f} s" for k, v in s["timings"].items()))]
        if s["table_dir"] is not None and (s["table_dir"] / "table.md").is_file():
            text = (s["table_dir"] / "table.md").read_text()
            sections.append(Section("Talking faces: scores", text.split("\n", 1)[1],
                                    [(s["table_dir"] / "metrics.png", "one chart per metric")]))
        for model, o in s["outputs"].items():
            media = []
            ev = o.get("eval")
            if ev is not None:
                media += [(ev / "compare_video.mp4", f"{model} beside the truth and the "
                           "baselines (first scored pair, every frame)"),
                          (ev / "compare_grid.png", f"{model}: the same pair, frames side by "
                           "side"),
                          (ev / "compare_grid_256.png", f"{model}: the same pair at 256 px, as "
                           "test.py writes it (pasted back), beside the truth and the baselines "
                           "made at 256 px")]
            if "video" in o:
                media += [(o["video"], f"test.py's video: {s['query']} with the mouth of "
                           f"{s['source']}"),
                          (o["grid"], "test.py's grid (rows: source, mouth blend, output)")]
            sections.append(Section(f"Talking faces: {model}", "", media))
        for model, o in s.get("others", {}).items():
            media = [(Path(o["eval"]) / "compare_grid.png", f"{model}: the first pairs beside "
                      "the answer and the baselines")] if o.get("eval") else []
            media += [(o[k], f"{model}: {k} from test.py") for k in ("grid", "video")
                      if o.get(k)]
            sections.append(Section(model, str(o.get("table", "")), media))
        curves = [(d / "loss.png", d.name) for d in sorted(self.result.glob("sample_*"))
                  if (d / "loss.png").is_file()]
        curves += [(d / "diagnostics.png", f"{d.name}: held-out diagnostics")
                   for d in sorted(self.result.glob("sample_*"))
                   if (d / "diagnostics.png").is_file()]
        sections.append(Section("Training curves", "", curves))
        argv = ["--tiny"] if p is TINY else []
        argv += ["--out", str(self.out), "--result_dir", str(self.result)]
        return write_html(self.result / "demo_report", "flowdisentangle demo", sections,
                          command_line("demo.py", argv))

    def summary_text(self, s: dict) -> str:
        p = self.plan
        lines = ["", "=" * 78, "Demo finished: what happened and where to look", "=" * 78, "",
                 f"Data: a synthetic talking-face set ({p.words} words, {p.speakers} training "
                 f"speakers, training frames stored at {p.stored_size} px, models at {p.size} px) "
                 f"in {self.data}. Queries and sources "
                 "are identities never seen in training, and the exact ground truth of every "
                 "generated frame is known.", "",
                 "Trained (checkpoints in " + str(self.ckpt_dir) + "):",
                 f"  Glow     K={p.glow['n_flow']} L={p.glow['n_block']} hidden "
                 f"{p.glow['hidden']}, {p.glow['iter']} iterations -> {s['glow']}"]
        if "ad-flow" in s["models"]:
            lines.append(f"  AD-flow  encoders on that frozen Glow (--encoder "
                         f"{p.ad_flow.get('encoder', 'linear')} --init "
                         f"{p.ad_flow.get('init', 'lstsq')}), {p.ad_flow['iter']} "
                         f"iterations -> {s['models']['ad-flow']}")
        if "mi-flow" in s["models"]:
            lines.append(f"  MI-flow  K={p.mi_flow['n_flow']} L={p.mi_flow['n_block']} hidden "
                         f"{p.mi_flow['hidden']}, {p.mi_flow['iter']} iterations"
                         + (f", --matched_weight {p.mi_flow['matched_weight']}"
                            if p.mi_flow.get("matched_weight") else "")
                         + f" -> {s['models']['mi-flow']}")
        if s["skipped"]:
            lines.append(f"  (reused from an earlier run: {', '.join(s['skipped'])})")
        for miss in s["missing"]:
            lines.append(f"  not available: {miss}")
        lines += ["", f"Talking faces ({s['query']} with the mouth motion of {s['source']}):"]
        for model, o in s["outputs"].items():
            if "video" in o:
                lines.append(f"  {model:8s} video {o['video']}{_video_facts(o['video'])}")
                lines.append(f"  {'':8s} grid  {o['grid']}  (rows: source, mouth blend, "
                             "output)")
        if s["table_dir"] is not None and (s["table_dir"] / "metrics.csv").is_file():
            rows = read_csv(s["table_dir"] / "metrics.csv")
            label_keys = ("run", "system") if any("run" in r for r in rows) else ("system",)
            lines += ["", "Scores on held-out identities of the synthetic set, against the exact "
                      "ground truth. 'motion err' compares the mouth states read back from "
                      "the output, as deviations from their temporal mean, with the truth's (1 "
                      "= any static mouth; 0 = the true motion), 'open err' the same for the "
                      "mouth's opening alone; 'state err' compares the states themselves; "
                      "'reader fit' says how well the reader explains the mouth (grey levels: "
                      "the truth 0.3; far above a few, the mouth is not the query's and the "
                      "readings are guesses); 'PSNR' and 'dPSNR vs copy' say how well "
                      "the face is kept. Baselines: copying the query unchanged, and the mouth "
                      "blend the models start from.", "",
                      format_table(_short(rows), label_keys).rstrip(), "",
                      f"  table {s['table_dir'] / 'table.md'}",
                      f"  chart {s['table_dir'] / 'metrics.png'}"]
        for model, o in s.get("others", {}).items():
            lines += ["", f"{model} ({o.get('seconds', 0):.0f} s): grid {o.get('grid')}"]
            if o.get("table"):
                lines += ["", str(o["table"]).rstrip()]
        lines += ["", f"Training samples and loss curves: {self.result}/sample_*/",
                  "Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["timings"].items()),
                  "", "These are demo-sized models trained for minutes; docs/demo.md explains "
                  "how to go from here to real data.", ""]
        return "\n".join(lines)


def _video_facts(path: Path) -> str:
    """`` (256x256 px, 15 frames, with sound)`` for a written video ('' when unreadable)."""
    try:
        v = VideoReader(path)
        return (f"  ({v.width}x{v.height} px, {v.declared} frames, "
                f"{'with sound' if has_audio(path) else 'silent'})")
    except (ValueError, OSError):
        return ""


def _short(rows: list[dict]) -> list[dict]:
    """Rows with the count columns dropped (for the terminal)."""
    return [{k: v for k, v in r.items() if k not in ("frames", "bpd_frames", "real_frames")}
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="demo.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and a few iterations per model (seconds; for tests)")
    parser.add_argument("--out", default="demo_data",
                        help="folder of the synthetic set and checkpoints (default: demo_data)")
    parser.add_argument("--result_dir", default=None,
                        help="root of samples, talking faces and tables (default: OUT/result)")
    add_no_progress(parser, "hide the progress bars of the jobs it runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    result = Path(args.result_dir) if args.result_dir else out / "result"
    demo = Demo(TINY if args.tiny else FULL, out, result)
    demo.progress = args.progress
    try:
        demo.run()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
