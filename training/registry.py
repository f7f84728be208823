"""Model registry: ``train.py``/``test.py`` pick a recipe by name and never branch per model.

A recipe is a module exposing:

    NAME: str
    Config: dataclass type        # model hyper-parameters and loss weights (become CLI flags)
    TRAIN_DEFAULTS: dict          # overrides of TrainConfig defaults (thesis values)
    validate(cfg) -> None         # raise ValueError with a one-line message
    build(cfg) -> nn.Module
    dataset(cfg, data_dir) -> torch.utils.data.Dataset   # with an optional
                                  # set_epoch(epoch, seed): the loop calls it every epoch, so
                                  # random per-item draws can be seeded by (seed, epoch, item)
    losses(model, batch, ctx) -> dict[str, Tensor]     # scalar terms (and metrics)
    loss_weights(cfg) -> dict[str, float]              # the loop sums weight * term
    sample(model, batch, ctx) -> (images [N,3,H,W] in [-0.5,0.5], nrow)

and optionally:

    initialize(model, batch, ctx)          # data-dependent init on the first batch
    param_groups(model, cfg, train_cfg)    # Adam groups (default: all trainable, --lr); a
                                           # group with "clip_norm" > 0 is clipped on its own
    checkpoint_extra(model, cfg) -> dict   # recorded in the checkpoint (e.g. the Glow used)
    DDP_FIND_UNUSED: bool
    DDP_EXACT: bool = True   # N torchrun processes train what one process with the same global
                             # batch trains (tests/test_ddp.py checks it per recipe): draw
                             # per-step randomness with ctx.global_rand / ctx.generator for the
                             # global batch and slice rank::world, and take anything that mixes
                             # items of the batch (partners, negatives) from ctx.gather(...)
    DDP_NOTE: str            # with DDP_EXACT = False: why; torchrun is then refused with it
    translate_argv(argv) -> argv           # train.py: the recipe's own flag aliases
    generate(model, query, mix, source, args) -> frames   # the talking-face job (test.py)
    diagnostics(model, ctx) -> dict[str, float]   # at step 0 and every sample grid: diagnostics.jsonl/.png
    lr_factor(model_cfg, train_cfg, step) -> float   # learning rate = --lr * factor at step
    step_in_backward(model_cfg) -> context factory | None   # ``factory(fn)`` makes backward
                                # call fn(params) as groups of parameter gradients become final;
                                # the loop then steps Adam there (not with clipping or fp16
                                # scaling), e.g. the Glow's --low_memory (glow.memory)
    test_cli(argv) -> int       # test.py delegates its whole argv (a recipe's own test job)
    evaluate_cli(argv) -> int   # evaluate.py delegates its whole argv (not with --compare)

the test-time face (test.py; evaluate.py through ``evaluation.models.load_model``):

    DEFAULT_CHECKPOINT: str     # file name under CHECKPOINT_DIR when --checkpoint is a folder
    add_test_args(parser)       # the recipe's test-time flags
    load_for_test(args, device) -> nn.Module   # args.checkpoint, in eval mode
    model_size(model) -> int    # frames are resized to this many pixels
    generate(model, query, mix, source, args) -> frames   # without it test.py refuses the model
    NEEDS_MIX: bool = True      # generate wants the mouth mix (else the source is passed)

and, for evaluate.py, so that evaluation/ never names a model:

    eval_systems(model, args) -> list[(label, args)]   # one talking-face system per entry,
                                # run as generate(model, ..., args); default [(NAME, args)]
                                # when the recipe has generate, else [] (e.g. MI-flow: one per
                                # --mode; Glow: none)
    eval_density(model, args) -> (module | None, n_bits, notes)   # the flow whose bits/dim is
                                # reported, the bits its data was quantised to, and lines for
                                # the report header; default: the model when it has ``blocks``
                                # (a Glow-shaped flow), n_bits recorded in args.checkpoint
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The model test.py and evaluate.py use when --model is not given (the thesis's main model).
DEFAULT_MODEL = "ad-flow"

RECIPES: dict[str, str] = {
    "glow": "glow.recipe",
    "ad-flow": "ad_flow.recipe",
    "mi-flow": "mi_flow.recipe",
    "pose-flow": "pose_flow.recipe",
    "content-ae": "content_ae.recipe",
}


def names() -> list[str]:
    return list(RECIPES)


def get(name: str) -> ModuleType:
    """Import and return the recipe module registered under ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(RECIPES)}")
    try:
        return importlib.import_module(RECIPES[name])
    except ModuleNotFoundError as exc:
        raise ValueError(f"model '{name}' is registered but its package is missing ({exc})") \
            from None
