"""``report.html``: one page per evaluation (and per demo) to open in a browser.

The page and every file it shows live in one folder (``report.html`` beside ``table.md`` and
the figures; a file from elsewhere is copied into ``report_files/``), so the folder can be
moved, zipped or served as it is. It holds the score tables (rendered from the same Markdown as
``table.md``), images and videos (grids and side-by-side videos of each system with its
baselines, loss curves), the command that made it, and the machine and versions.

``Section`` is one block of the page; :func:`write_html` writes it; :func:`references` lists the
files a page refers to (the tests check each exists; ``tests/evaluation/test_html_report.py`` also opens
the page in headless Chromium).
"""

from __future__ import annotations

import html
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .visuals import comparison_grid, comparison_video, split_256

__all__ = ["Section", "environment", "markdown_to_html", "references", "write_html"]

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm")
FILES = "report_files"
"""Subfolder of the report's folder for files copied from elsewhere."""


@dataclass
class Section:
    """One block of the page: a heading, Markdown text (tables, lists, paragraphs) and media.

    ``media``: ``(path, caption)`` pairs; images (``.png``, ``.jpg``) and videos (``.mp4``,
    ``.webm``) are told apart by the suffix. Paths are absolute or relative to the current
    folder; those outside the report's folder are copied into it.
    """

    title: str
    markdown: str = ""
    media: list[tuple[str | Path, str]] = field(default_factory=list)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { color: #666; background: #f6f6f6; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
img, video { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
video { min-width: 256px; }
pre { background: #f4f4f4; padding: 0.5em; white-space: pre-wrap; word-break: break-all; }
.env td:first-child { font-weight: 600; }
"""


def _inline(text: str) -> str:
    """Escape, then ``code`` spans and **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head = _cells(lines[0])
    aligns = [c.endswith(":") for c in _cells(lines[1])] if len(lines) > 1 else []
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>"]
    for line in lines[2:]:
        cells = _cells(line)
        baseline = any(c.lower().startswith(("baseline", "copy ", "warp ")) for c in cells[:2])
        tds = "".join(
            f"<td{' class=num' if i < len(aligns) and aligns[i] else ''}>{_inline(c)}</td>"
            for i, c in enumerate(cells))
        out.append(f"<tr{' class=baseline' if baseline else ''}>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def markdown_to_html(text: str) -> str:
    """The Markdown this project writes (``table.md``: headings, ``- `` lists, pipe tables,
    paragraphs) as HTML."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
            i = j
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)  # under the page's h1/h2
            blocks.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(
                    ("|", "#", "- ", "* ")):
                para.append(lines[i].strip())
                i += 1
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(blocks)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def environment() -> list[tuple[str, str]]:
    """``(what, value)`` rows: date, CPU, GPU, OS, Python and package versions, the project's
    git commit (when it is a checkout)."""
    rows = [("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
            ("CPU", f"{_cpu_name()} ({os.cpu_count()} logical cores)")]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("GPU", ", ".join(gpus)))
    else:
        rows.append(("GPU", "none used (no CUDA device)"))
    rows.append(("OS", platform.platform()))
    rows.append(("Python", platform.python_version()))
    versions = [f"{m} {v}" for m in ("torch", "torchvision", "numpy", "scikit-image", "dlib-bin",
                                     "opencv-python-headless", "imageio-ffmpeg")
                if (v := _version(m))]
    rows.append(("packages", ", ".join(versions)))
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0 and commit.stdout.strip():
            rows.append(("project commit", commit.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return rows


def command_line(script: str, argv: Sequence[str]) -> str:
    """``python SCRIPT ARG ...`` quoted for a POSIX shell."""
    return " ".join(["python", script, *(shlex.quote(str(a)) for a in argv)])


def _place(path: Path, out_dir: Path) -> str:
    """The path of ``path`` relative to ``out_dir``, copying it into ``report_files/`` when it
    lies outside (named after its last folders, so a rerun refreshes the same copy)."""
    path = Path(path).resolve()
    out_dir = out_dir.resolve()
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        pass
    dest_dir = out_dir / FILES
    dest_dir.mkdir(parents=True, exist_ok=True)
    # named by its path below the folder it shares with the report (a run's sample folder:
    # sample_RUN_loss.png), never by the folders above that (the machine's own path)
    common = Path(os.path.commonpath([path, out_dir]))
    parts = path.relative_to(common).parts if common != Path(common.anchor) else path.parts[-3:]
    dest = dest_dir / "_".join(parts)
    if not dest.exists() or not _same(dest, path):
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
    return dest.relative_to(out_dir).as_posix()


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _media_html(path: Path, caption: str, out_dir: Path) -> str:
    rel = html.escape(_place(path, out_dir), quote=True)
    cap = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        kind = "video/webm" if path.suffix.lower() == ".webm" else "video/mp4"
        body = (f'<video controls loop muted playsinline preload="auto">'
                f'<source src="{rel}" type="{kind}"></video>')
    else:
        body = f'<a href="{rel}"><img src="{rel}" alt="{html.escape(caption, quote=True)}"></a>'
    return f"<figure>{body}{cap}</figure>"


def write_html(out_dir: str | Path, title: str, sections: Sequence[Section],
               command: str | None = None, name: str = "report.html") -> Path:
    """Write ``out_dir/name``; returns its path. Media that do not exist are left out (and
    said so on the page), so a partial run still gets a page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.markdown:
            parts.append(markdown_to_html(sec.markdown))
        missing = []
        for path, caption in sec.media:
            if path is None or not Path(path).is_file():
                missing.append(str(path))
                continue
            parts.append(_media_html(Path(path), caption, out))
        if missing:
            parts.append(f"<p>not written: {html.escape(', '.join(missing))}</p>")
    parts.append("<h2>How this was made</h2>")
    if command:
        parts.append(f"<pre>{html.escape(command)}</pre>")
    parts.append('<table class="env">' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in environment()) + "</table>")
    parts.append("</body></html>")
    path = out / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


_REF = re.compile(r'(?:src|href)="([^"]+)"')


def references(page: str | Path) -> list[str]:
    """Every local file a page refers to (``src=`` and ``href=``), relative to its folder."""
    text = Path(page).read_text(encoding="utf-8")
    refs = [html.unescape(r) for r in _REF.findall(text)]
    return list(dict.fromkeys(r for r in refs if not re.match(r"^[a-z]+:", r) and
                              not r.startswith("#")))


def talking_report(out_dir: str | Path, title: str, table_md: str | Path, command: str | None,
                   example: tuple[dict, str, float] | None = None,
                   run_dirs: Sequence[str | Path] = ()) -> Path:
    """``report.html`` of a talking-face evaluation in ``out_dir``: the table (``table.md``),
    the first pair's grid and side-by-side video (``example`` from
    :func:`evaluation.visuals.synthetic_rows` / ``real_rows``), ``metrics.png``, and the loss
    curves and diagnostics of the training run folders ``run_dirs`` that exist."""
    out = Path(out_dir)
    text = Path(table_md).read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    sections = [Section("Scores", body)]
    if example is not None:
        rows, caption, fps = example
        rows, rows256 = split_256(rows)
        size = next(iter(rows.values())).shape[1]
        grid = comparison_grid(rows, out / "compare_grid.png")
        video = comparison_video(rows, out / "compare_video.mp4", fps)
        order = ", ".join(rows)
        sections.append(Section(
            "Each system beside its baselines",
            f"The first pair scored: {caption}, at the model's {size} px, enlarged by pixel "
            f"repetition. Rows (grid) and columns (video), in order: {order}.",
            [(grid, "grid: evenly spaced frames"), (video, "video: every frame")]))
        if rows256:
            grid256 = comparison_grid(rows256, out / "compare_grid_256.png")
            sections.append(Section(
                "At 256 px, as test.py writes it",
                f"The same pair: {caption}, each model pasted back into the 256 px query, the "
                f"baselines made at 256 px. Rows, in order: {', '.join(rows256)}.",
                [(grid256, "grid at 256 px: evenly spaced frames")]))
    if (out / "metrics.png").is_file():
        sections.append(Section("Charts", "", [(out / "metrics.png", "one chart per metric; "
                                                "baselines grey")]))
    curves = []
    for d in run_dirs:
        for name, what in (("loss.png", "loss curves"), ("diagnostics.png", "diagnostics")):
            if (Path(d) / name).is_file():
                curves.append((Path(d) / name, f"{what} of {Path(d).name}"))
    if curves:
        sections.append(Section("Training", "From the run folder(s) of the checkpoint(s).",
                                curves))
    return write_html(out, title, sections, command)


def compare_report(out_dir: str | Path, table_md: str | Path, run_dirs: Sequence[str | Path],
                   command: str | None) -> Path:
    """``report.html`` of ``evaluate.py --compare``: the merged table and chart, and each run's
    side-by-side grid and video (copied from ``RESULT_DIR/eval/RUN/``)."""
    out = Path(out_dir)
    text = Path(table_md).read_text()
    sections = [Section("Scores", text.split("\n", 1)[1] if text.startswith("# ") else text)]
    for d in map(Path, run_dirs):
        media = [(d / "compare_grid.png", f"{d.name}: grid"),
                 (d / "compare_video.mp4", f"{d.name}: video")]
        media = [m for m in media if m[0].is_file()]
        if media:
            sections.append(Section(f"{d.name}: each system beside its baselines", "", media))
    if (out / "metrics.png").is_file():
        sections.append(Section("Charts", "", [(out / "metrics.png", "one chart per metric")]))
    return write_html(out, f"Comparison: {', '.join(Path(d).name for d in run_dirs)}",
                      sections, command)
