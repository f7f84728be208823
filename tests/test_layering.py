"""Layering: every recipe sits with its model, evaluation never names a model (recipe hooks),
one copy of each shared helper, and the hooks give what the branches they replace gave."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ad_flow.recipe import DEFAULT_GLOW
from ad_flow.recipe import RECIPE as ad
from evaluation.models import load_for_evaluation
from glow import Glow
from mi_flow.recipe import RECIPE as mi
from training import registry
from training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _project_files() -> list[Path]:
    skip = {".venv", "tests", ".git", "checkpoint", "result"}
    return [p for p in ROOT.rglob("*.py") if not (set(p.relative_to(ROOT).parts) & skip)]


def test_every_recipe_sits_with_its_model() -> None:
    # the plain Glow's package is not ``glow``: that name is the core, which models build on
    packages = {"glow": "plain_glow"}
    for name, module in registry.RECIPES.items():
        package = module.split(".")[0]
        assert package != "training", f"{name}: recipe {module} lives in training/"
        assert package == packages.get(name, name.replace("-", "_")), (name, module)
    assert type(registry.get("glow")).__module__ == "plain_glow.recipe"
    assert not (ROOT / "training" / "glow_recipe.py").exists()


def _non_docstring_strings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


def test_evaluation_never_names_a_model() -> None:
    """No string equal to a registered model name (a branch, a label, a default) in
    evaluate.py or evaluation/: what a model evaluates comes from its recipe's hooks."""
    names = set(registry.names())
    files = [ROOT / "evaluate.py", *sorted((ROOT / "evaluation").glob("*.py"))]
    found = [f"{f.name}:{n.lineno} {n.value!r}" for f in files
             for n in _non_docstring_strings(ast.parse(f.read_text())) if n.value in names]
    assert found == []


def test_one_copy_of_each_shared_helper() -> None:
    """The helpers that used to be repeated per recipe are defined once."""
    repeated = {"_sha256", "_images", "_unwrap", "dequantised", "_glow_path", "_n_bits_of"}
    defs = []
    for f in _project_files():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in repeated:
                defs.append(f"{f.relative_to(ROOT)}:{node.name}")
    assert defs == ["training/recipe_helpers.py:dequantised"]
    sha = [str(f.relative_to(ROOT)) for f in _project_files() if "hashlib.sha256" in f.read_text()]
    assert sha == ["glow/io.py"]


# -------------------------------------------------------------------------------------------
# The hooks give what the branches gave

def _tiny_glow(seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    g = Glow(3, n_flow=2, n_block=2, hidden=16, img_size=SIZE)
    g.initialize(torch.rand(8, 3, SIZE, SIZE) - 0.5)
    return g.eval()


def _save_glow(path: Path, glow: Glow, n_bits: int) -> Path:
    return save_checkpoint(path, model_name="glow", model_config=glow.config() | {
        "n_bits": n_bits}, train_config={}, weights=glow.state_dict())


def test_ad_flow_density_is_the_glow_load_for_test_loaded(tmp_path) -> None:
    """The AD-flow checkpoint records a Glow file that has since moved; test time falls back to
    CHECKPOINT_DIR/glow_checkpoint.pt (3-bit). bits/dim must be that Glow's at its 3 bits
    (evaluation's own lookup used the recorded path and fell back to 5 bits)."""
    trained_on = _save_glow(tmp_path / "moved.pt", _tiny_glow(0), n_bits=3)
    cfg = ad.Config(glow=str(trained_on), img_size=SIZE, n_frames=6, n_classes=3,
                    cls_hidden="24", init="random")
    model = ad.build(cfg)
    ck = save_checkpoint(tmp_path / "ad.pt", model_name="ad-flow", model_config=dict(cfg.__dict__),
                         train_config={}, weights=model.state_dict(),
                         extra=ad.checkpoint_extra(model, cfg))
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    trained_on.rename(ckdir / DEFAULT_GLOW)
    args = SimpleNamespace(checkpoint=str(ck), glow=None, checkpoint_dir=str(ckdir),
                           n_flow=None, n_block=None, affine=False, conv_lu=True)
    ev = load_for_evaluation("ad-flow", args, torch.device("cpu"))
    assert ev.density is ev.model.glow
    assert ev.model.glow_path == ckdir / DEFAULT_GLOW
    assert ev.n_bits == 3
    assert [s.label for s in ev.systems] == ["ad-flow", "ad-flow (relative)"]
    assert any("frozen Glow" in n for n in ev.notes)


def test_mi_flow_is_evaluated_in_both_modes(tmp_path) -> None:
    cfg = mi.Config(n_flow=1, n_block=2, hidden=8, img_size=SIZE, n_bits=4)
    model = mi.build(cfg)
    model.initialize(torch.rand(4, 3, SIZE, SIZE) - 0.5)
    ck = save_checkpoint(tmp_path / "mi.pt", model_name="mi-flow", model_config=dict(
        cfg.__dict__), train_config={}, weights=model.state_dict())
    args = SimpleNamespace(checkpoint=str(ck), mode="thesis")
    ev = load_for_evaluation("mi-flow", args, torch.device("cpu"))
    assert [s.label for s in ev.systems] == ["mi-flow (thesis)", "mi-flow (cond)"]
    assert ev.density is ev.model and ev.n_bits == 4
    torch.manual_seed(1)
    query, source = torch.rand(1, 3, SIZE, SIZE) - 0.5, torch.rand(2, 3, SIZE, SIZE) - 0.5
    mix = source.clone()
    outs = [s.fn(query, mix, source) for s in ev.systems]
    for mode, out in zip(("thesis", "cond"), outs, strict=True):
        want = mi.generate(ev.model, query, mix, source, SimpleNamespace(mode=mode))
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[1])  # the modes really differ
    assert args.mode == "thesis"  # each system has its own copy of the flags


def test_glow_is_evaluated_for_likelihood_only_and_test_py_refuses_it(tmp_path, capsys) -> None:
    path = _save_glow(tmp_path / "g.pt", _tiny_glow(2), n_bits=6)
    ev = load_for_evaluation("glow", SimpleNamespace(checkpoint=str(path)), torch.device("cpu"))
    assert ev.systems == [] and ev.density is ev.model and ev.n_bits == 6 and ev.size == SIZE
    from talking.cli import main

    assert main(["--model", "glow"]) == 1
    assert "no talking-face generation" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["glow", "mi-flow", "pose-flow"])
def test_recipes_share_one_dequantisation(name) -> None:
    from training.recipe_helpers import dequantised

    assert importlib.import_module(registry.RECIPES[name]).dequantised is dequantised
