"""The one image reader (faces.io.open_rgb): every mode decoded for what it means or refused in
one line, used by every image read of the project; oversized images are a counted skip."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faces.io as fio
from faces.io import read_image

ROOT = Path(__file__).resolve().parents[2]

# A grey ramp 0..65535 (16 x 16) and the 8-bit levels it stands for.
RAMP16 = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)
RAMP8 = np.floor(RAMP16 / 257 + 0.5).astype(np.uint8)


def _grey(level: np.ndarray) -> np.ndarray:
    return np.repeat(level[..., None], 3, axis=2)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
    assert np.abs(got.astype(int) - _grey(RAMP8)).max() <= 1
    # what convert("RGB") made of it: nearly white
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 250 > got.mean() + 100


def test_32_bit_integer_and_float_grey(tmp_path: Path) -> None:
    Image.fromarray(RAMP16.astype(np.int32)).save(tmp_path / "i32.tif")
    Image.fromarray((RAMP16 / 65535).astype(np.float32)).save(tmp_path / "f.tif")
    for name in ("i32.tif", "f.tif"):
        assert np.abs(read_image(tmp_path / name).astype(int) - _grey(RAMP8)).max() <= 1, name
    # values that have no sound 8-bit reading are refused, naming the file
    Image.fromarray(np.full((4, 4), 200.0, np.float32)).save(tmp_path / "f255.tif")
    Image.fromarray(np.full((4, 4), -5, np.int32)).save(tmp_path / "neg.tif")
    for name, words in (("f255.tif", "outside 0..1"), ("neg.tif", "outside 0..65535")):
        with pytest.raises(fio.ImageReadError, match=words) as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_grey_palette_cmyk_and_8_bit_modes(tmp_path: Path) -> None:
    Image.fromarray(RAMP8).save(tmp_path / "l.png")
    assert np.array_equal(read_image(tmp_path / "l.png"), _grey(RAMP8))
    Image.new("1", (4, 4), 1).save(tmp_path / "one.png")
    assert (read_image(tmp_path / "one.png") == 255).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png") == (200, 30, 40)).all()
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(tmp_path / "c.tif")  # pure cyan
    assert (read_image(tmp_path / "c.tif") == (0, 255, 255)).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    """Half-transparent red over white; fully transparent pixels are the background (white),
    whatever colour they hold (convert("RGB") would show that colour: black here)."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (255, 0, 0, 128)  # top half: red at alpha 128; bottom: black at alpha 0
    path = tmp_path / f"{mode}.png"
    if mode == "RGBA":
        Image.fromarray(rgba, "RGBA").save(path)
        top = np.array([255, 127, 127])
    elif mode == "LA":
        la = np.stack([rgba[..., 0], rgba[..., 3]], axis=2)
        Image.fromarray(la, "LA").save(path)
        top = np.array([255, 255, 255])  # grey level 255 at half alpha over white
    else:  # a palette with one transparent entry (black)
        pal = Image.new("P", (4, 4), 0)
        pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        pal.paste(1, (0, 0, 4, 2))
        pal.save(path, transparency=0)
        top = np.array([255, 0, 0])
    assert np.asarray(Image.open(path).convert("RGB"))[3, 0].tolist() == [0, 0, 0]
    got = read_image(path)
    assert np.abs(got[0, 0].astype(int) - top).max() <= 1
    assert got[3, 0].tolist() == list(fio.BACKGROUND)


def test_exif_orientation_turns_the_photo_upright(tmp_path: Path) -> None:
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)  # red top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    got = read_image(tmp_path / "r.png")
    assert got.shape == (4, 2, 3)
    assert got[0, 1].tolist() == [255, 0, 0]  # now top-right


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "text.png").write_text("hello")
    cases = {"cut.png": "", "text.png": "not a readable image", "none.png": "no such file"}
    for name, words in cases.items():
        with pytest.raises(fio.ImageReadError) as err:
            read_image(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"cannot read {tmp_path / name}: ") and words in msg
        assert "\n" not in msg
    assert issubclass(fio.ImageReadError, ValueError)  # every caller's skip still catches it


def test_oversized_image_is_refused_not_raised(tmp_path: Path, monkeypatch) -> None:
    """PIL's DecompressionBombError (and its warning range) becomes the reader's one-line
    error, so every batch counts it as a skip instead of aborting."""
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 1024 px: over twice the limit
    with pytest.raises(fio.ImageReadError, match="1,024 pixels, over the 300-pixel limit"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 800)  # warning range: refused as well
    with pytest.raises(fio.ImageReadError, match="limit"):
        read_image(path)


def test_every_reader_of_the_project_goes_through_it(tmp_path: Path) -> None:
    """The readers of training, test.py / evaluate.py, the CelebA converter and the pose-flow
    evaluation all decode a 16-bit PNG as the one reader does."""
    from content_ae.celeba import _crop_resize
    from evaluation import pose
    from lrw.datasets import load_image
    from talking.inputs import read_rgb

    path = tmp_path / "g16.png"
    Image.fromarray(RAMP16).save(path)
    want = read_image(path)
    assert abs(float(want.mean()) - float(RAMP8.mean())) < 1
    assert np.array_equal(pose.read_image(path), want)
    assert np.array_equal(read_rgb(path, size=16), want)
    assert np.array_equal(np.asarray(_crop_resize(path, 16, 16)), want)
    tensor = load_image(path, 16)
    assert np.abs((tensor + 0.5).mul(255).round().permute(1, 2, 0).numpy() - want).max() <= 1


def test_no_image_is_opened_outside_the_reader() -> None:
    """No ``Image.open`` / ``cv2.imread`` / ``.convert("RGB")`` of a file anywhere in the
    project but faces/io.py (the search that found every reader, kept as a test)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if set(rel.parts) & {".venv", "tests", ".git"} or rel == Path("faces/io.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = f"{getattr(owner, 'id', '')}.{node.func.attr}"
                if name in ("Image.open", "cv2.imread", "cv2.imdecode", "imageio.imread"):
                    found.append(f"{rel}:{node.lineno} {name}")
    assert found == []


def test_open_rgb_returns_an_independent_rgb_image(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((3, 5, 3), 7, np.uint8)).save(path)
    im = fio.open_rgb(path)
    assert im.mode == "RGB" and im.size == (5, 3)
    path.unlink()  # the file is closed and the pixels are loaded
    assert np.asarray(im).sum() == 7 * 45


def test_likelihood_and_training_data_skip_an_oversized_image(tmp_path: Path,
                                                              monkeypatch) -> None:
    """evaluate.py's bits/dim and train.py's dataset skip and count it (they used to abort)."""
    import torch

    from evaluation.likelihood import bits_per_dim_over
    from lrw.datasets import ImageFolderDataset

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1600 px: a bomb; 64 px: fine
    paths = sorted(tmp_path.glob("*.png"))
    bpd, n = bits_per_dim_over(lambda x: torch.ones(len(x)), paths, 8, 5, progress=False)
    assert n == 3 and bpd == 1.0
    ds = ImageFolderDataset(tmp_path, 8)
    with pytest.warns(UserWarning, match="big.png"):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 4 and ds.n_skipped == 1


def test_image_size_from_the_header_matches_the_reader(tmp_path: Path, monkeypatch) -> None:
    """The header-only size (test.py's non-square check) is the upright picture's, and an
    oversized image is the reader's one-line error there too."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "r.png", exif=exif)
    assert fio.image_size(tmp_path / "r.png") == fio.open_rgb(tmp_path / "r.png").size == (2, 4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3)
    with pytest.raises(fio.ImageReadError, match="limit"):
        fio.image_size(tmp_path / "r.png")


def test_non_square_pictures_are_said_once_per_job(tmp_path: Path) -> None:
    """Every job that stretches pictures to a square says so once: the shared note, and the
    content-ae transfer and pose-flow grid that use it (test.py and evaluate.py say it too)."""
    import torch

    from talking.transfer import load_images

    paths = []
    for i, size in enumerate([(24, 16), (16, 16), (20, 12)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(paths[-1])
    said: list[str] = []
    assert fio.note_non_square(paths, "image", said.append) == 2
    assert said == [f"note: the image {paths[0]} is 24x16, not square (and 1 more): the model "
                    "sees it stretched to a square (align it with preprocess.py for an "
                    "undistorted face)"]
    said.clear()
    assert fio.note_non_square(paths[1:2], "image", said.append) == 0 and not said
    said.clear()
    images, skipped = load_images(paths, 8, 3, said.append)
    assert isinstance(images, torch.Tensor) and images.shape == (3, 3, 8, 8) and skipped == 0
    assert len(said) == 1 and "24x16, not square (and 1 more)" in said[0]
    src = (ROOT / "talking" / "pose_grid.py").read_text()
    assert 'note_non_square(srcs, "source"' in src and 'note_non_square(tgts, "target"' in src
