"""Checkpoints written before the redesign (commit 1bf087b) load and give bit-identical outputs.

``tests/fixtures/pre_redesign/`` holds what ``make.py`` there recorded at that commit (see its
README.md): two checkpoint files as written then (Glow and MI-flow, xz-compressed, optimiser
state stripped), and ``expected.pt.xz``: every model's test-time outputs on fixed inputs,
and a digest of every tiny run's checkpoint (and of the checkpoint after resuming it for one
more iteration). The other models' checkpoints are too large to commit (AD-flow's sequence
classifier alone is 300 kB), so each run is made again here, with ``train.py`` from the same
seed and data, and must match the recorded digest: then it is the very file 1bf087b wrote.

How each model is loaded and run is in the adapters below, so the interface may change without
touching the assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noise_images

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "pre_redesign"
sys.path.insert(0, str(ROOT))

import train as train_cli  # noqa: E402

# -------------------------------------------------------------------------------------------
# The tiny runs: train.py arguments (relative paths, run in a scratch folder)

COMMON = ["--iter", "2", "--workers", "0", "--no_progress", "--sample_every", "0",
          "--save_every", "0", "--log_every", "1", "--checkpoint_dir", "ck",
          "--result_dir", "res", "--device", "cpu"]
GLOW = ["--img_size", "16", "--n_flow", "2", "--n_block", "2", "--hidden", "8"]
CAE = ["--img_size", "16", "--code", "32", "--sep", "4", "--disc_hidden", "16"]
POSE = ["--img_size", "16", "--n_flow", "1", "--n_block", "2", "--n_header", "2",
        "--hidden", "8"]
RUNS = {
    "glow": ["--model", "glow", "noise", *GLOW, "--batch", "4", "--n_sample", "2"],
    "ad_flow": ["--model", "ad-flow", "syn", "--glow", "ck/glow/last.pt", "--n_frames", "5",
                "--cls_hidden", "16", "--batch", "2", "--diag_pairs", "0"],
    "mi_flow": ["--model", "mi-flow", "syn", *GLOW, "--batch", "4", "--n_sample", "2",
                "--mi_weight", "0.01", "--mi_hidden", "8", "--mi_cond_pool", "2",
                "--diag_pairs", "0"],
    "content_ae_original": ["--model", "content-ae", "cae", *CAE, "--n_down", "3",
                            "--e1_widths", "8", "--e2_widths", "8,8", "--dec_widths", "16,8",
                            "--batch", "4", "--n_display", "2"],
    "content_ae_improved": ["--model", "content-ae", "cae", *CAE, "--arch", "improved",
                            "--e1_widths", "8,8", "--e2_widths", "8,8", "--n_res", "1",
                            "--dec_res", "1", "--mask", "--batch", "4", "--n_display", "2"],
    "pose_flow_none": ["--model", "pose-flow", "pose", *POSE, "--batch", "2", "--n_sample", "2"],
    "pose_flow_warp": ["--model", "pose-flow", "pose", *POSE, "--reference", "warp",
                       "--additive", "--batch", "2", "--n_sample", "2"],
}
COMMITTED = ("glow", "mi_flow")  # the runs whose checkpoint file is committed as well


def make_data(root: Path) -> None:
    """The tiny training sets (seeded) in ``root``: noise/, syn/, cae/, pose/."""
    from lrw.synthetic import SyntheticConfig
    from lrw.synthetic import generate as lrw_generate
    from pose_flow.synthetic import PoseSetConfig
    from pose_flow.synthetic import generate as pose_generate
    from synthface.attributes import write_attribute_set

    noise_images(root / "noise", n=8, size=16)
    lrw_generate(SyntheticConfig(out=str(root / "syn"), words=2, speakers=2, clips=1, frames=5,
                                 size=16, queries=1, sources=1, seed=1,
                                 train_render="direct"),  # the frames 1bf087b drew
                 log=lambda *_: None)
    write_attribute_set(root / "cae", "glasses", 16, 8, 8, 3, 3, seed=5)
    pose_generate(PoseSetConfig(str(root / "pose"), identities=4, clips=1, frames=3, size=16,
                                eval_identities=2, targets=2, drive_frames=5),
                  log=lambda *_: None)


def train(name: str, *extra: str) -> None:
    """``train.py`` for run ``name`` in the current folder (output kept off the terminal)."""
    with contextlib.redirect_stdout(io.StringIO()):
        rc = train_cli.main(["-n", name, *RUNS[name], *COMMON, *extra])
    assert rc == 0, f"train.py for {name} failed ({rc})"


def checkpoint_path(name: str) -> Path:
    return Path("ck") / name / "last.pt"


# Entries of a checkpoint that depend on where the run was (absolute paths, and the sha256 of
# the Glow file, whose checkpoint records its data's absolute path) or on which torch wrote it.
NOT_DIGESTED = (("torch_version",), ("config", "train", "data", "path"),
                ("extra", "glow", "absolute"), ("extra", "glow", "sha256"))
# Options added since, recorded at their defaults, which do not change what those runs compute
# (test_added_options_are_at_their_defaults): left out of the digest, key and value, as if the
# checkpoint did not have them.
ADDED_DEFAULTS = {"ad_flow": {"init_pairs": 192},
                  "mi_flow": {"matched_weight": 0.0, "matched_pairs": 192, "matched_batch": 8,
                              "matched_within": "speaker"}}
ADDED = {("config", "model", k) for v in ADDED_DEFAULTS.values() for k in v}


def digest(obj, where: tuple = ()) -> str:
    """sha256 of a checkpoint's contents (every tensor's dtype, shape and bytes, every other
    value's repr; dicts by sorted key), leaving out :data:`NOT_DIGESTED` and :data:`ADDED`."""
    h = hashlib.sha256()

    def feed(x, at: tuple) -> None:
        if at in NOT_DIGESTED:
            return
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                if (*at, k) in ADDED:
                    continue
                h.update(repr(k).encode())
                feed(x[k], (*at, k))
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for k, v in enumerate(x):
                feed(v, (*at, k))
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(x).encode())

    feed(obj, where)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------
# Adapters: how each model is loaded from its checkpoint and run at test time (the calls the
# shared jobs make). Change these, not the assertions, when the interface changes.

def load(files: dict[str, Path]) -> dict:
    """Each checkpoint in ``files`` (run name -> file; ``ad_flow_glow``: the Glow AD-flow was
    trained on) loaded as the shared jobs load it (outside inference mode, as ``talking.job``
    does)."""
    from glow.io import skip_init
    from training import registry

    models = {"glow": registry.get("glow").load_for_test(
        argparse.Namespace(checkpoint=str(files["glow"])))}
    with skip_init():
        models["ad_flow"] = registry.get("ad-flow").load_for_test(argparse.Namespace(
            checkpoint=str(files["ad_flow"]), glow=str(files["ad_flow_glow"]),
            checkpoint_dir=str(files["ad_flow"].parent)), "cpu")
        models["mi_flow"] = registry.get("mi-flow").load_for_test(
            argparse.Namespace(checkpoint=str(files["mi_flow"])), "cpu")
    for arch in ("original", "improved"):
        name = f"content_ae_{arch}"
        models[name] = registry.load_model(files[name])
    for ref in ("none", "warp"):
        name = f"pose_flow_{ref}"
        models[name] = registry.load_model(files[name])
    return models


def outputs(models: dict, inp: dict) -> dict:
    """Every model's test-time outputs on the fixed inputs ``inp``."""
    from pose_flow.driving import generate as pose_generate
    from training import registry

    out: dict = {}
    with torch.inference_mode():
        glow = models["glow"]
        log_p, logdet, z = glow(inp["x"])
        out["glow"] = {"log_p": log_p, "logdet": logdet, "z": z,
                       "reverse_z": glow.reverse(inp["z"]),
                       "reverse_t0": glow.reverse([None, None], temperature=0.0, batch=1)}

        ad = registry.get("ad-flow")
        out["ad_flow"] = {"generate": ad.generate(models["ad_flow"], inp["query"], inp["mix"],
                                                  inp["source"], None)}

        mi, model = registry.get("mi-flow"), models["mi_flow"]
        log_p, logdet, log_c, z, conds = model(inp["x"])
        out["mi_flow"] = {"log_p": log_p, "logdet": logdet, "log_c": log_c, "z": z}
        for mode in mi.MODES:
            out["mi_flow"][mode] = mi.generate(model, inp["query"], inp["mix"], inp["source"],
                                               argparse.Namespace(mode=mode))

        cae = registry.get("content-ae")
        for arch in ("original", "improved"):
            model = models[f"content_ae_{arch}"]
            a, b = inp["mix"] * 2, inp["source"] * 2  # content-AE images are in [-1, 1]
            out[f"content_ae_{arch}"] = {"transfer": model.transfer(a[:1], b[:1]),
                                         "remove": model.remove(a[:1]),
                                         "grid": cae.transfer_grid(model, a[:1], b[:1])}

        for ref in ("none", "warp"):
            model, lm = models[f"pose_flow_{ref}"], inp["landmarks"]
            state = {"query_lm": lm[0].numpy(), "targets": lm[1:].numpy(), "cursor": 0,
                     "appearance": None}
            args = argparse.Namespace(pose_state=state, temp=0.0)
            drive = [pose_generate(model, inp["query"], None, chunk, args)  # chunk by chunk,
                     for chunk in inp["source"].split(1)]  # as the job calls it
            app = model.appearance(inp["mix"], lm[:2])
            transfer = model.render(model.select_appearance(app, 1, 2), lm[1:], 0.0)
            out[f"pose_flow_{ref}"] = {"drive": torch.cat(drive), "transfer": transfer}
    return out


def fixed_inputs(data: Path) -> dict:
    """Seeded 16 px images in [-0.5, 0.5], latents of the tiny Glow, and three landmark sets
    of the pose set."""
    g = torch.Generator().manual_seed(21)
    files = sorted((data / "pose").rglob("*.npy"))[:3]
    return {
        "x": torch.rand(2, 3, 16, 16, generator=g) - 0.5,
        "query": torch.rand(1, 3, 16, 16, generator=g) - 0.5,
        "mix": torch.rand(2, 3, 16, 16, generator=g) - 0.5,
        "source": torch.rand(2, 3, 16, 16, generator=g) - 0.5,
        "z": [torch.randn(1, 6, 8, 8, generator=g), torch.randn(1, 24, 4, 4, generator=g)],
        "landmarks": torch.from_numpy(np.stack([np.load(f) for f in files]).astype(np.float32)),
    }


def read_xz(path: Path, out: Path | None = None):
    """An ``.xz`` fixture: written out to ``out`` (a checkpoint file), else loaded."""
    raw = lzma.decompress(path.read_bytes())
    if out is None:
        return torch.load(io.BytesIO(raw), weights_only=True)
    out.write_bytes(raw)
    return out


# -------------------------------------------------------------------------------------------
# The checks


@pytest.fixture(scope="module")
def runs(tmp_path_factory, expected) -> dict:
    """The tiny runs made again in a scratch folder: their checkpoints, and the digests of the
    checkpoints after one more iteration (``train.py --resume --iter 3``)."""
    work = tmp_path_factory.mktemp("pre_redesign")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        torch.set_num_threads(1)  # the same computation on any machine (make.py: 1 as well)
        torch.manual_seed(0)
        make_data(work)
        for name in RUNS:
            train(name)
        kept = work / "kept"
        kept.mkdir()
        files = {n: Path(shutil.copy(checkpoint_path(n), kept / f"{n}.pt")) for n in RUNS}
        # the Glow last: AD-flow's resume rebuilds the model on the Glow file it was trained on
        resumed = {}
        for name in [*[n for n in RUNS if n != "glow"], "glow"]:
            train(name, "--resume", "--iter", "3", "--allow_changes")
            resumed[name] = digest(torch.load(checkpoint_path(name), weights_only=True))
        inputs = fixed_inputs(work)
        torch.set_num_threads(threads)
    return {"files": files, "resumed": resumed, "inputs": inputs, "work": work}


def platform() -> dict:
    """What bit-exact float results depend on besides the code: torch's version and the CPU
    kernels it picks (training and some outputs differ in the last bit even by thread count)."""
    return {"torch": torch.__version__.split("+")[0],
            "cpu": torch.backends.cpu.get_cpu_capability()}


@pytest.fixture(scope="module")
def expected() -> dict:
    recorded = read_xz(FIXTURES / "expected.pt.xz")
    if recorded["platform"] != platform():
        pytest.skip(f"the fixtures are bit-exact for {recorded['platform']}, this is "
                    f"{platform()}: run this test where they were recorded")
    return recorded


def _assert_equal(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for k in want:
            _assert_equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_equal(g, w, f"{where}[{k}]")
    else:
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), \
            f"{where}: differs from before the redesign (max |diff| " \
            f"{(got.double() - want.double()).abs().max().item():.3g})"


def test_the_inputs_are_the_recorded_ones(runs, expected) -> None:
    assert digest(runs["inputs"]) == expected["inputs"]


@pytest.mark.parametrize("name", list(RUNS))
def test_train_py_writes_the_checkpoint_it_wrote_before(runs, expected, name) -> None:
    ckpt = torch.load(runs["files"][name], weights_only=True)
    assert digest(ckpt) == expected["checkpoints"][name], \
        f"{name}: train.py no longer writes the checkpoint 1bf087b wrote"


@pytest.mark.parametrize("name", list(ADDED_DEFAULTS))
def test_added_options_are_at_their_defaults(runs, name) -> None:
    model_cfg = torch.load(runs["files"][name], weights_only=True)["config"]["model"]
    assert {k: model_cfg[k] for k in ADDED_DEFAULTS[name]} == ADDED_DEFAULTS[name]


@pytest.mark.parametrize("name", list(RUNS))
def test_resuming_a_checkpoint_gives_the_weights_it_gave_before(runs, expected, name) -> None:
    assert runs["resumed"][name] == expected["resumed"][name], \
        f"{name}: one more iteration from the checkpoint no longer gives the same run"


def test_checkpoints_give_the_outputs_they_gave_before(runs, expected, tmp_path) -> None:
    files = {**runs["files"], "ad_flow_glow": runs["files"]["glow"]}  # the Glow it trained on
    for name in COMMITTED:  # the files 1bf087b wrote, not the ones made again
        files[name] = read_xz(FIXTURES / f"{name}.pt.xz", tmp_path / f"{name}.pt")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: some outputs differ in the last bit with 2 threads
    try:
        got = outputs(load(files), runs["inputs"])
    finally:
        torch.set_num_threads(old)
    _assert_equal(got, expected["outputs"], "outputs")


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_files_are_the_runs_checkpoints(runs, expected, name) -> None:
    committed = read_xz(FIXTURES / f"{name}.pt.xz")
    assert committed["optimizer"] is None  # stripped to keep the fixture small
    made = torch.load(runs["files"][name], weights_only=True)
    made["optimizer"] = None
    assert digest(committed) == digest(made) == expected["stripped"][name], name
