#!/usr/bin/env python
"""An upper bound for AD-flow's linear encoders: fitted to the test's own task with exact answers.

Not a model anyone can train on real data (clearly labelled, never a default): on a synthetic
set's *training* speakers we can render what the test asks for, the query speaker's face with a
source speaker's mouth state, so the linear encoders can be fitted straight to it. At test time
AD-flow outputs, per Glow level, ``z = z_q - E(z_q) + E(z_mix) = z_q + W (z_mix - z_q)`` (the bias
cancels), so the oracle ``W`` is the ridge regression, over (pair, frame, channel) position
vectors, of ``z_truth - z_q`` on ``z_mix - z_q``, uncentred:
``W = S_yx (S_xx + lambda I)^-1`` with ``lambda = --ridge x tr(S_xx) / P``.

Pairs: query = a training speaker's neutral face, source = another training speaker's clip,
truth = the query speaker rendered with each source frame's mouth state, the mix = the mouth
blend ``test.py`` feeds (all rendered at 256 px from the set's recorded identities and states,
as a 256 px training set would hold them, and brought to the model's size as ``test.py``
does; the set's own training frames are 32 px). The held-out identities are never seen. The result is written as an AD-flow
checkpoint beside ``--checkpoint`` (the same Glow, the same classifier) for ``evaluate.py``:

  python bench/oracle_ad_flow.py --checkpoint CK/ad/iter000200.pt --data FRONTAL_SET
  python evaluate.py --model ad-flow --checkpoint CK/ad/oracle_ad_flow.pt FRONTAL_SET ...

If even this fit cannot beat the mouth blend on the held-out pairs, no training objective can
make a linear AD-flow of this size do it: the encoder is the limit, not the losses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ad_flow.init import PairStats  # noqa: E402
from ad_flow.recipe import RECIPE  # noqa: E402
from faces.blend import mouth_mix  # noqa: E402
from glow.io import safe_load  # noqa: E402
from lrw.synthetic import SyntheticSet  # noqa: E402
from synthface.face import NEUTRAL, MouthState, render  # noqa: E402
from talking.job import to_tensor  # noqa: E402


def pairs_of(syn: SyntheticSet, n: int, seed: int, self_pairs: bool = False
             ) -> list[tuple[str, dict]]:
    """``n`` (query speaker, source clip) pairs of different training speakers (the same
    speaker with ``self_pairs``)."""
    rng = np.random.default_rng(seed)
    speakers = syn.manifest["train_speakers"]
    clips = syn.manifest["clips"]
    out = []
    while len(out) < n:
        clip = clips[int(rng.integers(len(clips)))]
        q = clip["speaker"] if self_pairs else speakers[int(rng.integers(len(speakers)))]
        if self_pairs or q != clip["speaker"]:
            out.append((q, clip))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained AD-flow checkpoint (its Glow "
                   "and classifier are kept; its linear encoders are replaced)")
    p.add_argument("--data", required=True, help="the frontal synthetic set it was trained on")
    p.add_argument("--pairs", type=int, default=192, help="training (query, clip) pairs")
    p.add_argument("--ridge", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0, help="which pairs are drawn")
    p.add_argument("--self_pairs", action="store_true",
                   help="not an oracle: each clip's own speaker is the query (its first frame, "
                        "a closed mouth) and the clip's frames are the answers, so only what a "
                        "training set holds is used (the mix of a face with its own mouth)")
    p.add_argument("--matched_pairs", action="store_true",
                   help="not an oracle: the answer for the query speaker A and source frame "
                        "B_t is A's own training frame whose mouth state is nearest B_t's "
                        "(the set's recorded states stand in for a landmark reading), the query "
                        "A's first frame of a clip: training data and mouth readings only")
    p.add_argument("--out", default=None, help="default: oracle_ad_flow.pt (self_ad_flow.pt "
                   "with --self_pairs, matched_ad_flow.pt with --matched_pairs) beside "
                   "--checkpoint")
    args = p.parse_args(argv)
    if args.self_pairs and args.matched_pairs:
        sys.exit("bench/oracle_ad_flow.py: --self_pairs or --matched_pairs, not both")
    syn = SyntheticSet.load(args.data)
    if syn.hard:
        sys.exit(f"bench/oracle_ad_flow.py: {args.data} is a --hard set; the fits render "
                 "frontal faces, give the frontal set the checkpoint was trained on")
    ck = Path(args.checkpoint)
    obj = safe_load(ck)
    model = RECIPE.from_checkpoint(obj, ck).eval()
    if obj.get("config", {}).get("model", {}).get("encoder", "linear") != "linear":
        sys.exit("bench/oracle_ad_flow.py: needs a linear-encoder AD-flow")
    size = int(model.img_size)
    t0 = time.time()
    levels = model.encoder.levels
    stats = [PairStats(m.size ** 2) for m in levels]
    frames = 0
    own: dict[str, np.ndarray] = {}  # each speaker's training mouth states [n, 2]
    for clip in syn.manifest["clips"]:
        own.setdefault(clip["speaker"], []).extend(clip["mouth"])
    own = {k: np.asarray(v, np.float64) for k, v in own.items()}
    for k, (q, clip) in enumerate(pairs_of(syn, args.pairs, args.seed, args.self_pairs)):
        qi, si = syn.identity(q), syn.identity(clip["speaker"])
        states = [MouthState(o, w) for o, w in clip["mouth"]]
        if args.matched_pairs:  # a first frame of one of the query speaker's clips
            first = next(c for c in syn.manifest["clips"] if c["speaker"] == q)["mouth"][0]
            query256 = render(qi, MouthState(*first), 256)
        else:
            query256 = render(qi, states[0] if args.self_pairs else NEUTRAL, 256)
        mixes = [mouth_mix(query256, render(si, st, 256)) for st in states]
        if args.matched_pairs:  # A's own frame nearest in mouth state, not the exact answer
            near = [own[q][int(np.argmin(((own[q] - [st.open, st.width]) ** 2).sum(1)))]
                    for st in states]
            truths = [render(qi, MouthState(*m), 256) for m in near]
        else:
            truths = [render(qi, st, 256) for st in states]
        x = to_tensor([query256, *mixes, *truths], size)
        with torch.no_grad():
            zs = model.encode_frames(x)
        t = len(states)
        for i, z in enumerate(zs):
            z = z.double().flatten(2)  # [1 + 2T, C, P]
            stats[i].add((z[1:1 + t] - z[:1]).reshape(-1, z.shape[-1]),
                         (z[1 + t:] - z[:1]).reshape(-1, z.shape[-1]))
        frames += t
        if (k + 1) % 32 == 0:
            print(f"{k + 1}/{args.pairs} pairs ({time.time() - t0:.0f} s)", flush=True)
    weights = dict(obj["weights"])
    explained = []
    for i, st in enumerate(stats):
        w, _ = st.solve(args.ridge)
        key = f"encoder.levels.{i}.linear"
        weights[f"{key}.weight"] = w.to(weights[f"{key}.weight"].dtype)
        weights[f"{key}.bias"] = torch.zeros_like(weights[f"{key}.bias"])
        explained.append(st.explained(w))
    out = Path(args.out) if args.out else ck.with_name(
        "self_ad_flow.pt" if args.self_pairs else "matched_ad_flow.pt" if args.matched_pairs
        else "oracle_ad_flow.pt")
    new = dict(obj, weights=weights)
    new["extra"] = dict(obj.get("extra", {}), oracle={
        "what": "linear encoders fitted to each training clip's own frames from mixes of its "
                "first frame with its own mouth (training data only)" if args.self_pairs else
                "linear encoders fitted to the query speaker's own training frame nearest in "
                "mouth state (training data and mouth readings only)" if args.matched_pairs else
                "linear encoders fitted to rendered answers of training pairs (an upper bound; "
                "not trainable on real data)", "pairs": args.pairs, "frames": frames,
        "ridge": args.ridge, "seed": args.seed, "data": str(Path(args.data).resolve()),
        "from": str(ck.resolve())})
    tmp = out.with_name(out.name + ".tmp")
    torch.save(new, tmp)
    tmp.replace(out)
    what = "self-pairs" if args.self_pairs else "matched-pairs" if args.matched_pairs else "oracle"
    print(f"{what} fit from {args.pairs} pairs ({frames} frames) in {time.time() - t0:.0f} s; "
          "share of z_truth - z_q explained per level (training pairs): "
          + ", ".join(f"{e:.3f}" for e in explained) + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
