"""The talking-face job (test.py + talking/): inputs, outputs, errors, a real AD-flow run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_device
from PIL import Image

from ad_flow.recipe import RECIPE as ad
from glow import Glow
from lrw.video import read_video
from talking import TalkingError, resolve_query, resolve_source
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.loop import train
from training.run import resolve_checkpoint

DEVICE = str(run_device())  # the tests that train or run test.py (pytest --device)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from talking import cli as test_cli  # noqa: E402  (test.py is a thin wrapper of it)
from training.recipe import Recipe  # noqa: E402

SIZE = 16


def _image_dir(root: Path, n_frames: int = 5, src_size: int = 200, names=None) -> Path:
    """IMAGE_DIR with ref_img/anna_256.jpg and source_img/talk/{names} + fps.txt."""
    rng = np.random.default_rng(0)
    (root / "ref_img").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
        root / "ref_img" / "anna_256.jpg")
    src = root / "source_img" / "talk"
    src.mkdir(parents=True)
    names = names or [f"{i:03d}.jpg.jpg" for i in range(n_frames)]
    for i, name in enumerate(names):
        img = np.full((src_size, src_size, 3), 10 * i, np.uint8)
        Image.fromarray(img).save(src / name, format="PNG")
    (src / "fps.txt").write_text("30\n")
    return root


def _fake_recipe(size: int = 32, needs_mix: bool = True) -> Recipe:
    """A model that outputs its ``mix`` input: shows exactly what the job feeds a model."""
    r = Recipe()
    r.GENERATES = True
    r.DEFAULT_CHECKPOINT = "fake.pt"
    r.NEEDS_MIX = needs_mix
    r.calls = []
    r.load_for_test = lambda args, device: torch.nn.Identity()
    r.model_size = lambda model: size

    def generate(model, query, mix, source, args):
        r.calls.append((tuple(query.shape), tuple(mix.shape), tuple(source.shape)))
        return mix.clone()

    r.generate = generate
    return r


def _args(image_dir: Path, tmp: Path, **kw):
    parser = test_cli.build_parser("ad-flow")
    argv = ["--source", "talk", "anna", "--image_dir", str(image_dir), "--result_dir",
            str(tmp / "res"), "--checkpoint_dir", str(tmp / "ck"), "--no_progress"]
    for k, v in kw.items():
        argv += [f"--{k}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------------------
# Inputs


def test_source_frames_are_ordered_numerically_with_fps(tmp_path) -> None:
    image_dir = _image_dir(tmp_path / "image", names=["2.jpg.jpg", "10.jpg.jpg", "1.png"])
    (image_dir / "source_img" / "talk" / ".hidden.jpg").write_bytes(b"x")
    src = resolve_source("talk", image_dir)
    assert [p.name for p in src.frames] == ["1.png", "2.jpg.jpg", "10.jpg.jpg"]
    assert src.fps == 30 and src.fps_known
    (image_dir / "source_img" / "talk" / "fps.txt").unlink()
    assert resolve_source("talk", image_dir).fps == 25


def test_missing_inputs_are_one_line_errors_listing_what_exists(tmp_path, capsys) -> None:
    image_dir = _image_dir(tmp_path / "image")
    with pytest.raises(TalkingError) as err:
        resolve_query("bob", image_dir)
    msg = str(err.value)
    assert "\n" not in msg and "anna" in msg and "preprocess.py" in msg
    with pytest.raises(TalkingError) as err:
        resolve_source("nobody", image_dir)
    msg = str(err.value)
    assert "\n" not in msg and "talk" in msg and "preprocess.py --source" in msg
    path, name = resolve_query(str(image_dir / "ref_img" / "anna_256.jpg"), tmp_path)
    assert name == "anna" and path.is_file()

    rc = test_cli.main(["--source", "nobody", "anna", "--image_dir", str(image_dir)])
    err_text = capsys.readouterr().err.strip()
    assert rc == 1 and err_text.count("\n") == 0 and "available sources: talk" in err_text
    rc = test_cli.main(["--source", "talk", "bob", "--image_dir", str(image_dir)])
    err_text = capsys.readouterr().err.strip()
    assert rc == 1 and err_text.count("\n") == 0 and "available queries: anna" in err_text


def test_checkpoint_argument_accepts_run_names(tmp_path) -> None:
    ck = tmp_path / "ck"
    (ck / "myrun").mkdir(parents=True)
    (ck / "myrun" / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(None, ck, "ad-flow_total_checkpoint.tar") == \
        ck / "ad-flow_total_checkpoint.tar"
    assert resolve_checkpoint("myrun", ck, "d") == ck / "myrun" / "last.pt"
    f = tmp_path / "x.pt"
    f.write_bytes(b"x")
    assert resolve_checkpoint(str(f), ck, "d") == f


# -------------------------------------------------------------------------------------------
# The job with a stand-in model


def test_job_writes_frames_video_grid_in_batches(tmp_path, capsys) -> None:
    from talking import run

    image_dir = _image_dir(tmp_path / "image", n_frames=5)
    r = _fake_recipe(size=32)
    summary = run(_args(image_dir, tmp_path, batch=2, paste_back="none"), r)
    out = Path(summary["out_dir"])
    assert out == tmp_path / "res" / "target_img" / "talk" / "anna"
    assert sorted(p.name for p in out.glob("*.png")) == \
        [f"{i:03d}.png" for i in range(5)] + ["grid.png"]
    # one frame first (written early), then chunks of --batch frames
    assert [c[1][0] for c in r.calls] == [1, 2, 2]
    assert all(c[0] == (1, 3, 32, 32) and c[2][1:] == (3, 32, 32) for c in r.calls)
    frames, fps = read_video(out / "video.mp4")
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3) and fps == pytest.approx(30)
    grid = np.asarray(Image.open(out / "grid.png"))
    # 3 rows, 5 frames, tiles of at least 128 px (a 32 px model's frames are upscaled)
    assert grid.shape[0] == 3 * 130 + 2 and grid.shape[1] == 5 * 130 + 2
    assert "5 frames" in capsys.readouterr().out.strip().splitlines()[-1]

    # Outside the mouth box the mix is the query (blending touches only the box).
    q = np.asarray(Image.open(image_dir / "ref_img" / "anna_256.jpg").convert("RGB")
                   .resize((32, 32), Image.BILINEAR)).astype(int)
    o = np.asarray(Image.open(out / "002.png")).astype(int)
    assert np.abs(o[:10] - q[:10]).max() <= 1

    # --no-poisson feeds the source frame itself; --out_size upscales; --max_frames trims.
    run(_args(image_dir, tmp_path, **{"no-poisson": True, "out_size": 48, "max_frames": 3,
                                      "fps": 12, "paste_back": "none"}), r)
    assert sorted(p.name for p in out.glob("0*.png")) == ["000.png", "001.png", "002.png"]
    o = np.asarray(Image.open(out / "002.png"))
    assert o.shape == (48, 48, 3) and np.abs(o.astype(int) - 20).max() <= 1
    frames, fps = read_video(out / "video.mp4")
    assert len(frames) == 3 and fps == pytest.approx(12)


def test_a_model_built_on_the_query_is_pasted_onto_the_query(tmp_path) -> None:
    """--paste_back region adds a model's change to what it builds on: the mix for a model
    that changes the mix, the query for one that does not (AD-flow's --motion relative).
    Stand-in model: it returns the query unchanged, so built on the query it changes
    nothing, while "built on the mix" its change (query - mix) lands on the 256 px mix."""
    from talking import run

    image_dir = _image_dir(tmp_path / "image", n_frames=4)
    r = _fake_recipe(size=32)
    r.generate = lambda model, query, mix, source, args: query.expand_as(mix).clone()
    begun = []
    r.begin_sequence = lambda model, args: begun.append(1)
    query = np.asarray(Image.open(image_dir / "ref_img" / "anna_256.jpg").convert("RGB"))
    frames = {}
    for on_mix in (True, False):
        r.builds_on_mix = lambda args, v=on_mix: v
        out = Path(run(_args(image_dir, tmp_path, batch=2), r)["out_dir"])
        frames[on_mix] = np.asarray(Image.open(out / "003.png")).astype(int)
    assert begun == [1, 1]  # once per source sequence
    assert frames[False].shape == query.shape
    assert np.abs(frames[False] - query.astype(int)).max() <= 1
    assert np.abs(frames[True] - query.astype(int)).max() > 20


def test_chunks_cover_every_frame_once_with_a_small_first_pass() -> None:
    from talking.job import chunks

    assert chunks(5, 2, 0) == [(0, 2), (2, 4), (4, 5)]
    assert chunks(5, 2, 1) == [(0, 1), (1, 3), (3, 5)]
    assert chunks(30, 16, 1) == [(0, 1), (1, 17), (17, 30)]
    assert chunks(3, 16, 1) == [(0, 1), (1, 3)]
    assert chunks(1, 16, 1) == [(0, 1)] and chunks(0, 16, 1) == []
    assert chunks(5, 2, 2) == chunks(5, 2, 0)  # a first pass as large as --batch: no change
    for n, b, f in ((7, 3, 1), (16, 16, 1), (40, 16, 4)):
        covered = [i for s, e in chunks(n, b, f) for i in range(s, e)]
        assert covered == list(range(n))


def test_first_batch_zero_keeps_uniform_chunks(tmp_path) -> None:
    from talking import run

    image_dir = _image_dir(tmp_path / "image", n_frames=5)
    r = _fake_recipe(size=32)
    run(_args(image_dir, tmp_path, batch=2, first_batch=0), r)
    assert [c[1][0] for c in r.calls] == [2, 2, 1]


def test_real_faces_with_a_stand_in_model(shared_faces, tmp_path) -> None:
    from talking import run

    args = _args(shared_faces, tmp_path, max_frames=3)
    args.source, args.query = "ellen", "obama"
    summary = run(args, _fake_recipe(size=64))
    assert summary["frames"] == 3 and summary["fps"] == 25
    # pasted back at the query's own 256 px (the default)
    assert Image.open(Path(summary["out_dir"]) / "000.png").size == (256, 256)
    args = _args(shared_faces, tmp_path, max_frames=3, paste_back="none")
    args.source, args.query = "ellen", "obama"
    summary = run(args, _fake_recipe(size=64))
    assert Image.open(Path(summary["out_dir"]) / "000.png").size == (64, 64)


# -------------------------------------------------------------------------------------------
# AD-flow end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny AD-flow trained for a few iterations on the synthetic set."""
    from lrw.synthetic import SyntheticConfig, generate

    tmp = tmp_path_factory.mktemp("talk")
    generate(SyntheticConfig(out=str(tmp / "syn"), words=2, speakers=2, clips=1, frames=5,
                             size=SIZE, queries=1, sources=1, seed=1), log=lambda *_: None)
    torch.manual_seed(0)
    glow = Glow(3, n_flow=2, n_block=2, hidden=16, img_size=SIZE)
    glow.initialize(torch.rand(8, 3, SIZE, SIZE) - 0.5)
    glow_path = save_checkpoint(tmp / "glow.pt", model_name="glow", model_config=glow.config(),
                                train_config={}, weights=glow.state_dict())
    mcfg = ad.Config(glow=str(glow_path), img_size=SIZE, n_frames=5, cls_hidden="16")
    tcfg = TrainConfig(name="tiny", batch=2, iter=4, lr=1e-3, device=DEVICE, workers=0,
                       sample_every=0, save_every=0, progress=False,
                       checkpoint_dir=str(tmp / "ck"), result_dir=str(tmp / "res"))
    train(ad, mcfg, tcfg, tmp / "syn", say=lambda *_: None)
    return {"root": tmp, "image": tmp / "syn" / "image", "glow": glow_path, "ck": tmp / "ck"}


def test_test_py_with_a_tiny_trained_model(trained, tmp_path, capsys) -> None:
    from lrw.synthetic import SyntheticSet

    syn = SyntheticSet.load(trained["root"] / "syn")
    source, query = syn.source_names[0], syn.query_names[0]
    rc = test_cli.main(["--model", "ad-flow", "--source", source, query,
                        "--image_dir", str(trained["image"]), "--checkpoint", "tiny",
                        "--checkpoint_dir", str(trained["ck"]), "--result_dir",
                        str(tmp_path / "res"), "--batch", "2", "--no_progress",
                        "--device", DEVICE])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "res" / "target_img" / source / query
    n = syn.n_source_frames(source)
    assert len(list(out.glob("0*.png"))) == n
    # the model works at SIZE; the frames are pasted back at the query's 256 px
    assert Image.open(syn.query_path(query)).size == (256, 256)
    assert Image.open(out / "000.png").size == (256, 256)
    frames, _ = read_video(out / "video.mp4")
    assert len(frames) == n
    assert (out / "grid.png").is_file()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{n} frames" in line and "s/frame" in line and str(out) in line


def test_bad_checkpoints_are_one_line_errors(trained, tmp_path, capsys) -> None:
    good = trained["ck"] / "tiny" / "last.pt"
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"f_encoder": Evil()}, evil)
    syn_src = next((trained["image"] / "source_img").iterdir()).name
    syn_q = next((trained["image"] / "ref_img").iterdir()).name.split("_")[0]
    for bad, expect in ((trunc, "truncated"), (evil, "carries code"),
                        (trained["glow"], "'glow' checkpoint")):
        rc = test_cli.main(["--source", syn_src, syn_q, "--image_dir", str(trained["image"]),
                            "--checkpoint", str(bad), "--result_dir", str(tmp_path / "res"),
                            "--no_progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and "\n" not in err and expect in err, err
    assert not (tmp_path / "ran").exists()


def test_query_name_resolves_at_any_recorded_size(tmp_path) -> None:
    from PIL import Image

    from talking.inputs import available_queries, resolve_query

    (tmp_path / "ref_img").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "ref_img" / "query00_64.png")
    path, name = resolve_query("query00", tmp_path)
    assert path.name == "query00_64.png" and name == "query00"
    assert available_queries(tmp_path) == ["query00"]
