"""The invertible core: layers, the multi-scale Glow, likelihood helpers, checkpoint loading.

The lowest layer (tests/test_architecture.py): nothing here imports another package of the
project. The self-describing checkpoint format is read here (glow/io.py) so that ``training``
can build on it; ``plain_glow`` (the Glow as a trainable model) sits in the model layer above
``training``.
"""

from .io import CheckpointError, load_glow, safe_load
from .layers import (
    ActNorm,
    Coupling,
    Flow,
    InvConv2d,
    InvConv2dLU,
    Squeeze,
    ZeroConv2d,
    coupling_net,
    gaussian_log_p,
    gaussian_sample,
    squeeze2d,
    unsqueeze2d,
)
from .likelihood import bits_per_dim, dequantize, quantize
from .model import Block, Glow

__all__ = [
    "ActNorm", "Block", "CheckpointError", "Coupling", "Flow", "Glow", "InvConv2d",
    "InvConv2dLU", "Squeeze", "ZeroConv2d", "bits_per_dim", "coupling_net", "dequantize",
    "gaussian_log_p", "gaussian_sample", "load_glow", "quantize", "safe_load", "squeeze2d",
    "unsqueeze2d",
]
