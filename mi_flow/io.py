"""Loading MI-flow: our self-describing checkpoints and the thesis's bare state dicts.

The thesis saves ``model.state_dict()`` of its MI-flow (``mi-flow_total_checkpoint.pt``),
possibly with DataParallel's ``module.`` prefix. Its key layout::

    blocks.{i}.flows.{j}.actnorm.{loc,scale,initialized}
    blocks.{i}.flows.{j}.invconv.{w_p,u_mask,l_mask,s_sign,l_eye,w_l,w_s,w_u}   (LU)
    blocks.{i}.flows.{j}.invconv.weight                                        (--no_lu)
    blocks.{i}.flows.{j}.coupling.net.{0,2}.{weight,bias}
    blocks.{i}.flows.{j}.coupling.net.4.{conv.weight,conv.bias,scale}
    blocks.{i}.cond.conv.0.{weight,bias}           split blocks: condition pyramid level
    blocks.{i}.prior_c.{conv.weight,conv.bias,scale}  split blocks: conditional prior
    blocks.{L-1}.prior.{conv.weight,conv.bias,scale}  top block: learned prior

:class:`mi_flow.model.MIFlow` uses the same names, so the mapping is the prefix strip plus a
check; its top block is always LU (as the thesis's, whatever ``--no_lu`` said), and the coupling
width is read from the tensors (the thesis fixes it at 512).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from glow.io import CheckpointError, infer_glow_config, strip_prefix

from .model import MIFlow

THESIS_COND_KEY = "blocks.0.cond.conv.0.weight"


def is_thesis_state(state: Mapping) -> bool:
    """True for a (prefix-stripped) thesis MI-flow state dict."""
    return THESIS_COND_KEY in state and "blocks.0.prior_c.conv.weight" in state


def model_from_thesis_state(state: Mapping[str, Tensor], n_flow: int | None = None,
                            n_block: int | None = None, affine: bool | None = None,
                            conv_lu: bool | None = None, img_size: int | None = None,
                            source: str = "state dict") -> MIFlow:
    """An :class:`MIFlow` holding a thesis state dict; given flags are checked against it."""
    state = strip_prefix(state)
    if not is_thesis_state(state):
        hint = " (a plain Glow? load it with --model glow)" if "blocks.0.prior.conv.weight" \
            in state else ""
        raise CheckpointError(f"{source}: not an MI-flow state dict (no '{THESIS_COND_KEY}')"
                              f"{hint}")
    try:
        cfg = infer_glow_config(state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{source}: not an MI-flow state dict (missing {exc})") from None
    given = dict(n_flow=n_flow, n_block=n_block, affine=affine, conv_lu=conv_lu)
    bad = [f"{k}={v} (file has {cfg[k]})" for k, v in given.items()
           if v is not None and v != cfg[k]]
    if bad:
        raise CheckpointError(f"{source}: architecture mismatch: {', '.join(bad)}")
    model = MIFlow(cfg["in_channel"], cfg["n_flow"], cfg["n_block"], affine=cfg["affine"],
                   conv_lu=cfg["conv_lu"], hidden=cfg["hidden"], img_size=img_size or 64,
                   conv_lu_last=cfg["conv_lu_last"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit MI-flow "
                              f"({str(exc).splitlines()[0]})") from None
    return model
