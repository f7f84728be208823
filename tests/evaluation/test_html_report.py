"""report.html: every evaluation and the demo write one; every file it refers to exists inside
its folder; in headless Chromium (when installed) every image loads and every video plays."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import browser  # noqa: E402

from evaluation.html import Section, markdown_to_html, references, write_html  # noqa: E402
from evaluation.visuals import TILE, comparison_grid, comparison_video  # noqa: E402

needs_chromium = pytest.mark.skipif(browser.chromium() is None,
                                    reason="no chromium (apt-get install chromium)")


def _check_references(page: Path) -> list[str]:
    """Every reference of ``page`` is a file inside its folder; returns them."""
    refs = references(page)
    for ref in refs:
        target = (page.parent / ref).resolve()
        assert target.is_file(), f"{page}: {ref} does not exist"
        assert page.parent.resolve() in target.parents, f"{page}: {ref} is outside its folder"
    return refs


# -- the writer on its own ---------------------------------------------------------------------


def test_markdown_tables_lists_and_baseline_rows(tmp_path: Path) -> None:
    text = ("# T\n\n- one `code` item\n- **two**\n\n| system | PSNR dB ↑ |\n|---|---:|\n"
            "| model | 30.10 |\n| baseline: copy query | 28.00 |\n\nA paragraph <b>.\n")
    out = markdown_to_html(text)
    assert "<li>one <code>code</code> item</li><li><b>two</b></li>" in out
    assert "<th>PSNR dB ↑</th>" in out and "<td class=num>30.10</td>" in out
    assert "<tr class=baseline><td>baseline: copy query</td>" in out
    assert "<p>A paragraph &lt;b&gt;.</p>" in out


def test_files_outside_the_folder_are_copied_in_and_missing_ones_said(tmp_path: Path) -> None:
    elsewhere = tmp_path / "a" / "b" / "grid.png"
    elsewhere.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(elsewhere)
    other = tmp_path / "c" / "d" / "grid.png"  # same name, other content
    other.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(other)
    out = tmp_path / "report"
    inside = out / "chart.png"
    out.mkdir()
    Image.fromarray(np.ones((8, 8, 3), np.uint8)).save(inside)
    page = write_html(out, "t", [Section("s", "| a |\n|---|\n| 1 |", [
        (elsewhere, "x"), (other, "y"), (inside, "z"), (tmp_path / "nope.png", "n")])],
        command="python evaluate.py --x 'a b'")
    refs = _check_references(page)
    assert "chart.png" in refs and len([r for r in refs if r.startswith("report_files/")]) == 2
    text = page.read_text()
    assert "not written:" in text and "nope.png" in text
    assert "python evaluate.py --x &#x27;a b&#x27;" in text and "CPU" in text
    # a rerun after the file changed refreshes its copy instead of adding another
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(elsewhere)
    write_html(out, "t", [Section("s", "", [(elsewhere, "x"), (other, "y")])])
    copies = sorted((out / "report_files").iterdir())
    assert len(copies) == 2 and any(np.asarray(Image.open(c)).max() == 200 for c in copies)
    # named by their path below the folder they share with the report, not the machine's path
    assert [c.name for c in copies] == ["a_b_grid.png", "c_d_grid.png"]


def test_comparison_grid_and_video_enlarge_tiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = {lab: rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
            for lab in ("ground truth", "baseline: copy query", "model")}
    grid = np.asarray(Image.open(comparison_grid(rows, tmp_path / "g.png", columns=3)))
    k = TILE // 32
    tile = rows["model"][4].repeat(k, 0).repeat(k, 1)
    # the last row, last column (frame 4) is the model's frame 4, pixel-repeated
    assert any(np.array_equal(grid[y:y + TILE, x:x + TILE], tile)
               for y in range(grid.shape[0] - TILE - 8, grid.shape[0] - TILE + 1)
               for x in range(grid.shape[1] - TILE - 8, grid.shape[1] - TILE + 1))
    from lrw.video import read_video, video_codec

    video = comparison_video(rows, tmp_path / "v.mp4", fps=10)
    frames, fps = read_video(video)
    assert len(frames) == 5 and fps == 10 and frames[0].shape[1] >= 3 * TILE
    assert video_codec(video)[0] == "h264"
    assert not list(tmp_path.glob(".*tmp*"))


# -- what the scripts write (one tiny demo) ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    import demo

    out = tmp_path_factory.mktemp("demo")
    assert demo.main(["--tiny", "--out", str(out)]) == 0
    return out / "result"


def _pages(result: Path) -> list[Path]:
    return [result / "demo_report" / "report.html", *sorted(result.glob("eval/*/report.html"))]


@pytest.mark.slow
def test_every_evaluation_and_the_demo_write_a_page_whose_files_exist(tiny_demo, capsys):
    pages = _pages(tiny_demo)
    names = {p.parent.name for p in pages}
    # the talking-face models, their comparison, content-ae, pose-flow, the demo
    assert {"demo_report", "demo_ad-flow", "demo_mi-flow", "demo", "content_ae_tiny",
            "demo_pose"} <= names
    for page in pages:
        refs = _check_references(page)
        text = page.read_text()
        assert "<table" in text and "How this was made" in text and "python " in text, page
        if page.parent.name != "demo":
            assert any(r.endswith("compare_grid.png") for r in refs) or \
                page.parent.name == "demo_report", page
        if page.parent.name in ("demo_ad-flow", "demo_mi-flow", "demo_report"):
            big = [r for r in refs if r.endswith("compare_grid_256.png")]
            assert big, page  # the talking faces at 256 px, as test.py writes them
            for ref in big:
                with Image.open(page.parent / ref) as im:
                    assert im.height >= 4 * 256, ref  # truth, copy, blend, model at 256 px
    demo_refs = references(tiny_demo / "demo_report" / "report.html")
    videos = [r for r in demo_refs if r.endswith(".mp4")]
    grids = [r for r in demo_refs if r.endswith(".png")]
    # each talking-face model: the side-by-side video and test.py's video; pose-flow's video
    assert len(videos) >= 5 and len(grids) >= 8
    for page in pages:
        for ref in references(page):
            if "compare_grid" in ref:
                with Image.open(page.parent / ref) as im:
                    assert im.height >= TILE + 28, ref  # at least one 128 px row of tiles
    text = (tiny_demo / "demo_report" / "report.html").read_text()
    assert re.search(r"<h2>Talking faces: .*ad-flow", text) and "content-ae" in text


@pytest.mark.slow
@needs_chromium
def test_chromium_loads_every_image_and_plays_every_video(tiny_demo, tmp_path):
    for page in _pages(tiny_demo):
        seen = browser.probe(page)
        refs = references(page)
        want_images = [r for r in refs if r.endswith((".png", ".jpg"))]
        assert sorted({i["src"] for i in seen["images"]}) == sorted(set(want_images)), page
        for img in seen["images"]:
            assert img["ok"] and img["width"] > 0, (page, img)
        assert len(seen["videos"]) == len([r for r in refs if r.endswith(".mp4")]), page
        for v in seen["videos"]:
            assert v["error"] is None and v["played"] and v["network"] != 3, (page, v)
            # a frame was decoded when playback began (a short looping video may be back at
            # HAVE_METADATA at the moment it wraps)
            assert v["duration"] > 0 and v["ready_at_play"] >= 2 and v["width"] > 0, (page, v)
    shot = browser.screenshot(tiny_demo / "demo_report" / "report.html", tmp_path / "shot.png")
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[1] == 1400 and arr.std() > 10  # drawn, not blank


@needs_chromium
def test_a_broken_video_or_image_is_caught(tmp_path: Path) -> None:
    """The probe is not a rubber stamp: a file that is not a video fails to play, a missing
    image does not load."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    img = tmp_path / "gone.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img)
    page = write_html(tmp_path, "t", [Section("s", "", [(bad, "v"), (img, "i")])])
    img.unlink()
    seen = browser.probe(page)
    v = seen["videos"][0]
    assert not v["played"] and v["ready"] == 0 and v["network"] == 3 and not v["duration"]
    assert not seen["images"][0]["ok"]
