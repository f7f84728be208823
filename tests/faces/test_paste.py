"""Paste-back (faces.paste, test.py --paste_back / --full_frame) and the alignment record."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces.paste import PasteRegion, crop_to_picture, paste_back, region_mask_256

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from talking import cli as test_cli  # noqa: E402
from training.recipe import Recipe  # noqa: E402


def _outside(region: PasteRegion, to_pic: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: picture pixels whose centre maps outside the region's box (crop at 256)."""
    h, w = shape
    inv = np.linalg.inv(np.vstack([to_pic, [0, 0, 1]]))[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([xx.ravel(), yy.ravel()], 1) @ inv[:, :2].T + inv[:, 2]
    t, b, left, r = region.box
    # a pixel is outside when its whole footprint (+-1 px of the picture) is outside the box
    pad = 1.5 * float(np.hypot(inv[0, 0], inv[0, 1]))
    inside = ((pts[:, 0] > left - 0.5 - pad) & (pts[:, 0] < r - 0.5 + pad) &
              (pts[:, 1] > t - 0.5 - pad) & (pts[:, 1] < b - 0.5 + pad))
    return ~inside.reshape(h, w)


@pytest.mark.parametrize("name", ["mouth", "face"])
@pytest.mark.parametrize("shape", [(256, 256), (300, 220), (97, 131)])
def test_paste_back_leaves_the_outside_untouched(name, shape) -> None:
    rng = np.random.default_rng(1)
    region = PasteRegion.named(name)
    picture = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = paste_back(picture, generated, region)
    assert out.shape == picture.shape and out.dtype == np.uint8
    outside = _outside(region, crop_to_picture(None, shape), shape)
    assert outside.any() and np.array_equal(out[outside], picture[outside])
    assert (out != picture).any()  # and the region did change
    # An original photo tied to the crop by a rotation, a scale and a shift.
    a, s = 0.3, 1.7
    to_photo = np.array([[s * np.cos(a), -s * np.sin(a), 40.0],
                         [s * np.sin(a), s * np.cos(a), -10.0]])
    photo = rng.integers(0, 256, (420, 500, 3), dtype=np.uint8)
    out = paste_back(photo, generated, region, to_photo)
    outside = _outside(region, to_photo, photo.shape[:2])
    assert np.array_equal(out[outside], photo[outside]) and (out != photo).any()


def test_the_region_takes_the_generated_face_in_the_picture_colour() -> None:
    """Inside the region's full-weight core the output is the upsampled model frame, gain-matched
    to the picture (a frame that is the picture darkened comes back as the picture)."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:256, 0:256]
    picture = np.stack([xx, yy, (xx + yy) // 2], 2).astype(np.uint8)
    small = np.asarray(Image.fromarray(picture).resize((64, 64), Image.BILINEAR))
    dark = (small.astype(np.float64) * 0.7).round().astype(np.uint8)
    out = paste_back(picture, dark, PasteRegion.named("mouth"))
    t, b, left, r = PasteRegion.named("mouth").box
    core = (slice(t + 12, b - 12), slice(left + 12, r - 12))
    assert region_mask_256(PasteRegion.named("mouth"))[core].min() == 1.0
    err = np.abs(out[core].astype(int) - picture[core].astype(int))
    assert err.mean() < 3.0, err.mean()  # without the gain it would be ~30% darker
    del rng


def _fake_recipe(size: int = 32, region: str = "mouth") -> Recipe:
    """A model whose every output is random noise (so the pasted region cannot pass for the
    query by accident)."""
    r = Recipe()
    r.GENERATES = True
    r.DEFAULT_CHECKPOINT = "fake.pt"
    r.NEEDS_MIX = True
    r.PASTE_REGION = region
    r.load_for_test = lambda args, device: torch.nn.Identity()
    r.model_size = lambda model: size
    gen = torch.Generator().manual_seed(0)
    r.generate = lambda model, query, mix, source, args: torch.rand(
        mix.shape, generator=gen) - 0.5
    return r


def _image_dir(root: Path, query: np.ndarray, n: int = 4) -> Path:
    (root / "ref_img").mkdir(parents=True)
    Image.fromarray(query).save(root / "ref_img" / "anna_256.png")
    src = root / "source_img" / "talk"
    src.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((256, 256, 3), 30 * i, np.uint8)).save(src / f"{i:03d}.png")
    return root


def _args(image_dir: Path, res: Path, *extra: str, query: str = "anna", source: str = "talk"):
    return test_cli.build_parser("ad-flow").parse_args(
        ["--source", source, query, "--image_dir", str(image_dir), "--result_dir", str(res),
         "--no_progress", *extra])


def test_job_pastes_back_at_the_query_size_outside_untouched(tmp_path) -> None:
    from talking import run

    rng = np.random.default_rng(3)
    query = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image_dir = _image_dir(tmp_path / "image", query)
    for region in ("mouth", "face"):
        summary = run(_args(image_dir, tmp_path / region, "--batch", "3"),
                      _fake_recipe(32, region))
        out = Path(summary["out_dir"])
        outside = _outside(PasteRegion.named(region), crop_to_picture(None, (256, 256)),
                           (256, 256))
        for i in range(4):
            frame = np.asarray(Image.open(out / f"{i:03d}.png"))
            assert frame.shape == (256, 256, 3)
            assert np.array_equal(frame[outside], query[outside])
            assert (frame[~outside] != query[~outside]).any()
        grid = np.asarray(Image.open(out / "grid.png"))
        assert grid.shape == (3 * 258 + 2, 4 * 258 + 2, 3)  # 256 px tiles (>= 128)
        assert summary["frame_size"] == (256, 256)
    # --out_size still resizes what is written
    summary = run(_args(image_dir, tmp_path / "o", "--out_size", "200"), _fake_recipe(32))
    assert Image.open(Path(summary["out_dir"]) / "000.png").size == (200, 200)


def _photo(shared_faces: Path, tmp: Path) -> Path:
    """A real face inside a larger, non-square photo (grey margins, the face off-centre)."""
    face = np.asarray(Image.open(shared_faces / "ref_img" / "obama_256.jpg").convert("RGB"))
    photo = np.full((380, 330, 3), 120, np.uint8)
    photo[70:326, 40:296] = face
    path = tmp / "photos" / "obama.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(photo).save(path)
    return path


def test_alignment_record_round_trips_within_a_pixel(tmp_path, shared_faces) -> None:
    """The record's transform, applied to the photo, gives back the written crop (JPEG error
    only), and moving it by one pixel is clearly worse: it locates the crop within a pixel."""
    import cv2

    from preprocess import main as preprocess

    photo_path = _photo(shared_faces, tmp_path)
    image_dir = tmp_path / "image"
    assert preprocess([str(photo_path), "--image_dir", str(image_dir), "--no-progress"]) == 0
    rec = json.loads((image_dir / "ref_img" / "obama_256.json").read_text())
    assert rec["photo_size"] == [330, 380] and rec["crop_size"] == 256
    assert (image_dir / "ref_img" / rec["photo"]).resolve() == photo_path.resolve()
    m = np.asarray(rec["photo_to_crop"])
    photo = np.asarray(Image.open(photo_path)).astype(np.float32)
    crop = np.asarray(Image.open(image_dir / "ref_img" / "obama_256.jpg")).astype(np.float32)

    def err(matrix) -> float:
        again = cv2.warpAffine(photo, matrix, (256, 256), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        return float(np.abs(again[40:220, 40:220] - crop[40:220, 40:220]).mean())

    exact = err(m)
    assert exact < 3.0, exact
    for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
        shifted = m.copy()
        shifted[:, 2] += (dx, dy)
        assert err(shifted) > exact + 1.0


def test_full_frame_pastes_into_the_original_photo(tmp_path, shared_faces, capsys) -> None:
    from preprocess import main as preprocess
    from talking import run
    from talking.inputs import load_alignment, resolve_query

    photo_path = _photo(shared_faces, tmp_path)
    image_dir = tmp_path / "image"
    assert preprocess([str(photo_path), "--image_dir", str(image_dir), "--no-progress"]) == 0
    shutil.copytree(shared_faces / "source_img" / "ellen", image_dir / "source_img" / "ellen",
                    ignore=lambda d, names: [n for n in names if n[:3] > "002"])
    summary = run(_args(image_dir, tmp_path / "res", "--full_frame", query="obama",
                        source="ellen"), _fake_recipe(64))
    photo = np.asarray(Image.open(photo_path))
    _, to_photo = load_alignment(resolve_query("obama", image_dir)[0])
    outside = _outside(PasteRegion.named("mouth"), to_photo, photo.shape[:2])
    for i in range(3):
        frame = np.asarray(Image.open(Path(summary["out_dir"]) / f"{i:03d}.png"))
        assert frame.shape == photo.shape
        diff = np.abs(frame.astype(int) - photo.astype(int))
        assert diff[outside].max() <= 1 and diff[~outside].max() > 10
    assert summary["frame_size"] == (330, 380)

    # a query without a record, a record whose photo is gone: one line each, exit 1
    Image.fromarray(photo[:256, :256]).save(image_dir / "ref_img" / "old_256.jpg")
    rc = test_cli.main(["--source", "ellen", "old", "--full_frame", "--image_dir",
                        str(image_dir), "--result_dir", str(tmp_path / "res"), "--no_progress",
                        "--checkpoint", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "old_256.json" in err and "preprocess.py" in err
    photo_path.unlink()
    rc = test_cli.main(["--source", "ellen", "obama", "--full_frame", "--image_dir",
                        str(image_dir), "--result_dir", str(tmp_path / "res"), "--no_progress",
                        "--checkpoint", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "obama.png" in err and "missing" in err


def test_a_model_that_changes_nothing_changes_nothing_at_full_resolution() -> None:
    """--paste_back region adds the model's change: a frame equal to the query as the model
    saw it gives back the full-resolution query exactly (replace would blur the region)."""
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    seen = np.asarray(Image.fromarray(picture).resize((32, 32), Image.BILINEAR))
    region = PasteRegion.named("mouth")
    assert np.array_equal(paste_back(picture, seen, region, reference=seen), picture)
    assert not np.array_equal(paste_back(picture, seen, region), picture)
    darker = (seen.astype(int) - 40).clip(0, 255).astype(np.uint8)
    out = paste_back(picture, darker, region, reference=seen)
    t, b, left, r = region.box
    core = (slice(t + 12, b - 12), slice(left + 12, r - 12))
    want = (picture[core].astype(int) - 40).clip(0, 255)
    assert np.abs(out[core].astype(int) - want).max() <= 1


def test_a_model_that_gives_back_its_mix_gives_back_the_256_px_blend() -> None:
    """--paste_back region for a model fed the mouth mix adds the model's change to the mix made
    at 256 px: a frame equal to the mix as the model saw it gives back that 256 px blend exactly,
    in the query and (through the alignment's map) in an original photo only inside the region."""
    from faces.blend import mouth_mix
    from talking.job import paste_inputs

    rng = np.random.default_rng(6)
    query = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mix256 = mouth_mix(query, source)
    small = lambda im: np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR))  # noqa: E731
    mix_seen, query_seen = small(mix256), small(query)
    region = PasteRegion.named("mouth")
    ref, offset = paste_inputs("region", query_seen, query, mix_seen, mix256)
    assert ref is mix_seen
    assert np.array_equal(paste_back(query, mix_seen, region, reference=ref,
                                     reference_offset=offset), mix256)
    # --paste_back query adds the same frame's change to the query instead: the mouth is blurred
    ref_q, off_q = paste_inputs("query", query_seen, query, mix_seen, mix256)
    assert ref_q is query_seen and off_q is None
    assert not np.array_equal(paste_back(query, mix_seen, region, reference=ref_q), mix256)
    assert paste_inputs("replace", query_seen, query, mix_seen, mix256) == (None, None)
    # a model not fed a mix (pose-flow): region is the change to the query
    assert paste_inputs("region", query_seen, query)[0] is query_seen
    # a darker mouth than the mix is the 256 px mix, darker, in the region's core
    darker = (mix_seen.astype(int) - 40).clip(0, 255).astype(np.uint8)
    out = paste_back(query, darker, region, reference=ref, reference_offset=offset)
    t, b, left, r = region.box
    core = (slice(t + 12, b - 12), slice(left + 12, r - 12))
    want = (mix256[core].astype(int) - 40).clip(0, 255)
    assert np.abs(out[core].astype(int) - want).max() <= 1
    # into an original photo: outside the region the photo's pixels, exactly
    a, s = 0.2, 1.4
    to_photo = np.array([[s * np.cos(a), -s * np.sin(a), 30.0],
                         [s * np.sin(a), s * np.cos(a), 5.0]])
    photo = rng.integers(0, 256, (400, 420, 3), dtype=np.uint8)
    out = paste_back(photo, darker, region, to_photo, reference=ref, reference_offset=offset)
    outside = _outside(region, to_photo, photo.shape[:2])
    assert np.array_equal(out[outside], photo[outside]) and (out != photo).any()
    with pytest.raises(ValueError, match="reference_offset needs reference"):
        paste_back(query, darker, region, reference_offset=offset)
    with pytest.raises(ValueError, match=r"\[256, 256, 3\]"):
        paste_back(query, darker, region, reference=ref, reference_offset=offset[:100])


def test_job_of_a_model_that_gives_back_its_mix_writes_the_256_px_blend(tmp_path) -> None:
    """test.py end to end: frames of a model that returns its mouth mix are the blend made at
    256 px (--paste_back region, the default), and the query's own pixels elsewhere."""
    from faces.blend import mouth_mix
    from talking import run

    rng = np.random.default_rng(7)
    query = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image_dir = _image_dir(tmp_path / "image", query)
    recipe = _fake_recipe(32)
    recipe.generate = lambda model, q, mix, source, args: mix
    out = Path(run(_args(image_dir, tmp_path / "res", "--batch", "3"), recipe)["out_dir"])
    for i in range(4):
        frame = np.asarray(Image.open(out / f"{i:03d}.png"))
        src = np.asarray(Image.open(image_dir / "source_img" / "talk" / f"{i:03d}.png"))
        assert np.array_equal(frame, mouth_mix(query, src))
