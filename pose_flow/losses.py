"""The pose flow's losses besides bits/dim: the quadruplet loss on ``w`` and the optional
perceptual (VGG19) and identity (any face-embedding network) losses, whose weights come from
local files (no download)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_LAYERS = (3, 8, 17, 26)  # relu1_2, relu2_2, relu3_4, relu4_4 of torchvision's vgg19.features


def quadruplet_loss(anchor: Tensor, pos: Tensor, neg1: Tensor, neg2: Tensor,
                    margin_pos: float = 0.0, margin_neg: float = 0.3
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Codes [B, D] of (anchor, positive) from one identity and (neg1, neg2) from another ->
    (loss, mean positive distance, mean negative distance); distances are per-dimension MSEs.

    ``0.5 max(d(a, p), m_pos) + 0.5 max(d(n1, n2), m_pos) - min(d((a+p)/2, (n1+n2)/2), m_neg)``:
    the two same-identity pairs are pulled together, the two identity means pushed apart until
    they are ``m_neg`` apart (the anchor's definition, weights 0.5/0.5/1).
    """
    d_pos1 = ((anchor - pos) ** 2).mean(1)
    d_pos2 = ((neg1 - neg2) ** 2).mean(1)
    d_neg = (((anchor + pos) / 2 - (neg1 + neg2) / 2) ** 2).mean(1)
    loss = 0.5 * d_pos1.clamp_min(margin_pos) + 0.5 * d_pos2.clamp_min(margin_pos) \
        - d_neg.clamp_max(margin_neg)
    return loss.mean(), (d_pos1.mean() + d_pos2.mean()) / 2, d_neg.mean()


class LossNetError(ValueError):
    """A loss network file is missing or unusable; one line."""


class VGGFeatures(nn.Module):
    """Frozen VGG19 features at relu1_2, relu2_2, relu3_4, relu4_4 from a local state dict."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        # deferred: torchvision costs 1.7 s (python -X importtime), paid by every
        # train.py/test.py --model pose-flow (even --help) though few runs use --vgg_weights
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(path)
        if not path.is_file():
            raise LossNetError(f"--vgg_weights {path}: no such file (a torchvision VGG19 "
                               "state dict, e.g. saved from vgg19(weights=...).state_dict())")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is one message
            raise LossNetError(f"--vgg_weights {path}: not a state dict ({exc})") from None
        # only the convolutional part (building the whole vgg19 initialises 120M classifier
        # weights for nothing); its layer indices are those of vgg19().features
        features = make_layers(cfgs["E"])[: VGG_LAYERS[-1] + 1]
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items()
                     if k.startswith("features.")}
        state = {k: v for k, v in state.items() if int(k.split(".")[0]) <= VGG_LAYERS[-1]}
        try:
            features.load_state_dict(state)
        except RuntimeError as exc:
            raise LossNetError(f"--vgg_weights {path}: does not fit VGG19 "
                               f"({str(exc).splitlines()[0]})") from None
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] in [-0.5, 0.5] -> the four feature maps."""
        h = ((x + 0.5) - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_LAYERS:
                out.append(h)
        return out


def perceptual_loss(net: VGGFeatures, x: Tensor, target: Tensor) -> Tensor:
    """Mean L1 between the VGG features of ``x`` and ``target`` (both [B, 3, H, W])."""
    fx, ft = net(x), net(target)
    return sum(F.l1_loss(a, b) for a, b in zip(fx, ft, strict=True)) / len(fx)


class FaceEmbedder(nn.Module):
    """A frozen TorchScript face-embedding network: ``[B, 3, size, size]`` in [-1, 1] ->
    ``[B, D]`` (ArcFace-style; any network with that interface)."""

    def __init__(self, path: str | Path, size: int = 112) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise LossNetError(f"--id_net {path}: no such file (a TorchScript face-embedding "
                               "network, torch.jit.save of a traced or scripted model)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001
            raise LossNetError(f"--id_net {path}: not a TorchScript file ({exc})") from None
        for p in self.net.parameters():  # ScriptModules have no requires_grad_()
            p.requires_grad_(False)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(x * 2, size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        return F.normalize(self.net(h).flatten(1), dim=1)


def identity_loss(net: FaceEmbedder, x: Tensor, target: Tensor) -> Tensor:
    """``1 - cos`` between the embeddings of ``x`` and ``target``, averaged."""
    return (1 - (net(x) * net(target)).sum(1)).mean()


@lru_cache(maxsize=4)
def _cached(kind: str, path: str, size: int, device: str) -> nn.Module:
    net = VGGFeatures(path) if kind == "vgg" else FaceEmbedder(path, size)
    return net.to(device)


def loss_net(kind: str, path: str, device: torch.device, size: int = 112) -> nn.Module:
    """The frozen loss network (loaded once per process and device)."""
    return _cached(kind, str(path), size, str(device))
