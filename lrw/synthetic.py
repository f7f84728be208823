"""A procedural talking-face set with exact ground truth (frontal, or ``--hard``).

``python -m lrw.synthetic OUT [--words 8 --speakers 16 --clips 4 --frames 29 --size 64 --seed 0]
[--hard]`` writes::

    OUT/train/WORD/WORD_NNNNN_FF.jpg        LRW-style training frames (JPEG quality 95, 4:4:4)
    OUT/image/ref_img/queryNN_256.png       query faces (held-out identities, neutral mouth)
    OUT/image/source_img/srcNN_WORD/000.png driving sequences (held-out identities) + fps.txt
    OUT/manifest.json                       seed, every identity, every clip's mouth states

Faces come from the shared renderer :mod:`synthface.face` (identities, mouth states, the mouth
box; only pixels inside the mouth box depend on the mouth state). Words: each word has a mouth trajectory ``(open(t), width(t))`` over the clip,
a sum of smooth syllable bumps whose count and vowel shapes follow the spelling, with timings drawn
per word; each clip jitters amplitude, phase and speed. Query and source identities never appear
in ``train/``, so evaluation is on unseen identities.

``--hard`` writes a second kind of set in the same layout, scored by the same ``evaluate.py``
code, closer to real use (:mod:`synthface.scene`): every frame is a posed (yaw, roll, scale,
translation of :mod:`synthface.pose`), lit (brightness gradient, colour tint, offset) face, cut
to the aligned crop by ``faces.align`` from its exact landmarks, as real faces are. Sources turn
their heads while they speak (a slow sway about a base pose, the crop parameters smoothed over
5 frames as ``faces.sequence`` cuts a video with ``anchor="mouth"``, or with ``--anchor head``
as it now cuts one by default); queries hold another pose (``HARD_POSES``: queries turn and
roll one way, sources the other, at other scales) under other light (lit
from the other side); lips differ strongly between the roles
(``synthface.scene.LIP_ROLES``: queries wide, thin and pale, sources narrow, thick and dark;
training speakers span both). The ground truth stays exact: the query's identity in the query's
pose, light and crop, with the source frame's mouth state (:meth:`SyntheticSet.ground_truth`).
"""


from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cliargs import add_no_progress, error_exit, image_size, model_size, positive_int, seed
from faces.align import alignment_params, similarity_matrix
from faces.io import write_bytes_atomic
from faces.sequence import ANCHORS, sequence_params
from synthface.face import (  # noqa: F401  (re-exported: the talking-face set's public names)
    CLOSED_MOUTH_WIDTH_256,
    MOUTH_BOX_256,
    MOUTH_CENTER_256,
    NEUTRAL,
    Identity,
    MouthState,
    mouth_box,
    render,
    round4,
    sample_identity,
)
from synthface.landmarks import face_landmarks
from synthface.output import replacing
from synthface.pose import HeadPose
from synthface.scene import (
    Lighting,
    Shot,
    landmarks_px,
    render_shot,
    sample_hard_identity,
    sample_lighting,
)

__all__ = [
    "CLOSED_MOUTH_WIDTH_256",
    "MOUTH_BOX_256",
    "MOUTH_CENTER_256",
    "NEUTRAL",
    "WORDS",
    "Identity",
    "MouthState",
    "SyntheticConfig",
    "SyntheticSet",
    "TRAIN_FRAMES",
    "generate",
    "main",
    "mouth_box",
    "render",
    "sample_identity",
    "train_frame",
    "word_trajectory",
]

FORMAT = "flowdisentangle-synthetic/1"
JPEG_QUALITY = 95
FPS = 25

# Real English words (LRW's vocabulary is of this kind); the first ones differ most in vowels.
WORDS = (
    "ABOUT", "PEOPLE", "MONEY", "SCHOOL", "FAMILY", "WATER", "BECAUSE", "YOUNG",
    "AGAIN", "BEFORE", "CHANGE", "DIFFERENT", "EVERY", "FOOTBALL", "GROWTH", "HAPPEN",
    "IMPORTANT", "JUSTICE", "KILLED", "LONDON", "MAJORITY", "NUMBER", "OFFICE", "POLICE",
    "QUESTION", "RIGHT", "SERIOUS", "TOMORROW", "UNDER", "VICTIMS", "WEATHER", "WORLD",
    "ACCESS", "BUDGET", "CAPITAL", "DECISION", "ECONOMY", "FUTURE", "GLOBAL", "HEALTH",
    "INQUIRY", "JUDGE", "LEADER", "MEMBERS", "NEVER", "OPPOSITION", "PARTY", "QUITE",
    "REALLY", "SECURITY", "THOUGHT", "UNION", "VIOLENCE", "WELCOME", "YESTERDAY", "ALWAYS",
    "BUSINESS", "CHILDREN", "DURING", "EUROPE", "FRIDAY", "GOVERNMENT", "HOUSING", "ISSUE",
)

_VOWEL_SHAPES = {  # (open amplitude, width target) of a syllable's vowel
    "A": (0.95, 0.15), "E": (0.60, 0.65), "I": (0.55, 0.75), "O": (0.70, -0.75),
    "U": (0.50, -0.90), "Y": (0.55, 0.50),
}


# --------------------------------------------------------------------------------------------
# Mouth trajectories
# --------------------------------------------------------------------------------------------

def _word_syllables(word: str, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Syllables ``(centre, sigma, open, width)`` of a word: one per vowel group (max 4)."""
    groups = re.findall(r"[AEIOUY]+", word.upper()) or ["A"]
    groups = groups[:4]
    n = len(groups)
    span = min(0.22 + 0.1 * n, 0.62)  # longer words take longer, centred in the clip as in LRW
    start = 0.5 - span / 2 + rng.uniform(-0.04, 0.04)
    out = []
    for i, g in enumerate(groups):
        amp, width = _VOWEL_SHAPES[g[0]]
        centre = start + span * (i + 0.5) / n + rng.uniform(-0.02, 0.02)
        sigma = span / n * rng.uniform(0.28, 0.40)
        out.append((centre, sigma, float(np.clip(amp * rng.uniform(0.8, 1.1), 0.2, 1.0)),
                    float(np.clip(width + rng.uniform(-0.2, 0.2), -1.0, 1.0))))
    return out


def word_trajectory(syllables: Sequence[Sequence[float]], n_frames: int, amp: float = 1.0,
                    shift: float = 0.0, speed: float = 1.0) -> list[MouthState]:
    """Mouth states of one clip: syllable bumps sampled at ``n_frames`` times in [0, 1].

    ``amp`` scales both opening and width, ``shift`` moves the word in time, ``speed`` > 1 makes
    it shorter (time is scaled about the clip centre). States are rounded to 4 decimals.
    """
    tau = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.array([0.5])
    tau = 0.5 + (tau - 0.5 - shift) * speed
    op = np.zeros_like(tau)
    wnum = np.zeros_like(tau)
    for centre, sigma, a, w in syllables:
        g = np.exp(-0.5 * ((tau - centre) / sigma) ** 2)
        op += a * g
        wnum += w * np.exp(-0.5 * ((tau - centre) / (1.6 * sigma)) ** 2)
    op = np.clip(op * amp, 0.0, 1.0)
    wd = np.clip(wnum * amp, -1.0, 1.0)
    return [MouthState(round4(o), round4(w)) for o, w in zip(op, wd, strict=True)]


def _clip_jitter(rng: np.random.Generator) -> dict:
    return {"amp": round4(rng.uniform(0.85, 1.12)), "shift": round4(rng.uniform(-0.05, 0.05)),
            "speed": round4(rng.uniform(0.9, 1.1))}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticConfig:
    """Options of ``python -m lrw.synthetic`` (see ``--help``)."""

    out: str
    words: int = 8
    speakers: int = 16
    clips: int = 4
    frames: int = 29
    size: int = 64
    seed: int = 0
    queries: int = 2
    sources: int = 2
    query_size: int = 256
    workers: int = 1
    hard: bool = False
    # what a hard set's sequences' crops follow (faces.sequence.ANCHORS): "mouth", each frame
    # cropped around its mouth (the sets made before), or "head", as preprocess.py now cuts
    anchor: str = "mouth"
    # "downsized" (TRAIN_FRAMES) or "direct": drawn at ``size`` as sets made before were
    # (the hard set's at twice the size, area-resized), to make those sets again
    train_render: str = "downsized"

    def generation_key(self) -> dict:
        """Everything that changes the output (not ``out`` or ``workers``)."""
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        if not self.hard:
            d.pop("hard")  # frontal sets keep the manifests they had before --hard existed
        if not self.hard or self.anchor == "mouth":
            d.pop("anchor")  # so do the hard sets made before --anchor existed
        if d.pop("train_render") == "downsized":
            d["train_frames"] = TRAIN_FRAMES  # sets drawn the old way are made again
        return d


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


HARD_POSES = {
    # base pose ranges per role: (yaw, roll, scale, tx, ty); "side" turns yaw and roll
    "query": {"yaw": (0.2, 0.45), "roll": (0.05, 0.15), "scale": (1.02, 1.1),
              "tx": (-0.03, 0.03), "ty": (-0.03, 0.03), "side": 1.0, "sway": 0.0},
    "source": {"yaw": (0.2, 0.45), "roll": (0.05, 0.15), "scale": (0.88, 0.96),
               "tx": (-0.03, 0.03), "ty": (-0.03, 0.03), "side": -1.0, "sway": 1.0},
    "train": {"yaw": (0.0, 0.5), "roll": (0.0, 0.15), "scale": (0.88, 1.1),
              "tx": (-0.03, 0.03), "ty": (-0.03, 0.03), "side": 0.0, "sway": 1.0},
}
"""The hard set's poses: queries turn right (yaw > 0) and roll one way, sources turn left and roll
the other, swaying while they speak (yaw +-0.08, roll +-0.04, scale +-0.02, translation +-0.01
over the clip); so a query and a source differ by at least 0.32 rad of yaw in every frame.
Training speakers take either side at random."""

SMOOTH_FRAMES = 5  # faces.sequence's default window for the crop parameters (anchor="mouth")


def _hard_pose(rng: np.random.Generator, role: str) -> tuple[HeadPose, float]:
    spec = HARD_POSES[role]
    side = spec["side"] or float(rng.choice([-1.0, 1.0]))
    u = rng.uniform
    return HeadPose(yaw=round4(side * u(*spec["yaw"])), roll=round4(side * u(*spec["roll"])),
                    scale=round4(u(*spec["scale"])), tx=round4(u(*spec["tx"])),
                    ty=round4(u(*spec["ty"]))), side


def _crop_matrix(ident: Identity, mouth: MouthState, pose: HeadPose) -> np.ndarray:
    """The alignment real faces get (``faces.align``), from this frame's exact landmarks:
    ``(cx, cy, mouth_width, angle)``."""
    return alignment_params(landmarks_px(ident, mouth, pose))


def _shot_dict(pose: HeadPose, light: Lighting, params: np.ndarray) -> dict:
    m = similarity_matrix(params, 256)
    return Shot(pose, light, tuple(tuple(round(float(v), 6) for v in r) for r in m)).to_dict()


def _query_shot(ident_d: dict, rng: np.random.Generator) -> dict:
    ident = Identity.from_dict(ident_d)
    pose, side = _hard_pose(rng, "query")
    light = sample_lighting(rng, side)
    return _shot_dict(pose, light, _crop_matrix(ident, NEUTRAL, pose))


def _sequence_shots(ident_d: dict, states: Sequence[MouthState], rng: np.random.Generator,
                    role: str, anchor: str = "mouth") -> list[dict]:
    """Per-frame shots of a talking sequence: a base pose swaying over the clip, one lighting,
    crop parameters from each frame's exact landmarks, anchored (``faces.sequence``) and
    smoothed as ``preprocess.py --anchor ANCHOR`` does to a real sequence."""
    ident = Identity.from_dict(ident_d)
    base, side = _hard_pose(rng, role)
    light = sample_lighting(rng, side if HARD_POSES[role]["side"] else 0.0)
    amp = HARD_POSES[role]["sway"] * np.array([0.08, 0.04, 0.02, 0.01, 0.01])
    phase = rng.uniform(0, 2 * np.pi, 5)
    cycles = rng.uniform(0.5, 1.2, 5)
    n = len(states)
    tau = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    poses = []
    for t in tau:
        d = amp * np.sin(phase + 2 * np.pi * cycles * t)
        poses.append(HeadPose(yaw=round4(base.yaw + d[0]), roll=round4(base.roll + d[1]),
                              scale=round4(base.scale + d[2]), tx=round4(base.tx + d[3]),
                              ty=round4(base.ty + d[4])))
    lms = [landmarks_px(ident, m, p) for m, p in zip(states, poses, strict=True)]
    params, _ = sequence_params(lms, SMOOTH_FRAMES, anchor)
    return [_shot_dict(p, light, q) for p, q in zip(poses, params, strict=True)]


def _build_manifest(cfg: SyntheticConfig) -> dict:
    if cfg.words > len(WORDS):
        raise ValueError(f"--words {cfg.words}: at most {len(WORDS)} words are available")
    if cfg.anchor not in ANCHORS:
        raise ValueError(f"--anchor {cfg.anchor}: choose one of {', '.join(ANCHORS)}")
    if cfg.anchor != "mouth" and not cfg.hard:
        raise ValueError(f"--anchor {cfg.anchor} needs --hard (a frontal set is not cropped "
                         "from posed photos)")
    for name in ("words", "speakers", "clips", "frames", "size", "query_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    words = sorted(WORDS[: cfg.words])
    identities: dict[str, dict] = {}
    train = [f"spk{i:02d}" for i in range(cfg.speakers)]
    queries = [f"query{i:02d}" for i in range(cfg.queries)]
    source_spk = [f"src{i:02d}" for i in range(cfg.sources)]
    roles = {1: "train", 2: "query", 3: "source"}
    for stream, names in ((1, train), (2, queries), (3, source_spk)):
        for i, name in enumerate(names):
            rng = _rng(cfg.seed, stream, i)
            ident = sample_hard_identity(rng, roles[stream]) if cfg.hard else sample_identity(rng)
            identities[name] = ident.to_dict()
    syllables = {w: [list(map(round4, s)) for s in _word_syllables(w, _rng(cfg.seed, 4, WORDS.index(w)))]
                 for w in words}
    clips = []
    for w in words:
        wi = WORDS.index(w)
        n = 0
        for si, spk in enumerate(train):
            for k in range(cfg.clips):
                n += 1
                jit = _clip_jitter(_rng(cfg.seed, 5, wi, si, k))
                states = word_trajectory(syllables[w], cfg.frames, **jit)
                clips.append({"word": w, "clip_id": f"{n:05d}", "speaker": spk, "jitter": jit,
                              "mouth": [[m.open, m.width] for m in states]})
                if cfg.hard:
                    clips[-1]["shots"] = _sequence_shots(
                        identities[spk], states, _rng(cfg.seed, 7, wi, si, k), "train",
                        cfg.anchor)
    sources = {}
    for i, spk in enumerate(source_spk):
        w = words[i % len(words)]
        jit = _clip_jitter(_rng(cfg.seed, 6, i))
        states = word_trajectory(syllables[w], cfg.frames, **jit)
        name = f"{spk}_{w}"
        sources[name] = {"speaker": spk, "word": w, "folder": f"image/source_img/{name}",
                         "fps": FPS, "jitter": jit,
                         "mouth": [[m.open, m.width] for m in states]}
        if cfg.hard:
            sources[name]["shots"] = _sequence_shots(identities[spk], states,
                                                     _rng(cfg.seed, 8, i), "source", cfg.anchor)
    manifest = {
        "format": FORMAT,
        "config": cfg.generation_key(),
        "geometry": {"mouth_center_256": list(MOUTH_CENTER_256),
                     "mouth_box_256": list(MOUTH_BOX_256),
                     "closed_mouth_width_256": CLOSED_MOUTH_WIDTH_256},
        "words": words,
        "train_speakers": train,
        "query_speakers": queries,
        "source_speakers": source_spk,
        "identities": identities,
        "syllables": syllables,
        "clips": clips,
        "queries": {q: {"speaker": q, "file": f"image/ref_img/{q}_{cfg.query_size}.png",
                        **({"shot": _query_shot(identities[q], _rng(cfg.seed, 9, i))}
                           if cfg.hard else {})}
                    for i, q in enumerate(queries)},
        "sources": sources,
    }
    return json.loads(json.dumps(manifest))  # plain JSON types, as read back from the file


def _write_image(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if path.suffix == ".jpg":
        # 4:4:4 chroma: at 32-64 px, 4:2:0 subsampling visibly smears the coloured edges
        ok, buf = cv2.imencode(".jpg", bgr, [
            cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    else:
        ok, buf = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise RuntimeError(f"encoding {path} failed")
    write_bytes_atomic(path, buf.tobytes())


TRAIN_FRAMES = "rendered at query_size, resized like test.py's inputs (PIL bilinear)"
"""How training frames are made, recorded in the manifest (``config.train_frames``): at the
queries' size and brought to ``size`` the way ``test.py`` brings a 256 px crop to the model's
size, so a model trains on frames drawn like the ones it is tested on. (Sets made before drew
them at ``size`` directly: sharper, aliased eyes and lips that the 256 px queries and sources
never have.)"""


def train_frame(img: np.ndarray, size: int) -> np.ndarray:
    """A rendered ``uint8`` frame brought to the training size (``TRAIN_FRAMES``)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _write_word(args: tuple[str, dict, list[dict], int, int, bool]) -> int:
    """Write every training frame of one word; returns the number of frames."""
    out_train, identities, clips, size, render_size, direct = args
    n = 0
    cache: dict[str, Identity] = {}
    for clip in clips:
        spk = clip["speaker"]
        if spk not in cache:
            cache[spk] = Identity.from_dict(identities[spk])
        folder = Path(out_train) / clip["word"]
        folder.mkdir(parents=True, exist_ok=True)
        shots = [Shot.from_dict(d) for d in clip["shots"]] if "shots" in clip else None
        for t, (o, w) in enumerate(clip["mouth"], start=1):
            if direct and shots is None:  # --train_render direct: as sets made before
                img = render(cache[spk], MouthState(o, w), size)
            elif direct:  # sampled at twice the size, then an area resize
                img = cv2.resize(render_shot(cache[spk], MouthState(o, w), shots[t - 1],
                                             2 * size), (size, size),
                                 interpolation=cv2.INTER_AREA)
            else:
                img = train_frame(render(cache[spk], MouthState(o, w), render_size)
                                  if shots is None else
                                  render_shot(cache[spk], MouthState(o, w), shots[t - 1],
                                              render_size), size)
            _write_image(folder / f"{clip['word']}_{clip['clip_id']}_{t:02d}.jpg", img)
            n += 1
    return n


def _is_synthetic_set(out: Path) -> bool:
    try:
        return json.loads((out / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def generate(cfg: SyntheticConfig, force: bool = False, log=print) -> dict:
    """Write the set described by ``cfg`` (see the module docstring); returns the manifest.

    When ``cfg.out`` already holds a set made with the same options it is left as is (unless
    ``force``); a set made with other options is replaced whole, once the new one is complete
    (:func:`synthface.output.replacing`); any other non-empty folder is an error.
    """
    final = Path(cfg.out)
    manifest = _build_manifest(cfg)
    if final.is_dir():
        try:
            old = json.loads((final / "manifest.json").read_text())
        except (OSError, ValueError):
            old = None
        if not force and old == manifest:
            log(f"{final}: synthetic set already up to date")
            return manifest
    t0 = time.perf_counter()
    with replacing(final, _is_synthetic_set, "synthetic set") as out:
        n_train = _write_set(manifest, out, cfg)
    log(f"{final}: {len(manifest['words'])} words, {len(manifest['train_speakers'])} speakers, "
        f"{len(manifest['clips'])} clips, {n_train} training frames, "
        f"{len(manifest['queries'])} queries, {len(manifest['sources'])} sources "
        f"in {time.perf_counter() - t0:.1f} s")
    return manifest


def _write_set(manifest: dict, out: Path, cfg: SyntheticConfig) -> int:
    """Write every file of the set into ``out``; the number of training frames."""
    mpath = out / "manifest.json"

    by_word: dict[str, list[dict]] = {}
    for clip in manifest["clips"]:
        by_word.setdefault(clip["word"], []).append(clip)
    jobs = [(str(out / "train"), manifest["identities"], clips, cfg.size, cfg.query_size,
             cfg.train_render == "direct")
            for clips in by_word.values()]
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            n_train = sum(pool.map(_write_word, jobs))
    else:
        n_train = sum(map(_write_word, jobs))

    for entry in manifest["queries"].values():
        path = out / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        ident = Identity.from_dict(manifest["identities"][entry["speaker"]])
        img = (render_shot(ident, NEUTRAL, Shot.from_dict(entry["shot"]), cfg.query_size)
               if "shot" in entry else render(ident, NEUTRAL, cfg.query_size))
        _write_image(path, img)
    for entry in manifest["sources"].values():
        folder = out / entry["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        ident = Identity.from_dict(manifest["identities"][entry["speaker"]])
        shots = [Shot.from_dict(d) for d in entry["shots"]] if "shots" in entry else None
        for t, (o, w) in enumerate(entry["mouth"]):
            img = (render(ident, MouthState(o, w), cfg.query_size) if shots is None else
                   render_shot(ident, MouthState(o, w), shots[t], cfg.query_size))
            _write_image(folder / f"{t:03d}.png", img)
        (folder / "fps.txt").write_text(f"{entry['fps']}\n")

    tmp = mpath.with_name(".manifest.json.part")  # written last: a partial set is redone
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, mpath)
    return n_train


# --------------------------------------------------------------------------------------------
# Evaluation API
# --------------------------------------------------------------------------------------------

class SyntheticSet:
    """A generated set, read back from its manifest, with exact ground truth."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.words: list[str] = manifest["words"]
        self.query_names: list[str] = list(manifest["queries"])
        self.source_names: list[str] = list(manifest["sources"])
        self._identities = {k: Identity.from_dict(v) for k, v in manifest["identities"].items()}
        self.hard: bool = bool(manifest["config"].get("hard", False))
        """True for a ``--hard`` set (posed, lit, aligned crops; see the module docstring)."""

    @classmethod
    def load(cls, root: str | Path) -> SyntheticSet:
        """Read ``root/manifest.json``; ``ValueError`` (one line) when absent or not ours."""
        root = Path(root)
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"no synthetic set in {root}: cannot read manifest.json ({e})") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{root}/manifest.json is not a synthetic set ({FORMAT})")
        return cls(root, manifest)

    def training_landmarks(self) -> dict[str, tuple[str, np.ndarray]]:
        """Per training clip ``WORD_ID``: ``(speaker, landmarks [T, 68, 2])`` in [0, 1], the
        exact 68 points of each frame's recorded mouth state on the speaker's frontal face
        (what a landmark detector reads from the frames, without its error)."""
        out = {}
        for clip in self.manifest["clips"]:
            ident = self._identities[clip["speaker"]]
            lms = np.stack([face_landmarks(ident, MouthState(o, w)) for o, w in clip["mouth"]])
            out[f"{clip['word']}_{clip['clip_id']}"] = (clip["speaker"], lms)
        return out

    def _query(self, name: str) -> str:
        key = Path(str(name)).stem
        for cand in (key, re.sub(r"_\d+$", "", key)):
            if cand in self.manifest["queries"]:
                return cand
        raise KeyError(f"unknown query {name!r} (known: {', '.join(self.query_names)})")

    def _source(self, name: str) -> str:
        key = Path(str(name)).name
        if key not in self.manifest["sources"]:
            raise KeyError(f"unknown source {name!r} (known: {', '.join(self.source_names)})")
        return key

    def identity(self, speaker_or_query: str) -> Identity:
        """Identity of a speaker (``spk00``), query (``query00``/``query00_256``) or source speaker."""
        if speaker_or_query in self._identities:
            return self._identities[speaker_or_query]
        return self._identities[self.manifest["queries"][self._query(speaker_or_query)]["speaker"]]

    def source_states(self, source_name: str) -> list[MouthState]:
        """Per-frame mouth states of a source sequence."""
        return [MouthState(o, w) for o, w in self.manifest["sources"][self._source(source_name)]["mouth"]]

    def n_source_frames(self, source_name: str) -> int:
        return len(self.manifest["sources"][self._source(source_name)]["mouth"])

    def query_path(self, query_name: str) -> Path:
        return self.root / self.manifest["queries"][self._query(query_name)]["file"]

    def source_folder(self, source_name: str) -> Path:
        return self.root / self.manifest["sources"][self._source(source_name)]["folder"]

    def query_shot(self, query_name: str) -> Shot | None:
        """How the query is seen (pose, light, crop) in a ``--hard`` set; ``None`` (frontal)."""
        d = self.manifest["queries"][self._query(query_name)].get("shot")
        return Shot.from_dict(d) if d else None

    def source_shots(self, source_name: str) -> list[Shot] | None:
        """Per-frame shots of a source sequence in a ``--hard`` set; ``None`` (frontal)."""
        d = self.manifest["sources"][self._source(source_name)].get("shots")
        return [Shot.from_dict(x) for x in d] if d else None

    def ground_truth(self, query_name: str, source_name: str, t: int, size: int = 256) -> np.ndarray:
        """The query's identity with the mouth of source frame ``t``: uint8 ``[size, size, 3]``;
        in a ``--hard`` set in the query's pose, light and crop."""
        states = self.source_states(source_name)
        shot = self.query_shot(query_name)
        if shot is not None:
            return render_shot(self.identity(query_name), states[t], shot, size)
        return render(self.identity(query_name), states[t], size)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m lrw.synthetic",
        description="Write a procedural talking-face set with exact ground truth.")
    p.add_argument("out", help="output folder: new or empty, or a set of this generator "
                   "(replaced once the new one is complete); any other folder is refused")
    defaults = SyntheticConfig(out="")
    p.add_argument("--words", type=positive_int, default=defaults.words, help="words (classes)")
    p.add_argument("--speakers", type=positive_int, default=defaults.speakers, help="training speakers")
    p.add_argument("--clips", type=positive_int, default=defaults.clips, help="clips per word and speaker")
    p.add_argument("--frames", type=positive_int, default=defaults.frames, help="frames per clip")
    p.add_argument("--size", type=model_size, default=defaults.size, help="training frame size (px)")
    p.add_argument("--seed", type=seed, default=defaults.seed)
    p.add_argument("--queries", type=positive_int, default=defaults.queries,
                   help="held-out query identities")
    p.add_argument("--sources", type=positive_int, default=defaults.sources,
                   help="held-out driving sequences (one identity each)")
    p.add_argument("--query-size", type=image_size, default=defaults.query_size,
                   help="size of query and source images (px)")
    p.add_argument("--workers", type=positive_int, default=defaults.workers, help="processes")
    p.add_argument("--train_render", choices=["downsized", "direct"], default="downsized",
                   help="training frames rendered at --query-size and resized as test.py "
                        "resizes its inputs (default), or drawn at --size directly, as sets "
                        "made before were (to make those sets, and their figures, again)")
    p.add_argument("--hard", action="store_true",
                   help="the hard set: posed, lit, aligned crops; sources move their heads, "
                        "queries hold other poses under other light, lips differ strongly "
                        "between queries and sources (same layout, same evaluate.py)")
    p.add_argument("--anchor", choices=ANCHORS, default="mouth",
                   help="with --hard: what the sequences' crops follow, as preprocess.py "
                        "--anchor: mouth (each frame cropped around its mouth, which scales a "
                        "spreading mouth back to a fixed width; the sets of the README's "
                        "tables) or head (preprocess.py's default) (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    add_no_progress(p, "accepted in every script; this job shows no progress bar")
    args = p.parse_args(argv)
    cfg = SyntheticConfig(out=args.out, words=args.words, speakers=args.speakers,
                          clips=args.clips, frames=args.frames, size=args.size, seed=args.seed,
                          queries=args.queries, sources=args.sources,
                          query_size=args.query_size, workers=args.workers, hard=args.hard,
                          train_render=args.train_render, anchor=args.anchor)
    try:
        generate(cfg, force=args.force)
    except (ValueError, OSError) as e:  # 1, as every script (2: argparse's usage error)
        return error_exit(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
