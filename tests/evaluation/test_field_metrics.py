"""The field's metrics (evaluation.field_metrics): known answers, the ground truth ranked above
both baselines on the synthetic set (or, for identity-only and blur-only metrics, what they do
measure), networks from local files (randomly initialised here), and evaluate.py's columns:
present with their file, absent (not zero) without it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from evaluation import field_metrics as FM
from evaluation.models import BASELINE_BLEND, BASELINE_COPY, like_model_input, run_sequence
from evaluation.report import read_csv

SIZE = 32


def _image(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# -- known answers ------------------------------------------------------------------------------


def test_ms_ssim_known_answers_and_its_first_scale_is_skimages_gaussian_ssim():
    from skimage.metrics import structural_similarity

    a = np.asarray(Image.fromarray(_image(0, 24)).resize((200, 200), Image.BICUBIC))
    noise = np.random.default_rng(1).normal(0, 20, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    c = np.clip(a + 3 * noise, 0, 255).astype(np.uint8)
    assert FM.ms_ssim(a, a, None) == pytest.approx(1.0)
    assert 0 < FM.ms_ssim(a, c, None) < FM.ms_ssim(a, b, None) < 1
    ours, _ = FM._ssim_parts(a.astype(np.float64), b.astype(np.float64), FM._gaussian())
    theirs = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=255, channel_axis=-1)
    assert ours == pytest.approx(theirs, abs=1e-6)
    with pytest.raises(ValueError, match="176"):
        FM.ms_ssim(a[:100, :100], b[:100, :100], None)


def test_memo_returns_the_value_of_the_same_content_once_and_copies():
    calls = []

    def measure(a, b):
        calls.append(1)
        return np.array([float(a.sum()), float(b.sum())])

    a, b = _image(5, 16), _image(6, 16)
    first, twin = FM._memo_map("test", [[a, b], [a.copy(), b]], measure)
    assert len(calls) == 1  # the same content twice in one call: measured once
    first[0] = -1.0  # the caller's copy, not the memo's
    assert twin[0] == float(a.sum())
    [again] = FM._memo_map("test", [[a.copy(), b.copy()]], measure)  # other arrays
    assert len(calls) == 1 and again[0] == float(a.sum())
    FM._memo_map("test", [[b, a]], measure)  # other content (order matters)
    FM._memo_map("other", [[a, b]], measure)  # another measure
    assert len(calls) == 3
    assert FM._memo_map("test", [[a, b]], lambda *_: None)[0] is not None  # the memo's


def test_sharpness_falls_with_blur_and_jitter_error_with_the_truths_motion():
    import cv2

    img = _image(2, 64)
    blurred = cv2.GaussianBlur(img, (5, 5), 1.5)
    assert FM.laplacian_sharpness(blurred) < 0.5 * FM.laplacian_sharpness(img)
    assert FM.laplacian_sharpness(np.full_like(img, 90)) == 0
    seq = np.stack([_image(s, 16) for s in range(4)])
    assert FM.jitter_error(seq, seq) == 0
    still = np.repeat(seq[:1], 4, 0)
    want = np.abs(np.diff(seq.astype(np.float32) / 255, axis=0)).mean()
    assert FM.jitter_error(still, seq) == pytest.approx(want, rel=1e-6)
    assert math.isnan(FM.jitter_error(seq[:1], seq[:1]))


# -- networks from local files (random weights) -------------------------------------------------


def _lpips_file(path, seed: int = 0):
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    feats = alexnet().features.state_dict()
    widths = (64, 192, 384, 256, 256)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(widths)}
    torch.save({"net": "alex", "backbone": {f"features.{k}": v for k, v in feats.items()},
                "heads": heads}, path)
    return path


def _arcface_file(path, seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, 4), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, 2), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(16, 32))
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 112, 112)), str(path))
    return path


class _TinySync(torch.nn.Module):
    """A SyncNet-shaped network (random weights): both towers to 8 features."""

    def __init__(self) -> None:
        super().__init__()
        self.lip = torch.nn.Sequential(
            torch.nn.Conv3d(3, 4, (5, 7, 7), stride=(1, 8, 8)), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 8))
        self.aud = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(4, 8))

    @torch.jit.export
    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.lip(x / 255)

    @torch.jit.export
    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.aud(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lip(x)


def _syncnet_file(path, seed: int = 0):
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(_TinySync()), str(path))
    return path


def test_lse_offsets_pick_the_shift_that_aligns_audio_and_lips():
    from evaluation.syncnet import VSHIFT, offset_distances

    lip = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    for k in (-3, 0, 4):
        aud = torch.roll(lip, k, 0)  # aud[i + k] == lip[i]
        mdist = offset_distances(lip, aud)
        assert mdist.shape == (2 * VSHIFT + 1,) and int(mdist.argmin()) == VSHIFT + k
        assert float(mdist.median() - mdist.min()) > 0.5  # a clear best offset: confidence


def test_syncnet_file_checks(tmp_path):
    from evaluation.syncnet import SyncNet

    with pytest.raises(ValueError, match="--syncnet .*no such file"):
        SyncNet(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="--syncnet .*forward_lip and forward_aud"):
        SyncNet(_arcface_file(tmp_path / "arc.pt"))
    SyncNet(_syncnet_file(tmp_path / "sync.pt"))


def test_lpips_from_a_local_file(tmp_path):
    lp = FM.LPIPS(_lpips_file(tmp_path / "lpips.pt"))
    a = np.stack([_image(3, 64), _image(4, 64)])
    b = np.stack([_image(3, 64), _image(5, 64)])
    d = lp.distance(a, b)
    assert d[0] == pytest.approx(0, abs=1e-7) and d[1] > 0
    # by hand for one layer set: the same sum over unit-normalised features
    x = torch.from_numpy(a[1:]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(b[1:]).permute(0, 3, 1, 2).float() / 255
    want = sum(((fx - fy) ** 2 * w).sum(1).mean() for fx, fy, w in
               zip(lp._feats(x), lp._feats(y), lp.heads, strict=True))
    assert d[1] == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match="--lpips .*no such file"):
        FM.LPIPS(tmp_path / "none.pt")
    torch.save({"net": "alex"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="--lpips .*not an LPIPS file"):
        FM.LPIPS(tmp_path / "bad.pt")


def test_arcface_from_a_torchscript_file(tmp_path):
    emb = FM.Embedder(_arcface_file(tmp_path / "arc.pt"))
    e = emb.embed(np.stack([_image(6, 32), _image(7, 32)]))
    assert e.shape == (2, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="--arcface .*not a TorchScript file"):
        FM.Embedder(tmp_path / "junk.pt")


# -- the ground truth against both baselines on the synthetic set -------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lrw.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("syn") / "set"
    generate(SyntheticConfig(out=str(root), words=2, speakers=2, clips=1, frames=6, size=SIZE,
                             queries=1, sources=1), log=lambda *a: None)
    return root


@pytest.fixture(scope="module")
def scored(synthetic, tmp_path_factory):
    """Every field metric of the truth, both baselines and the source frames themselves (the
    right motion on the wrong face) for the set's pair, at 32 px."""
    from lrw.synthetic import SyntheticSet
    from talking.inputs import read_rgb, resolve_source

    files = tmp_path_factory.mktemp("nets")
    nets = FM.FieldNets.load(str(_lpips_file(files / "lpips.pt")),
                             str(_arcface_file(files / "arc.pt")), None)
    syn = SyntheticSet.load(synthetic)
    q, s = syn.query_names[0], syn.source_names[0]
    source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
    frames = [read_rgb(p) for p in source.frames]
    query = read_rgb(syn.query_path(q))
    outs = run_sequence(query, frames, SIZE, [])
    truth = np.stack([like_model_input(syn.ground_truth(q, s, t, 256), SIZE)
                      for t in range(len(frames))])
    wrong_face = np.stack([like_model_input(f, SIZE) for f in frames])
    scorer = FM.FieldScorer(nets)
    ref = scorer.references(truth, like_model_input(query, SIZE))
    out = {"truth": scorer.score(truth, ref),
           BASELINE_COPY: scorer.score(outs[BASELINE_COPY], ref, constant=True),
           BASELINE_BLEND: scorer.score(outs[BASELINE_BLEND], ref),
           "wrong face": scorer.score(wrong_face, ref)}
    assert np.abs(truth.astype(int) - outs[BASELINE_COPY].astype(int)).max() > 20  # it talks
    return {k: FM.pool([v]) for k, v in out.items()}


@pytest.mark.parametrize("key,better", [("ms_ssim", "higher"), ("lmd", "lower"),
                                        ("akd", "lower"), ("jitter_err", "lower"),
                                        ("lpips", "lower")])
def test_the_truth_ranks_above_both_baselines(scored, key, better):
    truth, copy, blend = (scored[k][key] for k in ("truth", BASELINE_COPY, BASELINE_BLEND))
    assert all(np.isfinite([truth, copy, blend])), (key, truth, copy, blend)
    if better == "higher":
        assert truth > copy and truth > blend, (key, truth, copy, blend)
    else:
        assert truth < copy and truth < blend, (key, truth, copy, blend)


def test_sharpness_ranks_the_truth_above_both_here_but_measures_blur_only(scored):
    """On the synthetic set the truth's moving mouth has more edges than the copy's closed one
    and the blend's softened paste; that is the set, not the metric: it measures blur (see the
    blur test above), so a sharp static mouth would tie with the truth."""
    s = {k: v["sharp"] for k, v in scored.items()}
    assert s["truth"] > s[BASELINE_COPY] and s["truth"] > s[BASELINE_BLEND], s


def test_identity_metrics_measure_identity_not_motion(scored):
    """CSIM cannot rank the truth above copying the query (the same person, a closed mouth):
    what it must do is keep the truth at the query's identity and drop the wrong face."""
    d = {k: v["csim_dlib"] for k, v in scored.items()}
    assert d[BASELINE_COPY] == pytest.approx(1.0)
    assert d["truth"] > 0.98 and d["truth"] - d["wrong face"] > 0.03, d
    a = {k: v["csim_arcface"] for k, v in scored.items()}  # a random network: only the range
    assert a[BASELINE_COPY] == pytest.approx(1.0, abs=1e-5)
    assert all(-1 <= v <= 1 + 1e-6 for v in a.values()), a


# -- evaluate.py's columns ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ad(synthetic, tmp_path_factory):
    import train

    ck = tmp_path_factory.mktemp("ck")
    common = ["--checkpoint_dir", str(ck), "--result_dir", str(tmp_path_factory.mktemp("r")),
              "--workers", "0", "--sample_every", "0", "--save_every", "0", "--no_progress",
              "--batch", "2", "--lr", "1e-3", "--img_size", str(SIZE), "--iter", "1"]
    assert train.main(["--model", "glow", "-n", "g", str(synthetic), "--n_flow", "1",
                       "--n_block", "2", "--hidden", "4", *common]) == 0
    assert train.main(["--model", "ad-flow", "-n", "ad", str(synthetic), "--glow",
                       str(ck / "g" / "last.pt"), "--n_frames", "4", "--cls_hidden", "4",
                       *common]) == 0
    return ck / "ad" / "last.pt"


def test_evaluate_columns_present_with_their_file_absent_without(tiny_ad, synthetic,
                                                                  tmp_path, capsys):
    base = ["--model", "ad-flow", "--checkpoint", str(tiny_ad), str(synthetic), "--result_dir",
            str(tmp_path), "--max_frames", "2", "--seq_frames", "3", "--no_progress"]
    lp, arc = _lpips_file(tmp_path / "lp.pt"), _arcface_file(tmp_path / "arc.pt")
    sync = _syncnet_file(tmp_path / "sync.pt")
    assert evaluate.main([*base, "--name", "with", "--lpips", str(lp), "--arcface", str(arc),
                          "--syncnet", str(sync)]) == 0
    rows = {r["system"]: r for r in read_csv(tmp_path / "eval" / "with" / "metrics.csv")
            if "@256" not in r["system"]}  # (the pasted-back rows are scored apart)
    assert set(rows) == {"ad-flow", "ad-flow (relative)", BASELINE_COPY, BASELINE_BLEND}
    for r in rows.values():  # every system and both baselines carry every column
        for k in ("lpips", "csim_arcface", "ms_ssim", "lmd", "akd", "csim_dlib", "sharp",
                  "jitter_err"):
            assert k in r and np.isfinite(r[k]), (r["system"], k)
        assert "lse_c" not in r and "lse_d" not in r  # no audio: absent
    table = (tmp_path / "eval" / "with" / "table.md").read_text()
    assert "LPIPS ↓" in table and "ArcFace CSIM ↑" in table
    assert "LSE-C/LSE-D: not computed" in table and "dlib-CSIM ↑" in table

    assert evaluate.main([*base, "--name", "without"]) == 0
    rows = {r["system"]: r for r in read_csv(tmp_path / "eval" / "without" / "metrics.csv")
            if "@256" not in r["system"]}
    assert all("lpips" not in r and "csim_arcface" not in r for r in rows.values())
    assert all("ms_ssim" in r for r in rows.values())
    table = (tmp_path / "eval" / "without" / "table.md").read_text()
    assert "LPIPS" not in table and "ArcFace" not in table and "LSE" not in table

    assert evaluate.main([*base, "--name", "none", "--no_field_metrics"]) == 0
    rows = read_csv(tmp_path / "eval" / "none" / "metrics.csv")
    assert all("ms_ssim" not in r and "lmd" not in r for r in rows)

    capsys.readouterr()
    assert evaluate.main([*base, "--lpips", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --lpips") and "missing.pt" in err[0]


# -- the pose job ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pose_scores(tmp_path_factory):
    """The field metrics of the exact answer, copying the source and the landmark warp on the
    first pairs of a small pose set (32 px), with a random LPIPS."""
    import json

    from evaluation.pose import FaceScorer, _resize, field_values
    from evaluation.pose import piecewise_affine_warp as warp
    from faces.io import read_image as _read
    from pose_flow.data import read_landmarks
    from pose_flow.synthetic import PoseSetConfig, generate

    root = tmp_path_factory.mktemp("pose") / "set"
    generate(PoseSetConfig(out=str(root), identities=3, clips=1, frames=2, size=SIZE,
                           eval_identities=2, targets=2, drive_frames=2), log=lambda *_: None)
    nets = FM.FieldNets.load(str(_lpips_file(tmp_path_factory.mktemp("n") / "lp.pt")), None,
                             None)
    man = json.loads((root / "manifest.json").read_text())
    scorer = FaceScorer()
    acc: dict[str, list[dict]] = {}
    for s in man["sources"]:
        for t in man["targets"]:
            src_p = root / "eval" / "sources" / f"{s}.png"
            truth_p = root / "eval" / "truth" / s / f"{t}.png"
            src, truth = _resize(_read(src_p), SIZE), _resize(_read(truth_p), SIZE)
            lm_s, _ = read_landmarks(src_p.with_suffix(".npy"))
            lm_t, _ = read_landmarks(truth_p.with_suffix(".npy"))
            ref_lm, src_desc = scorer.landmarks(truth, lm_t), scorer.descriptor(src, lm_s)
            other = next(o for o in man["sources"] if o != s)  # another identity, same pose
            other_img = _resize(_read(root / "eval" / "truth" / other / f"{t}.png"), SIZE)
            for lab, img in (("truth", truth), ("copy", src),
                             ("warp", warp(src, lm_s, lm_t)), ("other identity", other_img)):
                acc.setdefault(lab, []).append(field_values(
                    img, truth, src, nets, scorer.landmarks(img, lm_t), ref_lm,
                    scorer.descriptor(img, lm_t), src_desc))
    return {lab: {k: float(np.mean([d[k] for d in v])) for k in v[0]}
            for lab, v in acc.items()}


@pytest.mark.parametrize("key,better", [("ms_ssim", "higher"), ("akd", "lower"),
                                        ("lmd", "lower"), ("lpips", "lower")])
def test_pose_truth_ranks_above_copy_and_warp(pose_scores, key, better):
    truth, copy, warp = (pose_scores[k][key] for k in ("truth", "copy", "warp"))
    if better == "higher":
        assert truth > copy and truth > warp, (key, pose_scores)
    else:
        assert truth < copy and truth < warp, (key, pose_scores)


def test_pose_identity_is_identity_only(pose_scores):
    """dlib-CSIM to the source face cannot rank the truth above copying the source (the same
    person, unmoved: near 1); what it must do is tell the source's identity at the target pose
    from another identity at that pose."""
    c = {k: v["csim_dlib"] for k, v in pose_scores.items()}
    assert c["copy"] > 0.98 and c["copy"] >= c["truth"], c
    assert c["truth"] - c["other identity"] > 0.02, c


def test_lse_columns_on_a_real_video_source_with_sound(tiny_ad, shared_faces, tmp_path):
    """A video file with sound as --source: LSE-C/LSE-D for every system and both baselines
    (a random SyncNet: the plumbing, not the values); a silent frame folder: no column, a
    note."""
    from lrw.video import with_tone, write_video

    frames = [np.asarray(Image.open(p).convert("RGB").resize((216, 216)))
              for p in sorted((shared_faces / "source_img" / "ellen").iterdir())[:10]]
    talk = with_tone(write_video(tmp_path / "clips" / "silent.mp4", frames, 25),
                     tmp_path / "clips" / "talk.mp4")
    image = tmp_path / "image"
    (image / "ref_img").mkdir(parents=True)
    Image.open(shared_faces / "ref_img" / "obama_256.jpg").save(image / "ref_img" /
                                                                "obama_256.jpg")
    sync = _syncnet_file(tmp_path / "sync.pt")
    base = ["--model", "ad-flow", "--checkpoint", str(tiny_ad), "--image_dir", str(image),
            "--query", "obama", "--result_dir", str(tmp_path), "--no_progress",
            "--syncnet", str(sync)]
    assert evaluate.main([*base, "--source", str(talk), "--name", "loud"]) == 0
    rows = {r["system"]: r for r in read_csv(tmp_path / "eval" / "loud" / "metrics.csv")
            if "@256" not in r["system"]}
    assert set(rows) == {"ad-flow", "ad-flow (relative)", BASELINE_COPY, BASELINE_BLEND}
    for r in rows.values():
        assert np.isfinite(r["lse_c"]) and r["lse_d"] > 0, r
        assert -1 <= r["csim_dlib"] <= 1 + 1e-9 and r["sharp"] > 0, r  # on real sequences too
    assert rows[BASELINE_COPY]["csim_dlib"] > 0.9  # the query itself, at the model's size
    assert "LSE-C/LSE-D: SyncNet" in (tmp_path / "eval" / "loud" / "table.md").read_text()

    silent = image / "source_img" / "still"
    silent.mkdir(parents=True)
    for i, f in enumerate(frames[:6]):
        Image.fromarray(f).save(silent / f"{i:03d}.png")
    assert evaluate.main([*base, "--source", "still", "--name", "quiet"]) == 0
    rows = read_csv(tmp_path / "eval" / "quiet" / "metrics.csv")
    assert all("lse_c" not in r and "lse_d" not in r for r in rows)
    assert "LSE-C/LSE-D: not computed" in (tmp_path / "eval" / "quiet" / "table.md").read_text()
