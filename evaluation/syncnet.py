"""LSE-C and LSE-D: lip-sync confidence and distance from a SyncNet (Chung and Zisserman 2016),
as Wav2Lip (Prajwal et al. 2020) reports them, with the network from a local file.

``--syncnet FILE`` is a TorchScript module with two methods (``torch.jit.export``):

* ``forward_lip(x [B, 3, 5, 224, 224])``: five consecutive RGB face frames, values 0-255
  -> ``[B, D]``;
* ``forward_aud(x [B, 1, 13, 20])``: 20 MFCC frames (0.2 s at 100 Hz) -> ``[B, D]``.

That is the interface of the published SyncNet; wrap its weights in such a module once (a
scripted ``nn.Module`` holding both towers) and save it with ``torch.jit.save``.

Audio: the source video's first track, decoded by the bundled ffmpeg to 16 kHz mono; MFCCs by
``python_speech_features.mfcc`` with its defaults (25 ms windows every 10 ms, 13 coefficients,
26 filters, log energy as the first) -- what the SyncNet was trained on. Each window of five
frames starting at frame ``v`` is paired with the 20 MFCC frames starting at
``round(v * 100 / fps)``.

Scores (per sequence): the features of every window are compared with the audio features at
offsets ``-15..15`` windows (zero features beyond the ends); ``mdist[k]`` is the mean distance at
offset ``k`` over the windows. **LSE-D** is ``min(mdist)`` (lower: in sync) and **LSE-C** is
``median(mdist) - min(mdist)`` (higher: a clear best offset). A sequence shorter than five
frames, or than its audio needs, gives ``NaN``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lrw.video import ffmpeg_exe

__all__ = ["LIP_FRAMES", "VSHIFT", "SyncNet", "audio_mfcc", "sync_scores", "offset_distances"]

LIP_FRAMES = 5
MFCC_PER_WINDOW = 20
MFCC_RATE = 100.0
VSHIFT = 15
SAMPLE_RATE = 16000


def audio_mfcc(path: str | Path) -> np.ndarray:
    """MFCCs ``[13, N]`` at 100 Hz of the first audio track of ``path``."""
    # deferred: an optional package (requirements.txt, not pyproject), ~0.5 s at start-up;
    # only --lip_sync needs MFCCs
    from python_speech_features import mfcc

    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path),
                          "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-"],
                         capture_output=True)
    if out.returncode != 0 or not out.stdout:
        raise ValueError(f"{path}: no audio could be decoded ({out.stderr.decode()[-200:]})")
    signal = np.frombuffer(out.stdout, dtype=np.int16).astype(np.float64)
    return np.asarray(mfcc(signal, SAMPLE_RATE)).T


def offset_distances(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT
                     ) -> torch.Tensor:
    """``mdist [2 vshift + 1]``: for each offset, the mean over windows ``i`` of the distance
    between ``lip[i]`` and ``aud[i + offset]`` (zero features outside), offsets ``-vshift``
    first."""
    padded = F.pad(aud, (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    dists = [F.pairwise_distance(lip[i:i + 1].expand(win, -1), padded[i:i + win])
             for i in range(len(lip))]
    return torch.stack(dists, 1).mean(1)


class SyncNet:
    """The network of ``--syncnet FILE`` (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--syncnet {path}: no such file (a TorchScript SyncNet with "
                             "forward_lip and forward_aud; docs/evaluate.md)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001 - any load failure is one line
            raise ValueError(f"--syncnet {path}: not a TorchScript file ({exc})") from None
        if not all(hasattr(self.net, m) for m in ("forward_lip", "forward_aud")):
            raise ValueError(f"--syncnet {path}: the module needs forward_lip and forward_aud "
                             "methods (torch.jit.export)")

    @torch.no_grad()
    def features(self, frames: np.ndarray, mfcc: np.ndarray, fps: float
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Lip and audio features ``[W, D]`` of every five-frame window that has its audio
        (``None`` when there is none)."""
        starts = [v for v in range(len(frames) - LIP_FRAMES + 1)
                  if round(v * MFCC_RATE / fps) + MFCC_PER_WINDOW <= mfcc.shape[1]]
        if not starts:
            return None
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        lips, auds = [], []
        for chunk in range(0, len(starts), 16):
            vs = starts[chunk:chunk + 16]
            clip = torch.stack([x[v:v + LIP_FRAMES].permute(1, 0, 2, 3) for v in vs])
            a = torch.stack([torch.from_numpy(np.ascontiguousarray(
                mfcc[:, round(v * MFCC_RATE / fps):round(v * MFCC_RATE / fps)
                     + MFCC_PER_WINDOW])).float()[None] for v in vs])
            lips.append(self.net.forward_lip(clip).float().flatten(1))
            auds.append(self.net.forward_aud(a).float().flatten(1))
        return torch.cat(lips), torch.cat(auds)


def sync_scores(net: SyncNet, frames: np.ndarray, mfcc: np.ndarray, fps: float
                ) -> tuple[float, float]:
    """``(LSE-C, LSE-D)`` of uint8 frames ``[T, S, S, 3]`` against the MFCCs of their audio."""
    feats = net.features(frames, mfcc, fps)
    if feats is None:
        return float("nan"), float("nan")
    mdist = offset_distances(*feats)
    low = float(mdist.min())
    return float(mdist.median()) - low, low
