"""Reading the thesis's AD-flow checkpoints (``ad-flow_total_checkpoint.tar``).

That file is a dict ``{"iteration", "f_encoder", "f_optim"[, "s_class", "s_optim"]}``:

* ``f_encoder``: ``Fencoders.{level}.Linear.{weight,bias}`` (the standard linear encoder, output
  = lip part), ``Fencoders.{level}.transform.{0,2}.*`` (the MLP ablation, output = lip part) or
  ``Fencoders.{level}.Conv.{0,1,2}.*`` (the convolutional ablation, output = face part);
  ``Lencoders.*`` (separate face and lip encoders) has no counterpart here.
* ``s_class``: ``rnn.gru.*`` (bidirectional GRU) and ``model.{0,2,4}.*`` (the MLP head).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from glow.io import CheckpointError

_RENAME = {"Linear": "linear", "transform": "mlp", "Conv": "conv"}
_KIND = {"Linear": "linear", "transform": "mlp", "Conv": "conv"}


def is_thesis_checkpoint(obj) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("f_encoder"), Mapping)


def convert(obj: Mapping, path: str = "checkpoint") -> tuple[dict, dict]:
    """Thesis dict -> (our ADFlow state dict, facts: encoder kind, target, n_classes, hidden).

    Raises :class:`CheckpointError` (one line) for layouts this project cannot represent.
    """
    enc = dict(obj["f_encoder"])
    if enc and all(k.startswith("module.") for k in enc):
        enc = {k[len("module."):]: v for k, v in enc.items()}
    if any(k.startswith("Lencoders.") for k in enc):
        raise CheckpointError(f"{path}: a thesis 'FL' encoder (separate face and lip encoders) "
                              "is not supported; use the linear, MLP or convolutional one")
    state: dict[str, Tensor] = {}
    kinds = set()
    for key, value in enc.items():
        parts = key.split(".")
        if len(parts) < 4 or parts[0] != "Fencoders" or parts[2] not in _RENAME:
            raise CheckpointError(f"{path}: unexpected key '{key}' in f_encoder (expected "
                                  "Fencoders.LEVEL.Linear.weight and the like)")
        kinds.add(parts[2])
        state[".".join(["encoder", "levels", parts[1], _RENAME[parts[2]], *parts[3:]])] = value
    if len(kinds) != 1:
        raise CheckpointError(f"{path}: f_encoder mixes encoder types {sorted(kinds)}")
    kind_key = kinds.pop()
    facts = {"encoder": _KIND[kind_key], "target": "face" if kind_key == "Conv" else "lip",
             "n_classes": None, "hidden": None, "img_size": None}
    first = {"Linear": "Fencoders.0.Linear.weight", "transform": "Fencoders.0.transform.0.weight"}
    if kind_key in first and first[kind_key] in enc:  # level 0 has (S/2)^2 positions
        facts["img_size"] = 2 * round(enc[first[kind_key]].shape[0] ** 0.5)
    cls = obj.get("s_class")
    if isinstance(cls, Mapping):
        heads = sorted({int(k.split(".")[1]) for k in cls if k.startswith("model.")})
        for key, value in cls.items():
            if key.startswith("rnn.gru."):
                state["classifier.gru." + key[len("rnn.gru."):]] = value
            elif key.startswith("model."):
                state["classifier.head." + key[len("model."):]] = value
        if heads:
            facts["n_classes"] = int(cls[f"model.{heads[-1]}.weight"].shape[0])
            facts["hidden"] = [int(cls[f"model.{j}.weight"].shape[0]) for j in heads[:-1]]
    return state, facts
