"""Differential tests against the real reference code (never copied into this project).

Run when environment variables point at checkouts, skipped otherwise (see docs/testing.md):

    FLOWDIS_REF_GLOW=DIR     a checkout of rosinality/glow-pytorch (DIR/model.py)
    FLOWDIS_REF_THESIS=DIR   a checkout of the thesis code (DIR/ad-flow/model.py)

The reference Glow is built at 64 px, ActNorm-initialised by its own first forward, every
parameter perturbed (so couplings and zero convs are not identities), saved as a bare state
dict and loaded by ``glow.load_glow``, as a user's file would be. Both run in float64.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from glow import load_glow


def _reference(var: str, rel: str):
    root = os.environ.get(var)
    if not root:
        pytest.skip(f"{var} is not set (a checkout of the reference code)")
    path = Path(root) / rel
    if not path.is_file():
        pytest.fail(f"{var}={root}: {rel} not found there")
    spec = importlib.util.spec_from_file_location(f"_ref_{var.lower()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = {"rosinality": ("FLOWDIS_REF_GLOW", "model.py"),
           "thesis-ad-flow": ("FLOWDIS_REF_THESIS", "ad-flow/model.py")}


@pytest.mark.parametrize("affine,conv_lu", [(False, True), (True, False)])
@pytest.mark.parametrize("source", list(SOURCES))
def test_glow_equals_the_reference(source: str, affine: bool, conv_lu: bool,
                                   tmp_path: Path, monkeypatch) -> None:
    ref_mod = _reference(*SOURCES[source])
    # the reference's plain 1x1 conv initialises with torch.qr, removed from recent PyTorch
    monkeypatch.setattr(torch, "qr", lambda a: torch.linalg.qr(a), raising=False)
    torch.manual_seed(0)
    n_flow, n_block, size = 2, 4, 64
    ref = ref_mod.Glow(3, n_flow, n_block, affine=affine, conv_lu=conv_lu).double()
    x = torch.rand(4, 3, size, size, dtype=torch.float64) - 0.5
    with torch.no_grad():
        ref(x)  # the reference initialises its ActNorms on the first forward
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "glow_checkpoint.pt"
    torch.save(ref.state_dict(), path)
    ours = load_glow(path, img_size=size).double().eval()
    assert (ours.n_flow, ours.n_block, ours.affine, ours.conv_lu) == (n_flow, n_block, affine,
                                                                        conv_lu)

    with torch.no_grad():
        r_log_p, r_logdet, r_z = ref(x)
        o_log_p, o_logdet, o_z = ours(x)
        # glow's AMP-safe float32 regions (ActNorm, 1x1 convs, priors, log-det sums) run in
        # float32 even in a float64 model: agreement is to float32 precision (measured: z up to
        # 5e-6 absolute at values up to 8, log_p 4e-8 relative), not float64's
        tol = dict(rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(o_log_p, r_log_p, **tol,
                                   msg=lambda m: f"log_p {o_log_p} vs {r_log_p}: {m}")
        torch.testing.assert_close(o_logdet, r_logdet.expand_as(o_logdet), **tol, msg="logdet")
        assert len(o_z) == len(r_z) == n_block
        for i, (a, b) in enumerate(zip(o_z, r_z, strict=True)):
            torch.testing.assert_close(a, b, **tol, msg=f"z[{i}]")
        # reverse from the same latents (the thesis's test path). reconstruct=False (the
        # reference reads the given latents as standard-normal noise of the priors) is not
        # compared: for some configurations it differs from ours (open, see docs/testing.md)
        want = ref.reverse([z.clone() for z in r_z], reconstruct=True)
        got = ours.reverse([z.clone() for z in r_z], reconstruct=True)
        torch.testing.assert_close(got, want, **tol, msg="reverse(reconstruct=True)")
        torch.testing.assert_close(ours.reverse(o_z, reconstruct=True), x, rtol=0, atol=1e-4)
