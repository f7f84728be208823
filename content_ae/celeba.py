"""A/B sets from CelebA (``preprocess.py --celeba``) or any photo folder (``--attr_from``).

CelebA's own files: ``ROOT/img_align_celeba/*.jpg`` and ``ROOT/list_attr_celeba.txt`` (a count
line, a line of the 40 attribute names, then ``FILE v1 .. v40`` with values 1 / -1), also
found under ``ROOT/Anno/``; ``list_eval_partition.txt`` (``FILE 0|1|2``, also under
``ROOT/Eval/``), when present, puts partition 2 in ``testA/ testB/`` and 0, 1 in ``trainA/
trainB/``; without it the first ``--n_test`` of each side are held out (the original's rule).
Images are centre-cropped to 178 x 178 and resized to ``--size`` as the original does.

``--attr beard`` is the original's rule: A = male, no 5 o'clock shadow, and a mustache, a
goatee or not No_Beard; B = male, No_Beard, no shadow (everyone else is left out). ``--negate``
swaps A and B.

``--attr_from FILE.csv PHOTOS``: a CSV of ``filename,attribute`` (1/0, yes/no, true/false,
1/-1) for photos in a folder; each photo is aligned with the project's landmark alignment
(:mod:`faces.align`) and written to trainA/ or trainB/.
"""

from __future__ import annotations

import argparse
import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cliargs import (
    add_no_progress,
    error_exit,
    image_size,
    model_size,
    nonnegative_int,
    positive_int,
)
from faces.align import align_face
from faces.io import ImageReadError, open_rgb, read_image, save_pil, write_image
from faces.landmarks import shared_detector
from synthface.output import replacing

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young").split()
RULES = ("beard",)


@dataclass
class Report:
    """What a conversion did."""

    written: dict = field(default_factory=lambda: {"trainA": 0, "trainB": 0, "testA": 0,
                                                   "testB": 0})
    skipped: int = 0
    first_skipped: str | None = None
    left_out: int = 0  # neither A nor B under the rule

    def skip(self, what: str) -> None:
        self.skipped += 1
        self.first_skipped = self.first_skipped or what

    def line(self, out: Path) -> str:
        w = self.written
        s = (f"wrote {out}: trainA {w['trainA']}, trainB {w['trainB']}, testA {w['testA']}, "
             f"testB {w['testB']}")
        if self.left_out:
            s += f"; {self.left_out} faces fit neither side"
        if self.skipped:
            s += f"; skipped {self.skipped} unreadable (first: {self.first_skipped})"
        return s


def _find(root: Path, name: str, sub: str) -> Path | None:
    for p in (root / name, root / sub / name):
        if p.is_file():
            return p
    return None


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """``(names, {file: values})`` from ``list_attr_celeba.txt``."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a line of attribute names")
    names = lines[1].split()
    table = {}
    for k, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}:{k}: {len(parts) - 1} values for {len(names)} attributes")
        table[parts[0]] = [int(v) for v in parts[1:]]
    return names, table


def side_of(values: list[int], names: list[str], attr: str, negate: bool) -> str | None:
    """``"A"``, ``"B"`` or None (left out) for one face."""
    v = dict(zip(names, values, strict=True))
    if attr == "beard":
        male, shadow = v["Male"] == 1, v["5_o_Clock_Shadow"] == 1
        if male and not shadow and (v["Mustache"] == 1 or v["Goatee"] == 1 or v["No_Beard"] == -1):
            side = "A"
        elif male and not shadow and v["No_Beard"] == 1:
            side = "B"
        else:
            return None
    else:
        side = "A" if v[attr] == 1 else "B"
    if negate:
        side = "B" if side == "A" else "A"
    return side


def _crop_resize(path: Path, size: int, crop: int):
    try:
        im = open_rgb(path)
    except ImageReadError:
        return None
    w, h = im.size
    c = min(crop, w, h)
    left, top = (w - c) // 2, (h - c) // 2
    im = im.crop((left, top, left + c, top + c))
    return im.resize((size, size), Image.BICUBIC)


AB_FOLDERS = ("trainA", "trainB", "testA", "testB")


def _is_ab_set(out: Path) -> bool:
    """Whether ``out`` holds nothing but an A/B set's folders (an earlier conversion)."""
    return all(p.name in AB_FOLDERS and p.is_dir() for p in out.iterdir())


def _replacing_ab_set(out: str | Path, convert, say) -> Report:
    """Run ``convert(folder)`` on a new folder that replaces ``out`` once it succeeds
    (:func:`synthface.output.replacing`: an earlier A/B set in ``out`` is replaced whole; any
    other non-empty folder is refused)."""
    with replacing(out, _is_ab_set, "A/B set (only trainA/ trainB/ testA/ testB/)") as tmp:
        report = convert(tmp)
    say(report.line(Path(out)))
    return report


def convert_celeba(root: str | Path, attr: str, out: str | Path, negate: bool = False,
                   size: int = 128, crop: int = 178, n_test: int = 64,
                   limit: int = 0, say=print) -> Report:
    """Write ``out/{train,test}{A,B}/FILE.jpg`` (see the module docstring); an earlier A/B set
    in ``out`` is replaced, any other non-empty folder refused."""
    return _replacing_ab_set(out, lambda tmp: _convert_celeba(
        root, attr, tmp, negate, size, crop, n_test, limit), say)


def _convert_celeba(root: str | Path, attr: str, out: Path, negate: bool, size: int,
                    crop: int, n_test: int, limit: int) -> Report:
    root, out = Path(root), Path(out)
    if attr not in CELEBA_ATTRS and attr not in RULES:
        raise ValueError(f"--attr {attr}: not a CelebA attribute; choose one of "
                         f"{', '.join(CELEBA_ATTRS)} or the rule {', '.join(RULES)}")
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (give the CelebA root holding "
                         "img_align_celeba/ and list_attr_celeba.txt)")
    attr_file = _find(root, "list_attr_celeba.txt", "Anno")
    if attr_file is None:
        raise ValueError(f"{root}: no list_attr_celeba.txt (looked in {root} and {root / 'Anno'});"
                         " download CelebA's attribute file into the root")
    images = root / "img_align_celeba"
    if not images.is_dir():
        raise ValueError(f"{root}: no img_align_celeba/ folder; unpack img_align_celeba.zip "
                         "into the root")
    names, table = read_attributes(attr_file)
    needed = ("Male", "5_o_Clock_Shadow", "Mustache", "Goatee", "No_Beard") \
        if attr == "beard" else (attr,)
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(f"{attr_file}: no column {', '.join(missing)}; is it CelebA's "
                         "list_attr_celeba.txt?")
    partition = {}
    part_file = _find(root, "list_eval_partition.txt", "Eval")
    if part_file is not None:
        for line in part_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                partition[parts[0]] = int(parts[1])
    rows = sorted(table.items())[:limit] if limit else sorted(table.items())
    if not partition:  # the first --n_test of each side are held out: leave some to train on
        per_side = {"A": 0, "B": 0, None: 0}
        for _, values in rows:
            per_side[side_of(values, names, attr, negate)] += 1
        for side in ("A", "B"):
            if 0 < per_side[side] <= n_test:
                raise ValueError(
                    f"--n_test {n_test} would hold out all {per_side[side]} faces of side "
                    f"{side} (--attr {attr}{' --negate' if negate else ''}) and leave none to "
                    f"train on; give --n_test below {per_side[side]}, e.g. --n_test "
                    f"{max(1, per_side[side] // 5)}")
    report = Report()
    held = {"A": 0, "B": 0}
    for folder in ("trainA", "trainB", "testA", "testB"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for name, values in rows:
        side = side_of(values, names, attr, negate)
        if side is None:
            report.left_out += 1
            continue
        if partition:
            split = "test" if partition.get(name, 0) == 2 else "train"
        else:
            split = "test" if held[side] < n_test else "train"
        img = _crop_resize(images / name, size, crop)
        if img is None:
            report.skip(str(images / name))
            continue
        if split == "test" and not partition:
            held[side] += 1
        save_pil(img, out / f"{split}{side}" / (Path(name).stem + ".jpg"), quality=95)
        report.written[f"{split}{side}"] += 1
    for side in ("A", "B"):
        if report.written[f"train{side}"] == 0 and report.written[f"test{side}"] > 0:
            raise ValueError(f"{root}: every readable face of side {side} "
                             f"({report.written[f'test{side}']}) was held out for testing; "
                             f"give a smaller --n_test")
    if report.written["trainA"] == 0 or report.written["trainB"] == 0:
        raise ValueError(f"{root}: no readable face on the {'A' if not report.written['trainA'] else 'B'}"
                         f" side of --attr {attr}{' --negate' if negate else ''}; "
                         "check the attribute and the images")
    return report


def _truthy(text: str) -> bool | None:
    t = text.strip().lower()
    if t in ("1", "yes", "true", "y", "t"):
        return True
    if t in ("0", "-1", "no", "false", "n", "f"):
        return False
    return None


def convert_folder(csv_path: str | Path, photos: str | Path, out: str | Path,
                   negate: bool = False, size: int = 128, say=print) -> Report:
    """Align every photo named in ``csv_path`` (``filename,attribute``) into
    ``out/trainA`` (attribute true) or ``out/trainB``; faces not found are skipped and counted.
    An earlier A/B set in ``out`` is replaced, any other non-empty folder refused."""
    return _replacing_ab_set(out, lambda tmp: _convert_folder(
        csv_path, photos, tmp, negate, size), say)


def _convert_folder(csv_path: str | Path, photos: str | Path, out: Path, negate: bool,
                    size: int) -> Report:
    csv_path, photos, out = Path(csv_path), Path(photos), Path(out)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: no such CSV (give filename,attribute lines)")
    if not photos.is_dir():
        raise ValueError(f"{photos}: no such photo folder (the folder the CSV's names are in)")
    rows = []
    with open(csv_path, newline="") as fh:
        for k, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{csv_path}:{k}: expected filename,attribute")
            flag = _truthy(row[1])
            if flag is None:
                if k == 1:
                    continue  # a header line
                raise ValueError(f"{csv_path}:{k}: attribute {row[1]!r} is not 1/0, yes/no, "
                                 "true/false")
            rows.append((row[0].strip(), flag != negate))
    report = Report()
    detector = shared_detector(None)
    for name, has in rows:
        path = photos / name
        try:
            image = read_image(path)
        except ValueError:
            report.skip(str(path))
            continue
        det = detector.detect(image, warn=False)
        if det is None:
            report.skip(f"{path} (no face)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligned = align_face(image, det.landmarks, size, "reflect", warn=False)
        folder = "trainA" if has else "trainB"
        write_image(out / folder / (Path(name).stem + ".jpg"), aligned.image)
        report.written[folder] += 1
    if report.written["trainA"] == 0 or report.written["trainB"] == 0:
        raise ValueError(f"{csv_path}: no usable photo on one side (A {report.written['trainA']},"
                         f" B {report.written['trainB']}); both need faces")
    return report


def build_parser():
    p = argparse.ArgumentParser(
        prog="preprocess.py --celeba / --attr_from",
        description="Make an A/B set for train.py --model content-ae (A: faces with the "
                    "attribute).", epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--celeba", metavar="CELEBA_ROOT", help="CelebA root (img_align_celeba/, "
                   "list_attr_celeba.txt, optional list_eval_partition.txt)")
    p.add_argument("--attr", metavar="NAME", help="one of the 40 CelebA attributes (e.g. "
                   "Eyeglasses, Bald, Mouth_Slightly_Open) or beard (the original's rule)")
    p.add_argument("--attr_from", metavar="FILE.csv", help="filename,attribute lines for the "
                   "photos in PHOTO_FOLDER (aligned with the project's face alignment)")
    p.add_argument("paths", nargs="*", metavar="PHOTO_FOLDER", help="--attr_from: the photos")
    p.add_argument("--negate", action="store_true", help="swap A and B (A: without the attribute)")
    p.add_argument("--out", required=True, metavar="DATA", help="output folder (trainA/ trainB/"
                   " testA/ testB/): new or empty, or an earlier A/B set (replaced once the new "
                   "one is complete); any other folder is refused")
    p.add_argument("--size", type=model_size, default=128, help="output size in pixels (default: 128)")
    p.add_argument("--crop", type=image_size, default=178, help="--celeba: centre crop before resizing "
                   "(default: 178, the original's)")
    p.add_argument("--n_test", type=positive_int, default=64, help="--celeba without a partition file: "
                   "faces of each side held out for testing (default: 64)")
    p.add_argument("--limit", type=nonnegative_int, default=0, help="--celeba: read only the first N faces "
                   "(0: all)")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    return p


def cli(argv: list[str]) -> int:
    """``preprocess.py --celeba ...`` / ``--attr_from ...`` (exit status 0, 1, 2 bad usage)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if (args.celeba is None) == (args.attr_from is None):
            raise ValueError("choose one of --celeba CELEBA_ROOT and --attr_from FILE.csv")
        if args.size < 16:
            raise ValueError("--size must be at least 16")
        if args.celeba is not None:
            if not args.attr:
                raise ValueError("--celeba needs --attr NAME (e.g. Eyeglasses, Bald, beard)")
            if args.paths:
                raise ValueError("--celeba takes no PHOTO_FOLDER (the root is its value)")
            convert_celeba(args.celeba, args.attr, args.out, negate=args.negate,
                           size=args.size, crop=args.crop, n_test=args.n_test, limit=args.limit)
        else:
            if len(args.paths) != 1:
                raise ValueError("--attr_from FILE.csv takes exactly one PHOTO_FOLDER")
            convert_folder(args.attr_from, args.paths[0], args.out, negate=args.negate,
                           size=args.size)
    except (ValueError, OSError) as exc:
        return error_exit(exc)
    return 0
