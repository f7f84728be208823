"""evaluate.py and the evaluation package: metrics on known answers, the reports, --compare,
and the CLI end to end on tiny checkpoints trained here for a few iterations."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from evaluation import metrics as M
from evaluation.models import BASELINE_BLEND, BASELINE_COPY, System, pasted_label, run_sequence
from evaluation.report import compare_runs, format_table, read_csv, write_report
from evaluation.synthetic import evaluate_synthetic

SIZE = 16


# --------------------------------------------------------------------------------------------
# Metrics with known answers


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_identical_images_psnr_capped_ssim_one():
    a = _image(0)
    assert M.psnr(a, a) == M.PSNR_CAP
    assert M.mouth_psnr(a, a) == M.PSNR_CAP
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.psnr_from_mse(M.mse(a, a)) == M.PSNR_CAP


def test_psnr_of_a_known_error():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)  # MSE 100
    expected = 10 * math.log10(255**2 / 100)
    assert M.mse(a, b) == pytest.approx(100.0)
    assert M.psnr(a, b) == pytest.approx(expected)
    assert M.psnr_from_mse(100.0) == pytest.approx(expected)
    assert M.psnr_from_mse(float("nan")) != M.psnr_from_mse(float("nan"))  # NaN stays NaN


def test_ssim_drops_for_different_images_and_needs_same_shape():
    assert M.ssim(_image(0), _image(1)) < 0.2
    with pytest.raises(ValueError):
        M.ssim(_image(0, 32), _image(0, 16))


def test_ssim_equals_scikit_images_structural_similarity():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(4)
    smooth = np.asarray(Image.fromarray(_image(3, 16)).resize((40, 56), Image.BICUBIC))
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    grey_a, grey_b = smooth[..., 0].copy(), noisy[..., 1].copy()
    for a, b in [(smooth, noisy), (_image(5, 7), _image(6, 7)), (grey_a, grey_b),
                 (smooth, smooth)]:
        theirs = structural_similarity(a, b, win_size=7, data_range=255,
                                       channel_axis=-1 if a.ndim == 3 else None)
        assert M.ssim(a, b) == pytest.approx(theirs, abs=1e-12)
    with pytest.raises(ValueError, match="at least 7"):
        M.ssim(_image(0, 6), _image(1, 6))


def test_mouth_psnr_only_sees_the_mouth_box():
    a = _image(2)
    b = a.copy()
    b[:4] = 0  # far from the mouth
    assert M.mouth_psnr(a, b) == M.PSNR_CAP
    assert M.psnr(a, b) < M.PSNR_CAP
    top, bottom, left, right = M.mouth_box(32)
    b[top, left] ^= 0xFF
    assert M.mouth_psnr(a, b) < M.PSNR_CAP


def _landmarks() -> np.ndarray:
    """A plausible 68-point layout: eyes 60 px apart, a mouth 40 px wide."""
    lm = np.zeros((68, 2))
    lm[36:42] = [100, 100]
    lm[42:48] = [160, 100]
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    lm[48:68] = np.stack([130 + 20 * np.cos(t), 170 + 8 * np.sin(t)], 1)
    return lm


def test_mouth_distance_known_answers():
    lm = _landmarks()
    assert M.mouth_distance(lm, lm) == 0.0
    moved = lm.copy()
    moved[:, 1] += 25  # the whole face moves: mouth-centred, so no change
    assert M.mouth_distance(lm, moved) == pytest.approx(0.0, abs=1e-12)
    # 7 of the 20 mouth points (a lower lip) drop by d: the centroid moves 7d/20, so 7 points
    # are off by 13d/20 and 13 by 7d/20 -> mean 0.455 d, in inter-ocular units (60 px)
    d = 6.0
    opened = lm.copy()
    opened[[56, 57, 58, 59, 65, 66, 67], 1] += d
    assert M.mouth_distance(lm, opened) == pytest.approx(0.455 * d / 60.0)
    assert math.isnan(M.mouth_distance(lm, None))


def test_identity_distance_and_helpers():
    a, b = np.zeros(128), np.full(128, 0.1)
    assert M.identity_distance(a, a) == 0.0
    assert M.identity_distance(a, b) == pytest.approx(0.1 * math.sqrt(128))
    assert math.isnan(M.identity_distance(None, b))
    assert M.mean_finite([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(M.mean_finite([float("nan")]))
    assert M.fraction_below([0.2, 0.7, float("nan"), 0.5], 0.6) == pytest.approx(2 / 3)
    assert M.temporal_jitter(np.stack([_image(0)] * 3)) == 0.0


def test_real_face_metrics_known_answers(shared_faces):
    from talking.inputs import read_rgb

    obama = read_rgb(shared_faces / "ref_img" / "obama_256.jpg")
    leo = read_rgb(shared_faces / "ref_img" / "leo_256.jpg")
    frames = sorted((shared_faces / "source_img" / "ellen").iterdir())
    ellen = read_rgb(frames[0])
    det = M.Landmarker(aligned=False)
    lm_e = det.landmarks(ellen)
    assert lm_e is not None
    assert M.mouth_distance(lm_e, det.landmarks(ellen.copy())) == 0.0
    # another person's mouth has another shape
    assert M.mouth_distance(det.landmarks(obama), lm_e) > 0.0
    d_obama = det.descriptor(obama)
    brighter = np.clip(obama.astype(int) + 12, 0, 255).astype(np.uint8)
    same = M.identity_distance(d_obama, det.descriptor(brighter))
    other = M.identity_distance(d_obama, det.descriptor(leo))
    assert same < M.SAME_PERSON_THRESHOLD
    assert other > same
    # nothing to find in a flat image: None, not an exception
    assert det.landmarks(np.full((256, 256, 3), 128, np.uint8)) is None


# --------------------------------------------------------------------------------------------
# Reports


def _rows():
    return [{"system": "ad-flow", "bpd": 3.2, "psnr": 30.0, "ssim": 0.9, "frames": 4},
            {"system": BASELINE_COPY, "psnr": 28.0, "ssim": 0.95, "frames": 4}]


def test_report_files_and_csv_round_trip(tmp_path):
    paths = write_report(tmp_path / "r", _rows(), "t", ["line"], [{"system": "x", "psnr": 1}])
    for key in ("table", "csv", "chart", "details"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    back = read_csv(paths["csv"])
    assert back[0]["system"] == "ad-flow" and back[0]["psnr"] == 30.0
    assert "bpd" not in back[1]  # empty cell, left out
    table = paths["table"].read_text()
    assert "| ad-flow | 30.00 | 3.200 | 0.9000 |" in table  # PSNR leads bits/dim


def test_compare_merges_runs_and_shares_identical_baselines(tmp_path):
    root = tmp_path / "eval"
    write_report(root / "a", _rows(), "a")
    other = _rows()
    other[0] = {"system": "mi-flow (thesis)", "psnr": 25.0, "ssim": 0.8, "frames": 4}
    write_report(root / "b", other, "b")
    rows, paths = compare_runs(root, ["a", "b"], root / "ab")
    assert [(r["run"], r["system"]) for r in rows] == [
        ("a", "ad-flow"), ("b", "mi-flow (thesis)"), ("all", BASELINE_COPY)]
    assert paths["chart"].is_file()
    with pytest.raises(ValueError, match="no .*metrics.csv"):
        compare_runs(root, ["a", "missing"], root / "x")
    assert "| run | system |" in format_table(rows, ("run", "system"))


# --------------------------------------------------------------------------------------------
# Generation and the synthetic scores


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lrw.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("syn") / "set"
    generate(SyntheticConfig(out=str(root), words=2, speakers=2, clips=2, frames=6, size=SIZE,
                             queries=1, sources=2), log=lambda *a: None)
    return root


def test_systems_that_copy_an_input_score_like_the_baselines(synthetic):
    systems = [System("mix", lambda q, m, s: m),
               System("query", lambda q, m, s: q.expand_as(m)),
               System("gray", lambda q, m, s: torch.zeros_like(m))]
    rows, details = evaluate_synthetic(synthetic, systems, SIZE, progress=False)
    np.testing.assert_equal(rows["mix"], rows[BASELINE_BLEND])  # NaN == NaN here (16 px:
    np.testing.assert_equal(rows["query"], rows[BASELINE_COPY])  # no geometric motion)
    assert rows["gray"]["psnr"] < rows[BASELINE_COPY]["psnr"]
    assert rows[BASELINE_COPY]["frames"] == 12  # 1 query x 2 sources x 6 frames
    assert len(details) == 2 * 5
    rows1, _ = evaluate_synthetic(synthetic, systems, SIZE, pairs=1, seq_frames=3,
                                  progress=False)
    assert rows1["mix"]["frames"] == 3


def test_a_system_that_gives_back_its_mix_pastes_back_as_the_256_px_blend(synthetic):
    """At 256 px (what test.py writes) a system fed the mix that returns it is, with
    --paste_back region, the mouth blend made at 256 px, exactly; pasted onto the query
    (--paste_back query) it is not, and a system not fed the mix is pasted onto the query."""
    from evaluation.models import pasted_label

    mix = System("mix", lambda q, m, s: m, fed_mix=True)
    rows, _ = evaluate_synthetic(synthetic, [mix], SIZE, progress=False, paste="region")
    np.testing.assert_equal(rows[pasted_label("mix")], rows[pasted_label(BASELINE_BLEND)])
    rows_q, _ = evaluate_synthetic(synthetic, [mix], SIZE, progress=False, paste="query")
    assert rows_q[pasted_label("mix")]["psnr"] < rows[pasted_label("mix")]["psnr"]
    unfed = System("mix", lambda q, m, s: m)
    rows_u, _ = evaluate_synthetic(synthetic, [unfed], SIZE, progress=False, paste=True)
    np.testing.assert_equal(rows_u[pasted_label("mix")], rows_q[pasted_label("mix")])


def test_copy_query_matches_the_ground_truth_of_a_closed_mouth(synthetic):
    """Frame 0 of every source has a closed, neutral mouth: ground truth == the query."""
    from evaluation.models import like_model_input
    from lrw.synthetic import SyntheticSet
    from talking.inputs import read_rgb

    syn = SyntheticSet.load(synthetic)
    q, s = syn.query_names[0], syn.source_names[0]
    first = read_rgb(sorted(syn.source_folder(s).glob("*.png"))[0])
    outs = run_sequence(read_rgb(syn.query_path(q)), [first], SIZE, [])
    truth = like_model_input(syn.ground_truth(q, s, 0, 256), SIZE)
    assert M.psnr(truth, outs[BASELINE_COPY][0]) > 45


# --------------------------------------------------------------------------------------------
# The CLI on tiny checkpoints


@pytest.fixture(scope="module")
def tiny_runs(synthetic, tmp_path_factory):
    import train

    ck = tmp_path_factory.mktemp("ck")
    res = tmp_path_factory.mktemp("res")
    common = ["--checkpoint_dir", str(ck), "--result_dir", str(res), "--workers", "0",
              "--sample_every", "0", "--save_every", "0", "--no_progress", "--batch", "2",
              "--lr", "1e-3"]
    assert train.main(["--model", "glow", "-n", "g", str(synthetic), "--img_size", str(SIZE),
                       "--n_flow", "2", "--n_block", "2", "--hidden", "8", "--iter", "2",
                       *common]) == 0
    glow = ck / "g" / "last.pt"
    assert train.main(["--model", "ad-flow", "-n", "ad", str(synthetic), "--glow", str(glow),
                       "--img_size", str(SIZE), "--n_frames", "4", "--cls_hidden", "8",
                       "--iter", "2", *common]) == 0
    return {"glow": glow, "ad": ck / "ad" / "last.pt", "result": res}


def test_evaluate_glow_writes_table_csv_chart(tiny_runs, synthetic):
    res = tiny_runs["result"]
    assert evaluate.main(["--model", "glow", "--checkpoint", str(tiny_runs["glow"]),
                          str(synthetic), "--result_dir", str(res), "--max_frames", "5",
                          "--no_progress"]) == 0
    out = res / "eval" / "g"  # named after the run folder of last.pt
    for name in ("table.md", "metrics.csv", "metrics.png"):
        assert (out / name).is_file()
    rows = {r["system"]: r for r in read_csv(out / "metrics.csv")}
    assert rows["glow"]["bpd_frames"] == 5
    # bits/dim recomputed here from the checkpoint: the same 5 held-out frames (evenly spaced),
    # quantised and dequantised with the seed-0 noise, scored by the Glow in eval mode
    from evaluation.likelihood import heldout_frames
    from glow import bits_per_dim, load_glow, quantize
    from lrw.datasets import load_image
    from training.checkpoint import load_checkpoint

    paths, _ = heldout_frames(synthetic, 5)
    n_bits = load_checkpoint(tiny_runs["glow"])["config"]["model"]["n_bits"]
    glow = load_glow(tiny_runs["glow"]).eval()
    x = quantize(torch.stack([load_image(p, glow.img_size) for p in paths]), n_bits)
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) / 2**n_bits
    with torch.no_grad():
        log_p, logdet, _ = glow(x)
    want = float(bits_per_dim(log_p, logdet, x[0].numel(), n_bits).mean())
    assert rows["glow"]["bpd"] == pytest.approx(want, abs=1e-3)
    assert set(rows) == {"glow", BASELINE_COPY, BASELINE_BLEND, pasted_label(BASELINE_COPY),
                         pasted_label(BASELINE_BLEND)}


def test_evaluate_ad_flow_and_compare(tiny_runs, synthetic):
    res = tiny_runs["result"]
    assert evaluate.main(["--model", "ad-flow", "--checkpoint", str(tiny_runs["ad"]),
                          str(synthetic), "--result_dir", str(res), "--max_frames", "4",
                          "--pairs", "1", "--name", "ad1", "--no_progress"]) == 0
    rows = {r["system"]: r for r in read_csv(res / "eval" / "ad1" / "metrics.csv")}
    plain = {"ad-flow", "ad-flow (relative)", BASELINE_COPY, BASELINE_BLEND}
    assert set(rows) == plain | {pasted_label(lab) for lab in plain}
    ad = rows["ad-flow"]
    assert ad["frames"] == 6 and 0 < ad["ssim"] <= 1 and 0 < ad["psnr"] < M.PSNR_CAP
    assert "bpd" in ad  # its Glow's
    # what test.py writes, at 256 px: the copy baseline is the query itself (dPSNR 0 by
    # definition), the pasted model differs from the query only in its mouth region
    at256 = rows[pasted_label("ad-flow")]
    assert at256["frames"] == 6 and rows[pasted_label(BASELINE_COPY)]["dpsnr"] == 0
    assert at256["dpsnr"] == pytest.approx(
        at256["psnr"] - rows[pasted_label(BASELINE_COPY)]["psnr"], abs=1e-3)
    with open(res / "eval" / "ad1" / "details.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 8  # 4 systems at two sizes
    assert evaluate.main(["--model", "ad-flow", "--checkpoint", str(tiny_runs["ad"]),
                          str(synthetic), "--result_dir", str(res), "--max_frames", "4",
                          "--pairs", "1", "--name", "ad0", "--no_progress",
                          "--paste_back", "none"]) == 0
    rows = {r["system"]: r for r in read_csv(res / "eval" / "ad0" / "metrics.csv")}
    assert set(rows) == plain
    assert evaluate.main(["--compare", "g", "ad1", "--result_dir", str(res)]) == 0
    merged = read_csv(res / "eval" / "compare_g_ad1" / "metrics.csv")
    assert {(r["run"], r["system"]) for r in merged} >= {("g", "glow"), ("ad1", "ad-flow")}
    assert (res / "eval" / "compare_g_ad1" / "metrics.png").is_file()


def test_evaluate_real_sequences(tiny_runs, shared_faces, tmp_path):
    assert evaluate.main(["--model", "ad-flow", "--checkpoint", str(tiny_runs["ad"]),
                          "--real", str(shared_faces), "--query", "obama", "--seq_frames", "2",
                          "--result_dir", str(tmp_path), "--name", "r", "--no_progress"]) == 0
    rows = {r["system"]: r for r in read_csv(tmp_path / "eval" / "r" / "metrics.csv")}
    for key in ("mouth_dist", "id_dist", "id_same", "jitter", "no_face"):
        assert key in rows["ad-flow"], key
    assert rows[BASELINE_COPY]["jitter"] == 0.0
    assert rows["ad-flow"]["real_frames"] == 2


def test_errors_are_one_line_and_exit_1(tiny_runs, synthetic, tmp_path, capsys):
    assert evaluate.main(["--model", "glow", "--checkpoint", str(tmp_path / "none.pt"),
                          str(synthetic), "--result_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "none.pt" in err and "\n" not in err
    assert evaluate.main(["--model", "ad-flow", "--checkpoint", str(tiny_runs["ad"]),
                          str(tmp_path / "nodata"), "--result_dir", str(tmp_path)]) == 1
    assert "nodata" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert evaluate.main(["--model", "ad-flow", "--checkpoint", str(bad), str(synthetic),
                          "--result_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert evaluate.main(["--model", "glow", "--checkpoint", str(tiny_runs["glow"]),
                          "--result_dir", str(tmp_path)]) == 1  # nothing to evaluate
    assert "nothing to evaluate" in capsys.readouterr().err


def test_run_name():
    from pathlib import Path

    assert evaluate.run_name(Path("checkpoint/faces/last.pt")) == "faces"
    assert evaluate.run_name(Path("ck/faces/step_0001000.pt")) == "faces_step_0001000"
    assert evaluate.run_name(Path("ad-flow_total_checkpoint.tar")) == "ad-flow_total_checkpoint"
