"""bench/oracle_ad_flow.py: the linear encoders fitted to the test's task on training speakers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import train
    from lrw.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("oracle")
    data = root / "set"
    generate(SyntheticConfig(out=str(data), words=2, speakers=3, clips=1, frames=5, size=SIZE,
                             queries=1, sources=1), log=lambda *a: None)
    common = ["--checkpoint_dir", str(root / "ck"), "--result_dir", str(root / "res"),
              "--workers", "0", "--sample_every", "0", "--save_every", "0", "--no_progress",
              "--batch", "2", "--lr", "1e-3"]
    assert train.main(["--model", "glow", "-n", "g", str(data), "--img_size", str(SIZE),
                       "--n_flow", "2", "--n_block", "2", "--hidden", "8", "--iter", "2",
                       *common]) == 0
    assert train.main(["--model", "ad-flow", "-n", "ad", str(data), "--glow",
                       str(root / "ck" / "g" / "last.pt"), "--img_size", str(SIZE),
                       "--n_frames", "5", "--cls_hidden", "8", "--iter", "1", *common]) == 0
    return data, root / "ck" / "ad" / "last.pt"


@pytest.mark.parametrize("mode", ["oracle", "matched", "self"])
def test_fit_writes_a_loadable_ad_flow_whose_encoders_changed(tiny, mode, capsys):
    import oracle_ad_flow

    from ad_flow.recipe import RECIPE
    from glow.io import safe_load

    data, ck = tiny
    flag = {"oracle": [], "matched": ["--matched_pairs"], "self": ["--self_pairs"]}[mode]
    assert oracle_ad_flow.main(["--checkpoint", str(ck), "--data", str(data), "--pairs", "4",
                                *flag]) == 0
    out = ck.with_name(f"{mode}_ad_flow.pt")
    new, old = safe_load(out), safe_load(ck)
    assert new["extra"]["oracle"]["pairs"] == 4 and new["extra"]["oracle"]["frames"] == 20
    w, w0 = new["weights"]["encoder.levels.0.linear.weight"], old["weights"][
        "encoder.levels.0.linear.weight"]
    assert w.shape == w0.shape and not torch.equal(w, w0)
    assert torch.count_nonzero(new["weights"]["encoder.levels.0.linear.bias"]) == 0
    kept = [k for k in old["weights"] if not k.startswith("encoder.")]
    assert kept and all(new["weights"][k].equal(old["weights"][k]) for k in kept)  # classifier
    model = RECIPE.from_checkpoint(new, out).eval()
    shares = [float(v) for v in capsys.readouterr().out.split("per level (training pairs): ")[1]
              .split("\n")[0].split(", ")]
    assert len(shares) == len(model.encoder.levels) and all(0 < s <= 1 for s in shares)
    # self pairs: the answers are the clip's own frames, nearly the mix: the fit explains most
    if mode == "self":
        assert min(shares) > 0.5


def test_self_and_matched_are_exclusive(tiny):
    import oracle_ad_flow

    data, ck = tiny
    with pytest.raises(SystemExit, match="not both"):
        oracle_ad_flow.main(["--checkpoint", str(ck), "--data", str(data), "--self_pairs",
                             "--matched_pairs"])


def test_a_hard_set_is_refused(tiny, tmp_path):
    import oracle_ad_flow

    from lrw.synthetic import SyntheticConfig, generate

    hard = tmp_path / "hard"
    generate(SyntheticConfig(out=str(hard), words=1, speakers=1, clips=1, frames=2, size=SIZE,
                             queries=1, sources=1, hard=True), log=lambda *a: None)
    with pytest.raises(SystemExit, match="--hard set"):
        oracle_ad_flow.main(["--checkpoint", str(tiny[1]), "--data", str(hard)])
