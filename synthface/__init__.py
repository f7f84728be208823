"""One procedural face renderer with exact ground truth, shared by every system's synthetic set.

``synthface.face``: identities, mouth states, :func:`render` (see its module docstring).
"""

from .face import (
    CLOSED_MOUTH_WIDTH_256,
    MOUTH_BOX_256,
    MOUTH_CENTER_256,
    NEUTRAL,
    Identity,
    MouthState,
    mouth_box,
    render,
    sample_identity,
)

__all__ = [
    "CLOSED_MOUTH_WIDTH_256",
    "MOUTH_BOX_256",
    "MOUTH_CENTER_256",
    "NEUTRAL",
    "Identity",
    "MouthState",
    "mouth_box",
    "render",
    "sample_identity",
]
