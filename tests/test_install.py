"""``pip install -e .`` works and makes the modules and commands usable from any folder."""

from __future__ import annotations

import site
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_editable_install_runs_generators_and_commands_outside_the_checkout(tmp_path: Path
                                                                              ) -> None:
    # A fresh environment that borrows this one's installed packages (torch, setuptools):
    # nothing is downloaded (--no-deps --no-build-isolation).
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True)
    Path(purelib.stdout.strip(), "borrowed.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    tracked = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                             capture_output=True, text=True).stdout
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "-e", str(ROOT)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    syn = subprocess.run([str(py), "-m", "lrw.synthetic", str(elsewhere / "set"), "--words", "1",
                          "--speakers", "1", "--clips", "1", "--frames", "2", "--size", "16",
                          "--queries", "1", "--sources", "1", "--query-size", "32"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert syn.returncode == 0, syn.stderr
    assert (elsewhere / "set" / "manifest.json").is_file()
    for command, prog in (("flowdis-train", "train.py"), ("flowdis-test", "test.py"),
                          ("flowdis-evaluate", "evaluate.py"),
                          ("flowdis-preprocess", "preprocess.py")):
        h = subprocess.run([str(env_dir / "bin" / command), "--help"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=300)
        assert h.returncode == 0 and h.stdout.startswith(f"usage: {prog}"), (command, h.stderr)
    # the install left nothing behind in the checkout (no egg-info, no build folder)
    assert subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                          capture_output=True, text=True).stdout == tracked
