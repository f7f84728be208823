"""content-ae data: synthetic attributes with exact answers, CelebA conversion, bad input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthface import NEUTRAL, render
from synthface.attributes import (
    KINDS,
    inputs,
    overlay,
    read_manifest,
    removal_truth,
    render_with,
    sample_attribute,
    transfer_truth,
    truth_region,
    write_attribute_set,
)
from synthface.face import sample_identity

ROOT = Path(__file__).resolve().parents[2]


def preprocess(argv: list[str]) -> int:
    name = "_cae_preprocess_cli"
    if name not in sys.modules:  # dataclasses need the module registered while it loads
        spec = importlib.util.spec_from_file_location(name, ROOT / "preprocess.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name].main(argv)


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_touch_only_their_region(kind):
    rng = np.random.default_rng(0)
    ident = sample_identity(rng)
    attr = sample_attribute(rng, kind)
    plain, worn = render(ident, NEUTRAL, 48), render_with(ident, attr, 48)
    _, alpha = overlay(ident, attr, 48)
    changed = np.any(plain != worn, axis=-1)
    assert changed.sum() > 20  # the attribute is visible
    assert not np.any(changed & (alpha == 0))  # nothing outside its region changes
    assert np.array_equal(render_with(ident, None, 48), plain)


def test_glasses_fit_each_identity():
    rng = np.random.default_rng(1)
    attr = sample_attribute(rng, "glasses")
    regions = [overlay(sample_identity(rng), attr, 64)[1] > 0 for _ in range(2)]
    assert not np.array_equal(regions[0], regions[1])  # placed on each face's own eyes
    shapes = {sample_attribute(rng, "glasses").shape for _ in range(40)}
    assert shapes == {"round", "square", "aviator"}


def test_set_has_exact_answers(tmp_path):
    write_attribute_set(tmp_path, "glasses", 24, 3, 3, 2, 2, seed=4)
    man = read_manifest(tmp_path)
    a, b = inputs(man, "test")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "testA/00001.png")), a[1])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "testB/00000.png")), b[0])
    truth = transfer_truth(man, 1, 0)
    reg = truth_region(man, 1, 0)
    assert np.array_equal(truth[~reg], b[0][~reg]) and not np.array_equal(truth, b[0])
    rem = removal_truth(man, 1)
    own = truth_region(man, 1)
    assert np.array_equal(rem[~own], a[1][~own]) and not np.array_equal(rem, a[1])
    # train and test identities are disjoint draws
    idents = [it["identity"] for split in man["sets"].values() for it in split]
    assert len({str(sorted(i.items())) for i in idents}) == len(idents)


def test_attribute_cli(tmp_path, capsys):
    from synthface.attributes import main

    assert main([str(tmp_path / "s"), "--kind", "beard", "--size", "16", "--train_a", "2",
                 "--train_b", "2", "--test_a", "1", "--test_b", "1"]) == 0
    assert len(list((tmp_path / "s/trainA").glob("*.png"))) == 2
    assert main([str(tmp_path / "t"), "--size", "8"]) == 1
    assert capsys.readouterr().err.startswith("error: size 8")


# ---------------------------------------------------------------------------- CelebA

NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
         "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
         "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
         "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
         "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
         "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


def celeba_tree(root: Path, n: int = 8, partition: bool = True, corrupt: bool = False) -> None:
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for k in range(n):
        name = f"{k + 1:06d}.jpg"
        img = np.full((218, 178, 3), 40 * (k % 5), np.uint8)
        img[20:30] = 255  # a band outside the central 178 x 178 crop
        Image.fromarray(img).save(root / "img_align_celeba" / name)
        v = {a: -1 for a in NAMES}
        v["Eyeglasses"] = 1 if k % 2 == 0 else -1
        v["Male"] = 1
        v["No_Beard"] = -1 if k % 4 == 0 else 1
        v["5_o_Clock_Shadow"] = 1 if k == 7 else -1
        rows.append(name + " " + " ".join(f"{v[a]:2d}" for a in NAMES))
    if corrupt:
        (root / "img_align_celeba/000001.jpg").write_bytes(b"\xff\xd8broken")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(NAMES)}\n" + "\n".join(rows))
    if partition:
        (root / "list_eval_partition.txt").write_text(
            "\n".join(f"{k + 1:06d}.jpg {2 if k >= n - 2 else 0}" for k in range(n)))


def test_celeba_through_preprocess(tmp_path, capsys):
    celeba_tree(tmp_path / "celeba")
    out = tmp_path / "glasses"
    assert preprocess(["--celeba", str(tmp_path / "celeba"), "--attr", "Eyeglasses", "--out",
                       str(out), "--size", "32"]) == 0
    counts = {d: len(list((out / d).glob("*.jpg"))) for d in ("trainA", "trainB", "testA",
                                                                "testB")}
    assert counts == {"trainA": 3, "trainB": 3, "testA": 1, "testB": 1}
    assert "trainA 3" in capsys.readouterr().out
    img = Image.open(out / "trainA/000001.jpg")
    assert img.size == (32, 32)
    # the centre crop 178 (rows 20:198 of 218) keeps the band at rows 20:30 at the top edge
    assert np.asarray(img)[0].mean() > 150 and np.asarray(img)[16].mean() < 100
    neg = tmp_path / "neg"
    assert preprocess(["--celeba", str(tmp_path / "celeba"), "--attr", "Eyeglasses",
                       "--negate", "--out", str(neg), "--size", "16"]) == 0
    assert sorted(p.name for p in (neg / "trainB").glob("*")) == \
        sorted(p.name for p in (out / "trainA").glob("*"))
    beard = tmp_path / "beard"
    assert preprocess(["--celeba", str(tmp_path / "celeba"), "--attr", "beard", "--out",
                       str(beard), "--size", "16"]) == 0
    a = {p.name for d in ("trainA", "testA") for p in (beard / d).glob("*")}
    b = {p.name for d in ("trainB", "testB") for p in (beard / d).glob("*")}
    assert a == {"000001.jpg", "000005.jpg"} and "000008.jpg" not in b and len(b) == 5


def test_celeba_bad_input(tmp_path, capsys):
    celeba_tree(tmp_path / "c", partition=False, corrupt=True)
    assert preprocess(["--celeba", str(tmp_path / "c"), "--attr", "Eyeglasses", "--out",
                       str(tmp_path / "o"), "--size", "16", "--n_test", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable" in out
    assert preprocess(["--celeba", str(tmp_path / "c"), "--attr", "Glasses", "--out",
                       str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a CelebA attribute" in err[0] and "Eyeglasses" in err[0]
    (tmp_path / "c/list_attr_celeba.txt").unlink()
    assert preprocess(["--celeba", str(tmp_path / "c"), "--attr", "Bald", "--out",
                       str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no list_attr_celeba.txt" in err[0]
