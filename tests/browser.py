"""Open a page in headless Chromium and report what loaded (for the report tests).

Debian's ``chromium`` package (``apt-get install chromium``); :func:`chromium` is ``None``
without it and the tests skip. The page is copied beside itself with a probe script that, after
the page's ``load`` event, plays every video and writes, as JSON into the DOM, each image's
natural size and each video's duration, current time, ready state (when playing began and
after 1.5 s), error code, network
state and frame size (a video whose ``<source>`` fails keeps ``error`` null: network state 3);
``--dump-dom`` returns that DOM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--mute-audio", "--autoplay-policy=no-user-gesture-required")

PROBE = """<script>
window.addEventListener('load', async () => {
  const out = {images: [], videos: []};
  for (const img of document.images) {
    out.images.push({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0,
                     width: img.naturalWidth, height: img.naturalHeight});
  }
  for (const v of document.querySelectorAll('video')) {
    const r = {src: v.currentSrc || (v.querySelector('source') || {}).src || v.src};
    const late = new Promise((_, no) => setTimeout(() => no('no playback within 5 s'), 5000));
    try { await Promise.race([v.play(), late]); r.played = true; r.ready_at_play = v.readyState; }
    catch (e) { r.played = false; r.why = String(e); }
    await new Promise(done => setTimeout(done, 1500));
    Object.assign(r, {duration: v.duration, time: v.currentTime, ready: v.readyState,
                      error: v.error ? v.error.code : null, network: v.networkState,
                      width: v.videoWidth});
    out.videos.push(r);
  }
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    """Path of a Chromium binary (``/usr/bin/chromium`` first), or ``None``."""
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def probe(page: str | Path, budget_ms: int = 20000, timeout: float = 120) -> dict:
    """``{"images": [...], "videos": [...]}`` as the browser saw ``page``."""
    page = Path(page).resolve()
    copy = page.with_name(f"_probe_{page.name}")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}",
                              f"--virtual-time-budget={budget_ms}", "--dump-dom",
                              copy.as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        copy.unlink()
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
    if not m:
        raise AssertionError(f"no probe result from chromium (rc {out.returncode}): "
                             f"{out.stderr[-2000:]}")
    import html

    return json.loads(html.unescape(m.group(1)))


def screenshot(page: str | Path, png: str | Path, width: int = 1400, height: int = 4000,
               timeout: float = 120) -> Path:
    """A full-width PNG of ``page`` as Chromium draws it."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", "--hide-scrollbars",
                        "--virtual-time-budget=10000", f"--screenshot={Path(png).resolve()}",
                        Path(page).resolve().as_uri()], capture_output=True, text=True,
                       timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return Path(png)
